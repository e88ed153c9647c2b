"""A study's headline figure, declared in its experiment's YAML: drawn from the jobs' own
files with the claim as its title; a malformed declaration is one line before any work."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from initlab.checks import headline_problem
from initlab.report.build import build_sweep_report
from initlab.report.plots import base
from tests.conftest import run_cli

ROOT = Path(__file__).parents[1]
EXPERIMENTS = sorted((ROOT / "conf" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_each_declared_headline_names_what_its_sweep_sweeps(path: Path) -> None:
    conf = yaml.safe_load(path.read_text()) or {}
    spec = conf.get("headline")
    if spec is None:
        return
    swept = list(((conf.get("hydra") or {}).get("sweeper") or {}).get("params") or {})
    assert headline_problem(spec) is None
    for one in spec if isinstance(spec, list) else [spec]:
        for key in ("x", "lines", "panels"):
            assert one.get(key) is None or one[key] in swept, (key, one[key], swept)


def test_the_sweep_draws_the_declared_headline_from_the_jobs_files(tmp_path: Path, monkeypatch) -> None:
    proc = run_cli(["-m", "experiment=he_deep_relu", "model.depth=8", "train.steps=3", "train.batch_size=16",
                    "data.train_size=64", "data.val_size=16", "train.progress=false", "plots=false",
                    "hydra.sweep.dir=sweep"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sweep = tmp_path / "sweep"
    assert (sweep / "plots" / "headline.png").exists()
    figs = {}
    orig = base.save

    def keep(fig, path, title=None, fmt="png"):  # the figure, kept open to read its lines
        figs[path.stem] = (fig, title)
        return orig(fig, path, title, fmt)

    monkeypatch.setattr(base, "save", keep)
    build_sweep_report(sweep)
    fig, title = figs["headline"]
    assert title.replace("\n", " ").startswith("Claim (He et al. 2015)")
    ax = fig.axes[0]
    lines = {ln.get_label(): ln.get_ydata() for ln in ax.get_lines() if ln.get_label().startswith("init=")}
    assert set(lines) == {"init=xavier", "init=kaiming"}
    table = pd.read_parquet(sweep / "sweep.parquet")
    for init, ys in lines.items():  # each point is that job's step-0 activation std of a weighted layer
        job = sweep / table.loc[table["init"] == init.split("=")[1], "path"].iloc[0]
        s = pd.read_parquet(job / "stats.parquet")
        s = s[(s["step"] == 0) & (s["kind"] == "act") & s["module_type"].isin(["Linear"])].sort_values("layer_idx")
        np.testing.assert_allclose(ys, s["std"].to_numpy(), rtol=1e-6)


def test_a_malformed_headline_is_one_line_before_any_work(tmp_path: Path) -> None:
    proc = run_cli(["headline={title:x}"], cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith("initlab: error: headline=") and not list(tmp_path.glob("outputs/runs/*/*"))


def test_a_categorical_factor_is_points_with_ranges_in_the_order_swept(tmp_path: Path, monkeypatch) -> None:
    from initlab.report.plots.headline import plot_headline

    done = pd.DataFrame([dict(norm=norm, seed=seed, loss_avg=base + 0.1 * seed, path=str(tmp_path))
                         for norm, base in (("none", 2.0), ("batch", 1.0), ("rms", 1.5)) for seed in range(3)])
    figs = {}
    orig = base.save
    monkeypatch.setattr(base, "save", lambda fig, path, title=None, fmt="png": figs.setdefault("f", fig) and orig(fig, path, title, fmt))
    assert plot_headline(done, {"title": "t", "x": "norm", "y": "loss_avg"}, tmp_path / "headline").exists()
    ax = figs["f"].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["none", "batch", "rms"]  # the sweep's order
    points = [ln for ln in ax.get_lines() if ln.get_marker() == "o"][0]  # (the range bars' caps are lines too)
    np.testing.assert_allclose(points.get_xdata(), [0, 1, 2])
    np.testing.assert_allclose(points.get_ydata(), [2.1, 1.1, 1.6])  # the mean over the seeds
