"""What a run pays for besides its arithmetic: torch's optimizers without torch._dynamo, the
allocator setting, the cycle collector's policy, and the import graph of a real run in a fresh
interpreter."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from initlab.speedups.allocator import keep_freed_memory
from initlab.speedups.eager_optim import eager
from initlab.train import OPTIMIZERS, build_optimizer


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


@pytest.mark.parametrize("cls, kw", [
    (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3}),
    (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    (torch.optim.Adam, {"lr": 0.01, "betas": (0.9, 0.99), "weight_decay": 1e-4}),
])
def test_the_eager_optimizers_are_torchs_bit_for_bit(cls, kw) -> None:
    """Same weights, state and lr schedule as torch's own class after a few steps."""
    a, b = _net(), _net()
    opts = [cls(a.parameters(), **kw), eager(cls)(b.parameters(), **kw)]
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1 / (s + 1)) for o in opts]
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    for _ in range(4):
        for net, opt, sched in zip((a, b), opts, scheds):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
            sched.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    sa, sb = opts[0].state_dict(), opts[1].state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for k in sa["state"]:
        for name, v in sa["state"][k].items():
            assert torch.equal(v, sb["state"][k][name]), name
    assert isinstance(opts[1], cls) and eager(cls) is eager(cls)  # a subclass, made once
    restored = eager(cls)(copy.deepcopy(b).parameters(), **kw)
    restored.load_state_dict(copy.deepcopy(sb))
    assert restored.state_dict()["param_groups"] == sb["param_groups"]


def test_the_registry_builds_the_eager_classes(speedups_on: None) -> None:
    cfg = {"lr": 0.1, "momentum": 0.0, "weight_decay": 0.0, "betas": [0.9, 0.999]}
    for name in OPTIMIZERS:
        opt = build_optimizer(_net(), {**cfg, "name": name})
        assert type(opt).__module__ == "initlab.speedups.eager_optim", name


@pytest.mark.parametrize("outer_grad", [True, False])
def test_step_closures_keep_their_grad_mode(outer_grad: bool) -> None:
    """step(closure) evaluates the closure with grad enabled whatever the caller's mode (as
    torch's own step does), updates without grad, and leaves the caller's mode as it was."""
    net = _net()
    x, y = torch.randn(4, 6), torch.randint(0, 3, (4,))
    seen = {}
    for cls in (torch.optim.SGD, eager(torch.optim.SGD)):
        opt = cls(net.parameters(), lr=0.1)

        def closure(cls: type = cls, opt: torch.optim.Optimizer = opt) -> torch.Tensor:
            seen[cls] = torch.is_grad_enabled()
            opt.zero_grad()
            loss = F.cross_entropy(net(x), y)  # no enable_grad here: the step must give it
            loss.backward()
            return loss

        with torch.set_grad_enabled(outer_grad):
            assert torch.isfinite(opt.step(closure))
            assert torch.is_grad_enabled() is outer_grad
    assert seen == {torch.optim.SGD: True, eager(torch.optim.SGD): True}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_allocator_keeps_freed_memory_on_linux(speedups_on: None) -> None:
    assert keep_freed_memory() is True and keep_freed_memory() is True  # once, then cached


def test_a_synthetic_run_imports_only_what_it_uses(tmp_path: Path, speedups_on: None) -> None:
    """`initlab experiment=smoke plots=false` in a fresh interpreter (`python -X importtime`
    lists every module it imported): no torch._dynamo (3 s: torch.optim's wrappers import
    it), no torchvision (synthetic data), no matplotlib (no figures), no numba (10 logged
    steps do not pay for loading the CPU kernels: `CpuPath`). The exit that skips the interpreter's teardown leaves the
    run's files and its log complete."""
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "initlab", "experiment=smoke", "plots=false",
                           "train.progress=false", f"hydra.run.dir={run_dir}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" in imported and "pandas" in imported
    assert not {"torch._dynamo", "torchvision", "matplotlib", "numba"} & imported
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "ok"
    assert "done    status=ok" in (run_dir / "initlab.log").read_text().splitlines()[-1]


def test_make_warm_compiles_every_cpu_kernel() -> None:
    """`make warm` (reducers.warm_kernels) goes through every kernel a run calls, so a fresh
    install's first long run finds them compiled in numba's cache."""
    from initlab.telemetry import kernels
    from initlab.telemetry.reducers import warm_kernels

    assert warm_kernels() is True
    for fn in (kernels.act_moments, kernels.sums, kernels.update_sums, kernels.centred_sq, kernels.hist_sample):
        assert fn.signatures, fn.__name__


def _full_collections(make: int) -> int:
    """How many full collections CPython starts while `make` long-lived objects are created."""
    import gc

    full: list[int] = []

    def count(phase: str, info: dict) -> None:
        if phase == "start" and info["generation"] == 2:
            full.append(1)

    gc.callbacks.append(count)
    try:
        kept = [[i] for i in range(make)]  # tracked containers that outlive the young collections
    finally:
        gc.callbacks.remove(count)
    del kept
    return len(full)


def test_the_collector_starts_no_full_collection_while_paused(speedups_on: None) -> None:
    """What imports and drawing create without a full collection walking the whole heap: the
    same allocation starts full collections outside `paused()` and none inside, and the
    thresholds come back as they were (nested, and after an exception)."""
    import gc

    from initlab.speedups.collector import NEVER, paused

    before = gc.get_threshold()
    make = len(gc.get_objects())  # enough for CPython's rule (long-lived objects up by a quarter)
    assert _full_collections(make) >= 1
    with paused():
        assert _full_collections(make) == 0
        with paused():
            assert gc.get_threshold()[2] == NEVER
        assert gc.get_threshold()[2] == NEVER
    assert gc.get_threshold() == before
    with pytest.raises(KeyError), paused():
        raise KeyError("inside")
    assert gc.get_threshold() == before


def test_the_command_freezes_what_it_loaded(tmp_path: Path, speedups_on: None) -> None:
    """`initlab` sets its imports aside for good after loading them (gc.freeze), so the run's
    full collections walk the run's own objects only; a library caller's process is left alone."""
    import gc

    code = ("import atexit, gc, sys; atexit.register(lambda: print('frozen', gc.get_freeze_count())); "
            "sys.argv = ['initlab', 'experiment=smoke', 'plots=false', 'train.progress=false', "
            f"'hydra.run.dir={tmp_path / 'run'}']; from initlab.app.cli import _main; _main()")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    frozen = int(proc.stdout.split("frozen")[-1])
    assert frozen > 100_000  # torch's, pandas' and Hydra's objects
    assert gc.get_freeze_count() == 0  # this process imported initlab as a library: nothing frozen
