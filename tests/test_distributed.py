"""Under DDP (torchrun, gloo on loopback) the recorded statistics are the global batch's: equal to
one process running the same model on the whole batch; rank 0 alone writes the run."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import initlab
from initlab.telemetry.ranks import _merge_stats
from initlab.telemetry.stats import STATS
from tests.scripts.ddp_reference import batches, make_model

ROOT = Path(__file__).parents[1]
BESIDE = Path(sys.executable).with_name("torchrun")  # this interpreter's torch, not whichever PATH finds first
TORCHRUN = str(BESIDE) if BESIDE.exists() else (shutil.which("torchrun") or str(BESIDE))


def _reference(out: Path) -> pd.DataFrame:
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with initlab.watch(model, opt, out=out, telemetry={"name": "full", "first": 0, "every": 1, "formats": ["fp16"]},
                       plots=False) as w:
        for step, (x, y) in enumerate(batches()):
            with w.step(step):
                loss = torch.nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            w.log(loss=loss)
    return initlab.load_run(out).stats


@pytest.mark.skipif(not Path(TORCHRUN).exists(), reason="torchrun not installed")
def test_two_ddp_ranks_record_what_one_process_records_on_the_whole_batch(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}
    proc = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "tests.scripts.ddp_watch",
                           str(tmp_path / "ddp")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = initlab.load_run(tmp_path / "ddp").stats
    ref = _reference(tmp_path / "ref")
    ddp = ddp.assign(layer=ddp["layer"].str.removeprefix("module."))  # DDP's wrapper names its module
    keys = ["step", "kind", "layer", "param"]
    a = ddp.sort_values(keys).reset_index(drop=True)
    b = ref.sort_values(keys).reset_index(drop=True)
    assert list(a[keys].itertuples(index=False)) == list(b[keys].itertuples(index=False))
    acts = a["kind"].isin(["act", "grad"])
    assert (a.loc[acts, "ranks"] == 2).all() and (a.loc[~acts, "ranks"] == 1).all()
    for col in ("mean", "std", "min", "max", "zero_frac", "numel", "nonfinite", "norm", "amax", "amin"):
        np.testing.assert_allclose(a.loc[acts, col], b.loc[acts, col], rtol=1e-5, atol=1e-7, err_msg=col)
    is_act = a["kind"] == "act"
    np.testing.assert_allclose(a.loc[is_act, "fp16_zero"], b.loc[is_act, "fp16_zero"], rtol=1e-12, atol=0)
    params = a["kind"].isin(["weight", "weight_grad", "update"])
    for col in ("mean", "std", "norm"):  # DDP's averaged gradients: the same step as the whole batch's
        np.testing.assert_allclose(a.loc[params, col], b.loc[params, col], rtol=1e-5, atol=1e-7, err_msg=col)
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == sorted(p.name for p in (tmp_path / "ref").iterdir())


def test_chans_merge_equals_the_moments_of_the_concatenation() -> None:
    rng = np.random.default_rng(0)
    parts = [rng.normal(3.0, 2.0, n) for n in (7, 1, 40)]
    i = {s: k for k, s in enumerate(STATS)}
    rows = np.full((3, 1, len(STATS)), np.nan)
    for r, x in enumerate(parts):
        rows[r, 0, i["mean"]], rows[r, 0, i["std"]] = x.mean(), x.std(ddof=1) if len(x) > 1 else np.nan
        rows[r, 0, i["min"]], rows[r, 0, i["max"]], rows[r, 0, i["numel"]] = x.min(), x.max(), len(x)
        rows[r, 0, i["zero_frac"]], rows[r, 0, i["dead_frac"]], rows[r, 0, i["nonfinite"]] = 0.0, 0.0, 0
    out = _merge_stats(rows, np.array([True]), np.array([False]), 3)[0]
    whole = np.concatenate(parts)
    assert out[i["mean"]] == pytest.approx(whole.mean()) and out[i["std"]] == pytest.approx(whole.std(ddof=1))
    assert (out[i["min"]], out[i["max"]], out[i["numel"]]) == (whole.min(), whole.max(), len(whole))


CLI = ["model=mlp", "model.depth=3", "model.width=32", "data.shape=[16]", "train.batch_size=16", "train.steps=4",
       "telemetry=full", "plots=false", "train.progress=false"]


@pytest.mark.skipif(not Path(TORCHRUN).exists(), reason="torchrun not installed")
def test_the_command_under_torchrun_records_the_global_batch(tmp_path: Path) -> None:
    """`torchrun --nproc_per_node=2 -m initlab ...`: each rank a slice of the global batch, one run
    directory written by rank 0, every statistic equal to one process's on the whole batch."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "GLOO_SOCKET_IFNAME": "lo"}
    proc = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "initlab", *CLI, "hydra.run.dir=ddp"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (proc.stdout + proc.stderr).count("done    status=ok") == 1  # rank 0 alone speaks
    one = subprocess.run([sys.executable, "-m", "initlab", *CLI, "hydra.run.dir=one"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=240)
    assert one.returncode == 0, one.stderr[-2000:]
    ddp, ref = initlab.load_run(tmp_path / "ddp"), initlab.load_run(tmp_path / "one")
    assert ddp.summary["world_size"] == 2 and ref.summary["world_size"] == 1
    keys = ["step", "kind", "layer", "param"]
    a = ddp.stats.sort_values(keys).reset_index(drop=True)
    b = ref.stats.sort_values(keys).reset_index(drop=True)
    assert list(a[keys].itertuples(index=False)) == list(b[keys].itertuples(index=False))  # the same layer names
    for col in ("mean", "std", "min", "max", "zero_frac", "dead_frac", "numel", "norm"):
        np.testing.assert_allclose(a[col], b[col], rtol=1e-5, atol=1e-7, err_msg=col)
    np.testing.assert_allclose(ddp.metrics["loss"], ref.metrics["loss"], rtol=1e-5)  # the global batch's loss
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "one"]  # rank 1 left no directory


