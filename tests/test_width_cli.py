"""The width axis from the command line: `param=mup|ntk` on a zoo model, experiment=coord_check
and experiment=lr_transfer, shrunk; the reports rebuilt from their files."""

import json
from pathlib import Path

import pandas as pd
import pytest

from initlab.app.study import run_study
from initlab.report.cli import main as report_main
from tests.conftest import compose_cfg, run_cli


def _study(tmp_path: Path, *overrides: str) -> tuple[dict, Path]:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = compose_cfg(["train.progress=false", "plots=false", "data.val_size=16", *overrides])
    return run_study(cfg, run_dir), run_dir


def test_a_mup_run_records_its_groups(tmp_path: Path) -> None:
    summary, _ = _study(tmp_path, "model=mlp", "model.depth=2", "model.width=128", "param=mup",
                        "param.base_width=32", "optim=adam", "optim.lr=0.004", "data.shape=[64]", "train.steps=3")
    assert summary["status"] == "ok"
    p = summary["param"]
    assert (p["name"], p["width"], p["base_width"], p["width_mult"]) == ("mup", 128, 32, 4)
    lrs = {g["role"]: g["lr"] for g in p["groups"]}
    assert lrs == pytest.approx({"input": 0.004, "vector": 0.004, "hidden": 0.001, "output": 0.004, "fixed": 0.004})
    assert {"layers.2.weight"} == {n for g in p["groups"] if g["role"] == "hidden" for n in g["names"]}


def test_at_the_base_width_mup_is_sp_bit_for_bit(tmp_path: Path) -> None:
    """m = 1 everywhere: the same statistics, whatever building the base model drew."""
    common = ["model=mlp", "model.depth=2", "model.width=64", "data.shape=[32]", "optim=adam", "train.steps=3",
              "telemetry=full"]
    stats = []
    for i, extra in enumerate(([], ["param=mup", "param.base_width=64"])):
        d = tmp_path / str(i)
        d.mkdir()
        run_study(compose_cfg(["train.progress=false", "plots=false", "data.val_size=16", *common, *extra]), d)
        stats.append(pd.read_parquet(d / "stats.parquet").sort_values(["step", "kind", "layer_idx", "param"],
                                                                       ignore_index=True))
    pd.testing.assert_frame_equal(stats[0], stats[1])


def test_coord_check_from_the_command_line_and_its_report(tmp_path: Path) -> None:
    summary, run_dir = _study(tmp_path, "experiment=coord_check", "coord.widths=[16,32,64]", "coord.steps=3",
                              "coord.seeds=2", "plots=true", "data.shape=[32]")
    assert summary["status"] == "ok" and set(summary["coord_check"]["verdict"]) == {"sp", "mup"}
    table = pd.read_parquet(run_dir / "coord.parquet")
    assert set(table["width"]) == {16, 32, 64} and set(table["seed"]) == {0, 1} and set(table["step"]) == {0, 1, 2}
    assert {"act", "update", "weight"} == set(table["kind"]) and {"l1", "std", "rms"} <= set(table.columns)
    assert (run_dir / "plots" / "coord_check.png").exists()
    on_disk = json.loads((run_dir / "summary.json").read_text())["coord_check"]
    assert on_disk["slopes"] and {"param", "layer", "step", "slope", "slope_sd"} <= set(on_disk["slopes"][0])
    (run_dir / "plots" / "coord_check.png").unlink()
    assert report_main([str(run_dir)]) == 0 and (run_dir / "plots" / "coord_check.png").exists()


def test_lr_transfer_sweep_draws_loss_against_rate(tmp_path: Path) -> None:
    proc = run_cli(["-m", "experiment=lr_transfer", "model.width=16,32", "optim.lr=0.001,0.01", "param=sp,mup",
                    "param.base_width=16", "train.steps=4", "data.val_size=16", f"hydra.sweep.dir={tmp_path / 's'}"],
                   cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "s" / "plots" / "lr_transfer.png").exists()
    assert (proc.stdout + proc.stderr).count("best lr") == 4  # each param x width, with its shift in grid steps
    table = pd.read_parquet(tmp_path / "s" / "sweep.parquet")
    assert len(table) == 8 and {"model.width", "optim.lr", "param"} <= set(table.columns)


SP_REFERENCE = Path(__file__).parent / "data" / "sp_reference_stats.parquet"
SP_REFERENCE_TORCH = "2.14.1"  # the torch that wrote it: other kernels round differently
SP_RUN = ["model=mlp", "model.depth=2", "model.width=32", "data.shape=[16]", "optim=adam", "train.steps=3",
          "train.batch_size=8", "data.val_size=16", "train.eval_every=0", "telemetry=full", "device=cpu"]


@pytest.mark.parametrize("param", [[], ["param=sp"]], ids=["no param given", "param=sp"])
def test_sp_is_bit_identical_to_initlab_before_the_width_axis(tmp_path: Path, param: list[str],
                                                             fresh_process) -> None:
    """tests/data/sp_reference_stats.parquet is this run's stats.parquet as commit 8217067 (the
    last before the param group) wrote it in a fresh process: param=sp builds nothing and draws
    no random number. Regenerate it only for a change meant to move every run's numbers."""
    import torch

    if torch.__version__.split("+")[0] != SP_REFERENCE_TORCH:
        pytest.skip(f"the reference was written by torch {SP_REFERENCE_TORCH}")
    _, run_dir = _study(tmp_path, *SP_RUN, *param)
    stats = pd.read_parquet(run_dir / "stats.parquet").sort_values(["step", "kind", "layer_idx", "param"],
                                                                   ignore_index=True)
    pd.testing.assert_frame_equal(stats, pd.read_parquet(SP_REFERENCE), check_exact=True)
