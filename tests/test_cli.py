"""The command line as a user types it: files, exit codes, and one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import only_run_dir, run_cli

ALL_PLOTS = sorted(["act_hist_image.png", "dead.png", "grad_flow.png", "hist_first_last.png",
                    "metrics.png", "step0_std.png", "telemetry.png", "update_ratio.png"])


def test_default_run_from_any_directory(tmp_path: Path) -> None:
    """`initlab` with no arguments: a real study, files and plots, status ok."""
    proc = run_cli([], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run_dir = only_run_dir(tmp_path / "outputs")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok"
    assert summary["steps_done"] == 300
    assert summary["model"]["name"] == "conv4" and summary["init"][0]["init"].startswith("kaiming_uniform")
    stats = pd.read_parquet(run_dir / "stats.parquet")
    assert {"step", "layer", "layer_idx", "module_type", "kind", "mean", "std"} <= set(stats.columns)
    assert {"loss", "accuracy", "lr", "step_time"} <= set(pd.read_parquet(run_dir / "metrics.parquet").columns)
    assert (run_dir / ".hydra" / "config.yaml").exists()
    assert (run_dir / "initlab.log").exists()
    assert sorted(p.name for p in (run_dir / "plots").glob("*.png")) == ALL_PLOTS
    # The lesson: activations shrink layer after layer under PyTorch's default init.
    s0 = stats[(stats.step == 0) & (stats.kind == "act") & (stats.module_type == "Conv2d")]
    assert s0.sort_values("layer_idx")["std"].is_monotonic_decreasing


def test_smoke_experiment_and_report(tmp_path: Path) -> None:
    proc = run_cli(["experiment=smoke"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run_dir = only_run_dir(tmp_path / "outputs")
    assert json.loads((run_dir / "summary.json").read_text())["steps_done"] == 10
    for png in (run_dir / "plots").glob("*.png"):
        png.unlink()
    from initlab.report.cli import main as report_main

    assert report_main([str(run_dir)]) == 0
    assert sorted(p.name for p in (run_dir / "plots").glob("*.png")) == ALL_PLOTS


# One CLI case per stage that can refuse (validation, device, model, data); every value
# validate() refuses is a row of tests/test_bad_input.py, checked in-process.
@pytest.mark.parametrize(
    "args,expected",
    [
        (["train.steps=-5"], "train.steps=-5 is invalid: expected an integer >= 0"),
        (["device=cuda:7"], "device='cuda:7' is invalid"),
        (["device=tpu"], "device='tpu' is invalid: expected one of auto, cpu, cuda, cuda:N, mps"),
        (["data.shape=[256]"], "model=conv4 cannot take input shape [256]: it needs images [C,H,W]"),
        (["data.train_size=4096", "train.batch_size=9999"],
         "train.batch_size=9999 is invalid: expected at most data.train_size=4096"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(tmp_path: Path, args: list[str], expected: str) -> None:
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("initlab: error:")]
    assert len(errors) == 1 and expected in errors[0], proc.stderr
    # no work was done, and no directory named like a real run is left holding only the error
    assert not [p for p in tmp_path.rglob("*") if p.is_file()], list(tmp_path.rglob("*"))


def test_bad_input_in_a_directory_that_holds_more_keeps_it_and_records_the_verdict(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "notes.txt").write_text("mine")
    proc = run_cli(["train.steps=-5", "hydra.run.dir=r"], cwd=tmp_path)
    assert proc.returncode == 2 and (tmp_path / "r" / "notes.txt").read_text() == "mine"
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "failed" and "train.steps=-5" in summary["error"]


def test_unknown_group_option_is_one_line_with_the_options(tmp_path: Path) -> None:
    proc = run_cli(["model=transformer"], cwd=tmp_path)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("initlab: error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "model has: alexnet, conv4" in errors[0], proc.stderr


HEAVY = ("torch", "torchvision", "pandas", "pyarrow", "numpy", "matplotlib", "numba")


def test_the_command_imports_nothing_heavy_before_a_run(tmp_path: Path) -> None:
    """`initlab --cfg job`, `--help` and each shell-completion Tab press stop before the run:
    they must not pay for torch (seconds), pandas or plotting."""
    code = f"import sys, initlab.app.cli; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr
    for argv in (["--cfg", "job"], ["--help"]):
        probe = (f"import runpy, sys; sys.argv = ['initlab', *{argv!r}]\n"
                 "try:\n    runpy.run_module('initlab', run_name='__main__')\nexcept SystemExit:\n    pass\n"
                 f"print('LOADED', ','.join(m for m in {HEAVY!r} if m in sys.modules))")
        proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                              timeout=60)
        assert "seed: 0" in proc.stdout and proc.stdout.strip().endswith("LOADED"), proc.stdout[-300:] + proc.stderr


def test_help_lists_the_groups_and_the_config_the_overrides_compose(tmp_path: Path) -> None:
    """initlab's --help (Hydra's group listing is 2 s; this lists conf/): the same groups,
    the config as composed with the overrides given, exit 0; a bad group is one line, exit 2."""
    proc = run_cli(["model=mlp", "model.depth=7", "--help"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "init: default, fixup, kaiming, lsuv, normal, orthogonal, skipinit, xavier\n" in proc.stdout
    assert "model: alexnet, conv4, lenet, mlp, nin, resnet, target, torchvision, vgg, vit\n" in proc.stdout
    assert "norm: auto, batch, group, instance, layer, none, rms\n" in proc.stdout
    assert "  name: mlp\n  depth: 7\n" in proc.stdout and "hydra:" not in proc.stdout
    proc = run_cli(["model=nosuch", "--help"], cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == ("initlab: error: model=nosuch is not one of the model options (model has: "
                                                         "alexnet, conv4, lenet, mlp, nin, resnet, target, torchvision, vgg, vit)")
    assert not list(tmp_path.iterdir())  # help writes no run


def test_the_file_side_modules_never_import_torch(tmp_path: Path) -> None:
    """The docs' Architecture: rundir/, report/ (but the TensorBoard export), diagnose and the sweep's
    drawing workers read and write files and DataFrames only (rebuilding a report never pays for torch)."""
    code = ("import sys, initlab.rundir.layout, initlab.rundir.store, initlab.rundir.sweep_table, initlab.diagnose, "
            "initlab.report.plots, initlab.report.html, initlab.report.build, initlab.report.cli, initlab.app.behind, "
            "initlab.app.sweep; print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False", proc.stdout + proc.stderr
