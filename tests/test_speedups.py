"""initlab/speedups/: each speed-up on and off (INITLAB_SPEEDUPS=0), its fallback when the
private names it leans on are missing or changed, and the same numbers either way."""

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from initlab import speedups
from initlab.speedups import allocator, collector, eager_optim, foreach

OFF = {"INITLAB_SPEEDUPS": "0"}


@pytest.fixture
def off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INITLAB_SPEEDUPS", "0")


@pytest.mark.parametrize("value, on", [("1", True), ("0", False), ("false", False), ("off", False), ("", True)])
def test_the_switch_reads_the_environment(monkeypatch: pytest.MonkeyPatch, value: str, on: bool) -> None:
    monkeypatch.setenv("INITLAB_SPEEDUPS", value)
    assert speedups.enabled() is on


def test_eager_optimizers_off_are_torchs_own_class(off: None) -> None:
    assert eager_optim.eager(torch.optim.SGD) is torch.optim.SGD


def test_eager_optimizers_fall_back_when_torchs_wrappers_change(monkeypatch: pytest.MonkeyPatch, caplog, speedups_on: None) -> None:
    """A wrapper whose code names something unknown is left on: torch's class, said once at debug level."""
    eager_optim._wrapper_codes.cache_clear()
    eager_optim._eager.cache_clear()
    monkeypatch.setattr(eager_optim, "_USE_GRAD_NAMES", {"torch._dynamo"})
    monkeypatch.setattr(speedups, "_said", set())
    with caplog.at_level("DEBUG", logger="initlab.speedups"):
        assert eager_optim.eager(torch.optim.Adam) is torch.optim.Adam
    assert "eager_optim off: torch's optimizer wrappers changed" in caplog.text
    eager_optim._wrapper_codes.cache_clear()
    eager_optim._eager.cache_clear()


def test_eager_optimizers_on_skip_the_dynamo_import(speedups_on: None) -> None:
    code = ("import sys, torch; from initlab.speedups.eager_optim import eager; "
            "opt = eager(torch.optim.SGD)([torch.nn.Parameter(torch.ones(2))], lr=0.1); opt.zero_grad(); opt.step(); "
            "print('torch._dynamo' in sys.modules)")
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                           env={**os.environ, **OFF})
    assert (on.stdout.strip(), plain.stdout.strip()) == ("False", "True"), on.stderr + plain.stderr


EXIT = ("import atexit, threading, time, sys; from initlab.speedups.fast_exit import exit_now; "
        "atexit.register(lambda: print('atexit ran', flush=True)); "
        "threading.Thread(target=lambda: (time.sleep(0.3), print('thread joined', flush=True))).start(); "
        "exit_now(int(sys.argv[1]))")


@pytest.mark.parametrize("env", [{}, OFF], ids=["on", "off"])
def test_the_fast_exit_keeps_exit_hooks_threads_and_the_code(env: dict[str, str]) -> None:
    proc = subprocess.run([sys.executable, "-c", EXIT, "3"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.splitlines() == ["thread joined", "atexit ran"]


def test_the_fast_exit_without_the_interpreters_names_is_sys_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from initlab.speedups import fast_exit

    monkeypatch.delattr(threading, "_shutdown")
    with pytest.raises(SystemExit) as exc:
        fast_exit.exit_now(4)
    assert exc.value.code == 4


def test_the_collector_policy_off_leaves_the_thresholds(off: None) -> None:
    before = gc.get_threshold()
    with collector.paused():
        assert gc.get_threshold() == before
    frozen = gc.get_freeze_count()
    collector.freeze_loaded()
    assert gc.get_freeze_count() == frozen


def test_the_collector_policy_on_pauses_full_collections(speedups_on: None) -> None:
    before = gc.get_threshold()
    with collector.paused():
        assert gc.get_threshold()[2] == collector.NEVER
    assert gc.get_threshold() == before


def test_the_allocator_off_changes_nothing(off: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "_mallopt", lambda: pytest.fail("mallopt called with the speed-ups off"))
    assert allocator.keep_freed_memory() is False


@pytest.mark.parametrize("env", ["1", "0"])
def test_foreach_ops_on_and_off_give_the_same_numbers(monkeypatch: pytest.MonkeyPatch, env: str) -> None:
    monkeypatch.setenv("INITLAB_SPEEDUPS", env)
    g = torch.Generator().manual_seed(0)
    a = [torch.randn(5, 3, generator=g), torch.randn(7, generator=g) * 1e6 + 3]
    b = [torch.randn(5, 3, generator=g), torch.randn(7, generator=g)]
    expected_norms = torch.stack([torch.linalg.vector_norm(t, dtype=torch.float64) for t in a])
    assert torch.equal(foreach.norms(a, torch.float64), expected_norms)
    dst = [torch.empty_like(t) for t in a]
    foreach.copy_(dst, a)
    assert all(torch.equal(d, t) for d, t in zip(dst, a))
    foreach.sub_(dst, b)
    assert all(torch.equal(d, t - u) for d, t, u in zip(dst, a, b))


def test_foreach_without_torchs_kernels_takes_the_public_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(torch, "_foreach_norm")
    t = [torch.ones(4), torch.full((2,), 3.0)]
    assert foreach.norms(t, torch.float64).tolist() == [2.0, pytest.approx(18 ** 0.5)]


def test_a_run_records_the_same_numbers_with_the_speedups_off(tmp_path: Path) -> None:
    """The whole command, on and off: the same statistics and metrics, bit for bit."""
    tables = {}
    for name, env in (("on", {}), ("off", OFF)):
        run_dir = tmp_path / name
        proc = subprocess.run([sys.executable, "-m", "initlab", "experiment=smoke", "plots=false", "train.progress=false",
                               "telemetry=full", f"hydra.run.dir={run_dir}"], capture_output=True, text=True,
                              timeout=300, cwd=tmp_path, env={**os.environ, **env})
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "ok"
        tables[name] = (pd.read_parquet(run_dir / "stats.parquet").sort_values(["step", "kind", "layer_idx", "param"],
                                                                                ignore_index=True),
                        pd.read_parquet(run_dir / "metrics.parquet").drop(columns=["step_time"]))
    pd.testing.assert_frame_equal(tables["on"][0], tables["off"][0])
    pd.testing.assert_frame_equal(tables["on"][1], tables["off"][1])
