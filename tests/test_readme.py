"""Every command the README and the docs pages (docs/*.md) show, taken from them and run.

`initlab` lines run with the overrides they give; the keys a line leaves out get a small
budget (2 steps of batch 2, no figures), so the whole tour fits in CI. A line whose comment
says it diverges runs as written, to the end, and must diverge where it says. Torchvision
datasets come from tiny files in torchvision's own formats under $INITLAB_DATA. Not run
here: `pip install ...` and `make test` (what .ci/run itself does), `make sweep` (the
`initlab -m` sweep below it, larger), `tensorboard` (TensorBoard's own server)."""

import json
import re
import shlex
from pathlib import Path

import pytest
import torch
import torchvision
import yaml

from benchmarks.studies import HEADER, Study, commit, parse, render, spread, verdict
from initlab.app.study import run_study
from initlab.testing import write_cifar10, write_mnist
from tests.conftest import compose_cfg, run_cli

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
BUDGET = {"train.steps": "2", "train.batch_size": "2", "data.val_size": "8", "plots": "false",
          "train.progress": "false", "train.eval_every": "0", "coord.steps": "2", "coord.seeds": "1"}
SWEEP_BUDGET = ("train.steps", "plots", "train.progress", "data.val_size")  # a sweep keeps the batch it sweeps


def commands(program: str) -> list[tuple[list[str], str]]:
    """(arguments, comment) of every `program ...` line in the indented blocks of the README
    and the docs pages, continuation lines joined; each command once."""
    found: list[tuple[list[str], str]] = []
    for page in PAGES:
        for args, comment in _commands(page, program):
            if all(args != a for a, _ in found):
                found.append((args, comment))
    return found


def _commands(page: Path, program: str) -> list[tuple[list[str], str]]:
    found, lines = [], page.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("    ") and line.strip().split(" ")[0] == program:
            text, comment = line.strip(), ""
            while text.endswith("\\"):
                i += 1
                text = text[:-1] + lines[i].strip()
            if "#" in text:
                text, comment = text.split("#", 1)
            found.append((shlex.split(text)[1:], comment.strip()))
        i += 1
    return found


def _diverges_at(comment: str) -> int | None:
    m = re.search(r"diverges at step (\d+)", comment)
    return int(m.group(1)) if m else None


def _budgeted(args: list[str], keys: tuple[str, ...] | None = None) -> list[str]:
    given = {a.split("=", 1)[0].lstrip("+") for a in args if "=" in a}
    return [*args, *(f"{k}={v}" for k, v in BUDGET.items() if k not in given and (keys is None or k in keys))]


def _jobs(args: list[str]) -> int:
    """How many jobs a sweep command runs: its comma lists, and its experiment's own sweep."""
    swept = {}
    for a in args:
        if a.startswith("experiment="):
            conf = yaml.safe_load((ROOT / "conf" / "experiment" / f"{a.split('=', 1)[1]}.yaml").read_text())
            params = ((conf.get("hydra") or {}).get("sweeper") or {}).get("params") or {}
            swept.update({k: str(v) for k, v in params.items()})
    for a in args:
        if "=" in a and "," in a.split("=", 1)[1] and not a.split("=", 1)[1].startswith("["):
            swept[a.split("=", 1)[0]] = a.split("=", 1)[1]
    n = 1
    for v in swept.values():
        n *= len(v.split(","))
    return n


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Tiny MNIST, Fashion-MNIST and CIFAR-10 files where $INITLAB_DATA points, with
    torchvision's CIFAR integrity check run against their real md5s."""
    root = tmp_path / "data"
    write_mnist(root, "MNIST", n_train=64, n_test=16)
    write_mnist(root, "FashionMNIST", n_train=64, n_test=16)
    md5 = write_cifar10(root, n_per_batch=16, n_test=16)
    cls = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(cls, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5["batches.meta"]})
    monkeypatch.setenv("INITLAB_DATA", str(root))
    return root


def _single(args: list[str], comment: str) -> pytest.param:
    marks = [pytest.mark.gpu] if "device=cuda" in args else []
    return pytest.param(args, comment, id=" ".join(["initlab", *args])[:90], marks=marks)


SINGLE = [_single(a, c) for a, c in commands("initlab") if "-m" not in a]
SWEEPS = [pytest.param(a, id=" ".join(["initlab", *a])[:90], marks=[pytest.mark.slow] if _jobs(a) > 16 else [])
          for a, _ in commands("initlab") if "-m" in a]


def test_the_readme_has_the_commands_this_file_runs() -> None:
    assert len(SINGLE) >= 25 and len(SWEEPS) >= 2  # a change to the parsing that found nothing fails here
    assert any(_diverges_at(c) for _, c in commands("initlab"))


