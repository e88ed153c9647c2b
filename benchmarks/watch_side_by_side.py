"""`initlab.watch` beside its peers on a short and a longer loop, through public APIs only.

Same model and batches; each recorder in a fresh process of its own, its loops alternating
with bare ones so that machine noise hits both alike; each cell is the median (and range)
over the rounds of a whole loop's wall time (the recorder's set-up and its files included)
over the same loop without it:

- initlab default / full: `initlab.watch(model, opt, out=..., telemetry=..., plots=False)`
  around the README's plain loop, against that loop bare;
- fastai: `ActivationStats(with_hist=True)` (every step's mean, std, near-zero fraction and a
  40-bin histogram of each layer's output) on a `Learner`, against the same `Learner` bare;
- wandb: `wandb.watch(model, log="all", log_freq=1)` (a histogram of every parameter and
  gradient) in an offline run logging the loss each step, against that run without it.

- kernels alone: initlab's CPU kernels on every activation and gradient, nothing else (the
  floor under `full`).

A peer that is not installed (`pip install -e ".[bench]"`) is left out and the table says so.
The first round of each recorder pays what a fresh process pays once (numba's kernels for
initlab) and is reported on its own, not in the median.
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import kaiming_case, median, readme_step, write_table
from initlab import watch
from initlab.speedups.allocator import keep_freed_memory

CASES = {  # label: (model, its config, input shape, batch)
    "conv4 bs256 1x28x28": ("conv4", {"channels": [8, 16, 32]}, (1, 28, 28), 256),
    "MLP 20x256 bs256": ("mlp", {"depth": 20, "width": 256}, (256,), 256),
}
LOOPS = (20, 200)  # steps per watch: the first steps an init study looks at, and a longer run


def _batches(data, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    it = data.train_batches(data.batch, 0)
    return [next(it) for _ in range(steps)]


def _plain(model, opt, batches, recorder: Callable[[], Any] | None = None) -> float:
    """The README's loop over `batches`, inside the watch() that `recorder` makes (timed too)."""
    t0 = time.perf_counter()
    if recorder is None:
        for x, y in batches:
            loss = readme_step(model, opt, x, y)
            loss.item()  # what w.log(loss=loss.item()) reads
        return time.perf_counter() - t0
    with recorder() as w:
        for step, (x, y) in enumerate(batches):
            with w.step(step):
                loss = readme_step(model, opt, x, y)
            w.log(loss=loss.item())
    return time.perf_counter() - t0


class _Batches:
    """Precomputed batches as fastai's Learner iterates them (no per-sample collation)."""

    def __init__(self, batches) -> None:
        self.batches, self.bs, self.device = batches, len(batches[0][1]), batches[0][0].device

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _fastai(model, batches) -> Callable[[bool], float]:
    import fastai.callback.progress  # noqa: F401  (Learner.no_bar)
    from fastai.callback.hook import ActivationStats
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.optimizer import SGD

    dls = DataLoaders(_Batches(batches), _Batches(batches[:1]))
    learn = Learner(dls, model, loss_func=F.cross_entropy, opt_func=SGD, lr=1e-3)

    def loop(recorded: bool) -> float:
        cbs = [ActivationStats(with_hist=True)] if recorded else []
        t0 = time.perf_counter()
        with learn.no_logging(), learn.no_bar():
            learn.fit(1, cbs=cbs)
        return time.perf_counter() - t0
    return loop


def _wandb(model, opt, batches, tmp: Path) -> Callable[[bool], float]:
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")

    def loop(recorded: bool) -> float:
        t0 = time.perf_counter()
        run = wandb.init(mode="offline", dir=tmp, project="initlab-bench", reinit="finish_previous")
        if recorded:
            run.watch(model, log="all", log_freq=1)
        for x, y in batches:
            loss = readme_step(model, opt, x, y)
            run.log({"loss": loss.item()})
        if recorded:
            run.unwatch(model)
        run.finish()
        return time.perf_counter() - t0
    return loop


class _KernelsAlone:
    """What bounds `full` on the CPU: forward and tensor hooks that only run initlab's kernels
    (moments and histogram) on every activation and gradient, with no rows kept, no
    parameters, no files."""

    def __init__(self, model: torch.nn.Module) -> None:
        from initlab.telemetry import CpuReducer, HistSpec, tracked_modules

        self.modules, self.cpu = [m for _, m in tracked_modules(model)], CpuReducer(HistSpec())

    def __call__(self) -> "_KernelsAlone":
        return self

    def __enter__(self) -> "_KernelsAlone":
        def hook(module, args, out) -> None:
            self.cpu.act_row(out.detach(), None, hist=True)
            if out.requires_grad:
                out.register_hook(lambda g: self.cpu.act_row(g, None, hist=True) and None)

        self.handles = [m.register_forward_hook(hook) for m in self.modules]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()

    @contextmanager
    def step(self, step: int) -> Iterator[None]:
        yield

    def log(self, **metrics: float) -> None:
        pass


RECORDERS = ("initlab default", "initlab full", "kernels alone", "fastai", "wandb")


