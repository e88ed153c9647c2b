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
from tests.scripts.ddp_reference import batches, make_model, train_watched

ROOT = Path(__file__).parents[1]
BESIDE = Path(sys.executable).with_name("torchrun")  # this interpreter's torch, not whichever PATH finds first
TORCHRUN = str(BESIDE) if BESIDE.exists() else (shutil.which("torchrun") or str(BESIDE))


def _reference(out: Path) -> pd.DataFrame:
    model = make_model()
    train_watched(model, torch.optim.SGD(model.parameters(), lr=0.1), batches(), out,
                  telemetry={"name": "full", "first": 0, "every": 1, "formats": ["fp16"]})
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


def _fully_shard_on_cpu() -> bool:
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401  (torch >= 2.6)
        from torch.distributed.tensor import DTensor  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not Path(TORCHRUN).exists() or not _fully_shard_on_cpu(), reason="needs torchrun and FSDP2")
def test_fsdp2_sharded_parameters_give_the_whole_tensors_statistics(tmp_path: Path) -> None:
    """fully_shard splits each weight over the 2 ranks: weight, gradient and update rows come from
    both shards (the norm from the sum of squares over shards), equal to one process's; one shard's
    norm, what a per-rank recorder reports, is about 1/sqrt(2) of it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}
    proc = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "tests.scripts.fsdp_watch",
                           str(tmp_path / "fsdp"), str(tmp_path / "shard_norm")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fsdp = initlab.load_run(tmp_path / "fsdp").stats
    ref = _reference(tmp_path / "ref")
    keys = ["step", "kind", "layer", "param"]
    a = fsdp.sort_values(keys).reset_index(drop=True)
    b = ref.sort_values(keys).reset_index(drop=True)
    assert list(a[keys].itertuples(index=False)) == list(b[keys].itertuples(index=False))
    assert (a["ranks"] == 2).all()  # every row merged: the batch's and the shards'
    for col in ("mean", "std", "numel", "nonfinite", "norm"):
        np.testing.assert_allclose(a[col], b[col], rtol=1e-5, atol=1e-7, err_msg=col)
    row = a[(a["step"] == 0) & (a["kind"] == "weight") & (a["layer"] == "0") & (a["param"] == "weight")]
    one_shard = float((tmp_path / "shard_norm").read_text())  # what a recorder of rank 0's tensors reports
    assert one_shard / float(row["norm"].iloc[0]) == pytest.approx(2 ** -0.5, rel=0.15)  # the pitfall, avoided


def test_norm_sync_asks_for_a_gpu_in_one_line_and_sync_batchnorm_is_recorded_as_batchnorm(tmp_path: Path) -> None:
    """norm.sync=true on the CPU under torchrun: one line before any work (torch's SyncBatchNorm
    runs on GPUs only). A SyncBatchNorm records the rows a BatchNorm does (its batch and running statistics)."""
    from omegaconf import OmegaConf

    from initlab.app.distributed import check, sync_batch_norm
    from initlab.errors import ConfigError

    cfg = OmegaConf.create({"train": {"batch_size": 8}, "probe": {"seeds": 1, "inits": []}, "coord": {"run": False},
                            "norm": {"name": "batch", "sync": True}})
    with pytest.raises(ConfigError, match="norm.sync.*GPUs only"):
        check(cfg, 2, torch.device("cpu"))
    check(cfg, 2, torch.device("cuda", 0))  # where it can run, nothing to say

    def stats(sync: bool) -> pd.DataFrame:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
        if sync:
            model = sync_batch_norm(model)
            assert isinstance(model[1], torch.nn.SyncBatchNorm)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        out = tmp_path / f"sync={sync}"
        with initlab.watch(model, opt, out=out, telemetry={"first": 0, "every": 1}, plots=False) as w:
            x, y = torch.randn(32, 8, generator=torch.Generator().manual_seed(1)), torch.arange(32) % 4
            with w.step(0):
                loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
        return initlab.load_run(out).stats.sort_values(["kind", "layer", "param"]).reset_index(drop=True)

    plain, synced = stats(False), stats(True)
    assert {"bn_batch_mean", "bn_batch_var", "bn_running_mean"} <= set(synced["kind"])
    assert list(plain["kind"]) == list(synced["kind"])
    np.testing.assert_allclose(plain["std"], synced["std"], rtol=1e-6)


@pytest.mark.skipif(not Path(TORCHRUN).exists(), reason="torchrun not installed")
def test_a_rank_that_dies_is_the_runs_failed(tmp_path: Path) -> None:
    """torchrun, 2 ranks: rank 1 SIGKILLed mid-run; rank 0's collective fails, and the run
    directory's summary says `failed` because another rank died, with one line, not a traceback."""
    import signal
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "GLOO_SOCKET_IFNAME": "lo"}
    proc = subprocess.Popen([TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "initlab", "model=mlp",
                             "train.steps=100000", "train.progress=false", "plots=false", "hydra.run.dir=ddp"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "ddp"
    end = time.monotonic() + 120
    while not any((run / "stats.parquet").glob("part-*.parquet")):
        assert time.monotonic() < end and proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    rank1 = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _env_of(int(p.name)).get("RANK") == "1"
             and _env_of(int(p.name)).get("TORCHELASTIC_RUN_ID") and str(tmp_path) in _cwd_of(int(p.name))]
    assert len(rank1) == 1, rank1
    os.kill(rank1[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    summary = initlab.load_run(run).summary
    assert summary["status"] == "failed" and "another rank of this torchrun job died" in summary["error"]
    assert "initlab: error: another rank" in err


def _env_of(pid: int) -> dict[str, str]:
    try:
        return dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
    except OSError:
        return {}


def _cwd_of(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""