@pytest.mark.parametrize("args, comment", SINGLE)
def test_every_readme_run_command_runs(tmp_path: Path, data_root: Path, args: list[str], comment: str) -> None:
    """In-process (Hydra composes the same overrides the command line gives), so the CIFAR
    checksums above apply."""
    if "device=cuda" in args and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if "precision=fp16" in args and "precision.loss_scale=none" not in args and not hasattr(torch.amp, "GradScaler"):
        pytest.skip("loss scaling on the CPU needs torch >= 2.3 (torch.amp.GradScaler); older torch says so in one line")
    if "data.fallback=synthetic" in args or "data.fallback=digits" in args:  # its point: the files are absent
        args = [*args, f"data.root={tmp_path / 'absent'}"]
    at = _diverges_at(comment)
    overrides = [*args, "plots=false", "train.progress=false"] if at is not None else _budgeted(args)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    summary = run_study(compose_cfg(overrides), run_dir)
    if at is not None:  # as the README says, to the step
        assert summary["status"] == "diverged" and summary["diverged"]["step"] == at, summary["diverged"]
    elif "diverged" in comment:
        assert summary["status"] == "diverged"
    else:
        assert summary["status"] == "ok", summary.get("diverged")
    recorded = "coord.parquet" if "experiment=coord_check" in args else "metrics.parquet"
    assert (run_dir / "summary.json").exists() and (run_dir / recorded).exists()


@pytest.mark.parametrize("args", SWEEPS)
def test_every_readme_sweep_runs(tmp_path: Path, args: list[str]) -> None:
    proc = run_cli([*_budgeted(args, SWEEP_BUDGET), "hydra.sweep.dir=sweep"], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "sweep").rglob("summary.json")]
    assert len(summaries) == _jobs(args) and all(s["status"] == "ok" for s in summaries)


def test_every_readme_report_command_runs(tmp_path: Path) -> None:
    """`initlab-report` lines, on a real run in place of the README's example paths."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_study(compose_cfg(_budgeted([])), run_dir)
    lines = commands("initlab-report")
    assert len(lines) >= 3
    from initlab.report.cli import main

    for args, _ in lines:
        args = [str(run_dir) if a.startswith(("outputs/runs/", "RUN_OR_SWEEP_DIR")) else a for a in args]
        args = [str(tmp_path / "tb") if a == "LOGDIR" else a for a in args if a != "[LOGDIR]"]
        assert main(args) in (0, None), args
    assert (run_dir / "report.html").exists() and any((tmp_path / "tb").rglob("events.out.tfevents.*"))


def test_the_studies_page_includes_the_generated_table() -> None:
    """docs/studies.md includes benchmarks/results/studies_cpu.md as `make studies` wrote it,
    stamped with the commit each study ran at."""
    page = (ROOT / "docs" / "studies.md").read_text()
    assert '--8<-- "benchmarks/results/studies_cpu.md"' in page
    generated = (ROOT / "benchmarks" / "results" / "studies_cpu.md").read_text()
    assert "| " + " | ".join(HEADER) + " |" in generated
    assert generated.startswith("Generated by `make studies`") and "torch " in generated.splitlines()[0]
    assert "at commit" in generated.splitlines()[0] or "beside each study" in generated.splitlines()[0]
    assert "(unknown)" not in generated  # every study's rows carry the commit they ran at


def test_a_partial_rerun_of_the_studies_says_so() -> None:
    def row(name: str) -> list[str]:
        return [f"`{name}`", "synthetic", "init=x", "1", "ok", "1", "2", "3", "0.5"]

    tables = {"lsuv": ([row("lsuv")], [], 10.0, "aaaaaaa"), "norm_zoo": ([row("norm_zoo")], [], 20.0, "bbbbbbb")}
    text = render(tables, ["norm_zoo"])
    assert "Partial re-run: norm_zoo re-ran" in text and "beside each study" in text.splitlines()[0]
    assert "lsuv 10 s (aaaaaaa), norm_zoo 20 s (bbbbbbb)" in text
    assert {k: (v[2], v[3]) for k, v in parse(text).items()} == {"lsuv": (10.0, "aaaaaaa"),
                                                                 "norm_zoo": (20.0, "bbbbbbb")}
    whole = render({"lsuv": tables["lsuv"]})
    assert "Partial" not in whole and "at commit aaaaaaa" in whole.splitlines()[0]
    assert commit()  # the git commit, or "unknown" outside a clone


def test_the_studies_table_claims_an_ordering_only_where_the_seed_ranges_separate() -> None:
    import pandas as pd

    study = Study("x", ("init",))
    df = pd.DataFrame({"init": ["a"] * 3 + ["b"] * 3 + ["c"] * 3,
                       "loss_avg": [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.45, 1.6, float("nan")]})
    assert verdict(study, df, "loss_avg") == "init=a < init=b ≈ init=c"  # b's max 1.5 > c's min 1.45
    assert spread(df["loss_avg"][6:]) == "1.52 [1.45–1.6], 1 non-finite"
    assert spread(pd.Series([float("inf")])) == "non-finite"


def test_every_test_the_reliability_page_names_exists_and_its_counts_add_up() -> None:
    import re

    page = (ROOT / "docs" / "reliability.md").read_text()
    defined = {m for f in (ROOT / "tests").glob("test_*.py") for m in re.findall(r"^def (test_\w+)", f.read_text(), re.M)}
    rows = [ln for ln in page.splitlines() if ln.startswith("| ") and "`test_" in ln]
    assert rows
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        named = re.findall(r"`(test_\w+)`", cells[3])
        assert set(named) <= defined, set(named) - defined
        assert int(cells[1]) == len(named), row[:80]