def bench_case(label: str, steps: int, recorder: str, rounds: int, tmp: Path) -> dict[str, float]:
    """One recorder on one case, in this process: its first loop here, then `rounds` more,
    each between two bare loops of the same kind."""
    name, cfg, shape, bs = CASES[label]
    model, data, opt = kaiming_case(name, cfg, shape, bs, torch.device("cpu"))
    data.batch = bs
    batches = _batches(data, steps)
    runs = iter(range(10**6))
    if recorder == "fastai":
        bare = recorded = _fastai(model, batches)
    elif recorder == "wandb":
        bare = recorded = _wandb(model, opt, batches, tmp)
    else:
        def bare(_: bool) -> float:
            return _plain(model, opt, batches)

        if recorder == "kernels alone":
            from initlab.telemetry.reducers import warm_kernels

            warm_kernels()  # a reference, not a first use: what reading alone costs
            alone = _KernelsAlone(model)
            recorded = lambda _: _plain(model, opt, batches, alone)  # noqa: E731
        else:
            telemetry = recorder.split()[-1]
            recorded = lambda _: _plain(model, opt, batches, lambda: watch(  # noqa: E731
                model, opt, out=tmp / f"run{next(runs)}", telemetry=telemetry, total_steps=steps, plots=False))
    bare(False)  # the bare loop's own first run (allocator, caches) is not timed
    ratios = []
    for _ in range(rounds + 1):  # the first: what this recorder's first loop in a fresh process costs
        b0 = bare(False)
        w = recorded(True)
        b1 = bare(False)
        ratios.append(w / ((b0 + b1) / 2))
    first, rest = ratios[0], ratios[1:] or ratios
    return {"first": first, "median": median(rest), "lo": min(rest), "hi": max(rest)}


def _in_process(label: str, steps: int, recorder: str, rounds: int) -> dict[str, float]:
    """One recorder on one case in a fresh process of its own: no recorder's state (numba's
    kernels, wandb's service) reaches another's numbers."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.watch_side_by_side", "--case", label,
                           "--steps", str(steps), "--recorder", recorder, "--rounds", str(rounds)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{label}, {steps} steps, {recorder} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="conv4, 20 steps, 2 rounds: a check that it runs")
    ap.add_argument("--case", choices=list(CASES), help=argparse.SUPPRESS)  # one case and recorder, here
    ap.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--recorder", choices=RECORDERS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")  # fastai's and torch.jit's deprecation notices
    if args.case:
        keep_freed_memory()  # as the CLI's process does
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(bench_case(args.case, args.steps, args.recorder, args.rounds, Path(tmp))))
        return
    rounds = 2 if args.quick else args.rounds
    recorders = [r for r in RECORDERS if r not in ("fastai", "wandb") or importlib.util.find_spec(r)]
    cases = [(label, steps) for label in CASES for steps in LOOPS][:1 if args.quick else None]
    rows = []
    for label, steps in cases:
        r = {}
        for k in recorders:
            print(f"{label}, {steps} steps, {k} ...", flush=True)
            r[k] = _in_process(label, steps, k, rounds)
        cells = [f"{r[k]['median']:.2f}x ({r[k]['lo']:.2f}–{r[k]['hi']:.2f})" for k in recorders]
        rows.append([label, str(steps), *cells, *[f"{r[k]['first']:.2f}x" for k in recorders[:2]]])
    header = ["model", "steps per watch", *recorders, *[f"{k}: first in a fresh process" for k in recorders[:2]]]
    missing = [p for p in ("fastai", "wandb") if p not in recorders]
    notes = [f"Each recorder runs in a fresh process of its own: its first loop there, then {rounds} more, each "
             "between two bare loops; a cell is the median (min–max) of those rounds' ratios, a whole loop with "
             "the recorder over the mean of the bare loops just before and after it.",
             "initlab: the README's plain loop inside `initlab.watch(..., total_steps=N, plots=False)`, its "
             "construction, run directory and parquet files included; default logs the shipped schedule's steps "
             "(13 of 20, 17 of 200), full every step (acts, grads, histograms, weights, weight gradients, updates).",
             "kernels alone: hooks that only run initlab's CPU kernels (moments and histogram) on every activation "
             "and gradient, nothing kept, no parameters, no files: what reading them costs, the floor of full.",
             "fastai: Learner.fit with ActivationStats(with_hist=True) (each layer's output: mean, std, near-zero "
             "fraction, a 40-bin histogram) over Learner.fit without it; wandb: an offline run with "
             "wandb.watch(log='all', log_freq=1) (a histogram of every parameter and gradient) over the same run "
             "without it.",
             "first in a fresh process: a short run there stays on tensor ops, since numba's kernels cost about "
             "0.5 s to load; once a process has loaded them, or spent that much on tensor ops, every later "
             "watch() takes them from its first step (the other columns)."]
    if missing:
        notes.append(f"not installed here, so left out: {', '.join(missing)} (pip install -e \".[bench]\").")
    write_table("watch_side_by_side_cpu_quick" if args.quick else "watch_side_by_side_cpu",
                "watch() and its peers: a whole loop's time over the bare loop (cpu)", header, rows, notes)


if __name__ == "__main__":
    main()