@pytest.mark.slow  # two Lightning launches, ~33 s on 2 cores
def test_the_lightning_callback_under_ddp_records_the_global_batch(tmp_path: Path) -> None:
    """Trainer(strategy="ddp", devices=2, accelerator="cpu") with InitlabCallback against one device
    on the same global batches (DistributedSampler deals each rank every other sample)."""
    pytest.importorskip("lightning.pytorch")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}
    for name, devices in (("two", 2), ("one", 1)):
        proc = subprocess.run([sys.executable, "-m", "tests.scripts.lightning_ddp", str(tmp_path / name), str(devices)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
    two, one = initlab.load_run(tmp_path / "two").stats, initlab.load_run(tmp_path / "one").stats
    keys = ["step", "kind", "layer", "param"]
    a = two.sort_values(keys).reset_index(drop=True)
    b = one.sort_values(keys).reset_index(drop=True)
    assert list(a[keys].itertuples(index=False)) == list(b[keys].itertuples(index=False))
    assert (a.loc[a["kind"] == "act", "ranks"] == 2).all()
    for col in ("mean", "std", "min", "max", "zero_frac", "numel", "norm"):
        np.testing.assert_allclose(a[col], b[col], rtol=1e-5, atol=1e-7, err_msg=col)


@pytest.mark.skipif(not Path(TORCHRUN).exists(), reason="torchrun not installed")
def test_telemetry_ranks_each_keeps_every_ranks_own_rows_beside_the_merged(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}
    proc = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "tests.scripts.ddp_watch",
                           str(tmp_path / "ddp"), "each"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = initlab.load_run(tmp_path / "ddp").stats
    acts = s[s["kind"] == "act"]
    merged, own = acts[acts["rank"] == -1], acts[acts["rank"] >= 0]
    assert sorted(own["rank"].unique()) == [0, 1] and (own["ranks"] == 1).all() and (merged["ranks"] == 2).all()
    assert set(s.loc[s["kind"] == "weight", "rank"]) == {0}  # replicated: rank 0's, once
    assert len(own) == 2 * len(merged)
    for (step, layer), rows in own.groupby(["step", "layer"]):
        whole = merged[(merged["step"] == step) & (merged["layer"] == layer)].iloc[0]
        assert rows["numel"].sum() == whole["numel"] and len(rows) == 2
        assert np.isclose((rows["mean"] * rows["numel"]).sum() / rows["numel"].sum(), whole["mean"], rtol=1e-6, atol=1e-9)
