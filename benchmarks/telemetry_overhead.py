"""Telemetry cost as step-time ratios against telemetry=off, same model, same process.

Modes, interleaved round by round so machine noise hits them alike:
- off:   the bare training loop (initlab's fit() with no telemetry)
- full:  every statistic on every step (acts, grads, histograms, params, updates, BN and norm rows)
- full without the BatchNorm/norm rows (telemetry.bn=false, telemetry.norm=false): their share
- naive: a reference design: per-layer hooks calling .item() for each statistic
- default over a 1000-step run: the shipped schedule, wall time of the whole loop,
  flushes to parquet included, run in chunks alternating with off chunks.

On a shared CPU the bare step itself moves by up to 2x between processes (thread placement),
so each case runs in several fresh processes (`--processes`) and the table gives the median
ratio and its range over them.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_module
from torch import nn

from benchmarks.common import kaiming_case, median, readme_step, write_table
from initlab.devices import resolve_device
from initlab.record.watcher import Watch
from initlab.speedups.allocator import keep_freed_memory
from initlab.telemetry import CpuPath, Schedule, TelemetryConfig, tracked_modules
from initlab.train import fit

CASES = {  # label: (model, its config, input shape, batch, norm)
    "conv4 bs256 1x28x28": ("conv4", {"channels": [8, 16, 32]}, (1, 28, 28), 256, "none"),
    "MLP 20x256 bs256": ("mlp", {"depth": 20, "width": 256}, (256,), 256, "none"),
    "ResNet-18 bs64 3x32x32": ("resnet", {"width": 64, "blocks": [2, 2, 2, 2]}, (3, 32, 32), 64, "batch"),
}
# The norm table: what each norm's rows cost (norm_mean/norm_var against BatchNorm's four rows)
NORM_CASES = {f"conv4 norm={n} bs256": ("conv4", {"channels": [8, 16, 32]}, (1, 28, 28), 256, n)
              for n in ("batch", "layer", "group", "instance", "rms")}
TABLES = {"models": CASES, "norms": NORM_CASES}
ALL_CASES = {**CASES, **NORM_CASES}
TRAIN = {"batch_size": 0, "eval_every": 0, "stop_on_nonfinite": True}
with initialize_config_module(config_module="initlab.conf", version_base="1.3"):
    DEFAULT_SCHEDULE = compose(config_name="config").telemetry  # the shipped telemetry=default


class NaiveTelemetry:
    """What a first attempt looks like: a hook per layer, .item() per statistic."""

    def __init__(self, model: nn.Module) -> None:
        self.modules = tracked_modules(model)
        self.rows: list[tuple] = []

    def _stats(self, name: str, kind: str, t: torch.Tensor) -> None:
        t = t.detach().float()
        self.rows.append((name, kind, t.mean().item(), t.std().item(), t.min().item(), t.max().item(),
                          (t == 0).float().mean().item(), (~torch.isfinite(t)).sum().item()))

    @contextmanager
    def record(self):
        def hook(name):
            def fn(m, a, out):
                self._stats(name, "act", out)
                if out.requires_grad:
                    out.register_hook(lambda g: self._stats(name, "grad", g))
            return fn
        handles = [m.register_forward_hook(hook(n)) for n, m in self.modules]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def before_step(self) -> None: ...
    def after_step(self, stepped: bool) -> None: ...

    def collect(self, step: int):
        rows, self.rows = self.rows, []
        cols = {k: np.array(v) for k, v in zip(
            ("layer", "kind", "mean", "std", "min", "max", "zero_frac", "nonfinite"), zip(*rows))}
        cols["step"] = np.full(len(rows), step)
        return cols, None


def _fit(model, data, opt, steps, watch: Watch, schedule=None, offset=0):
    """The CLI's loop through `watch`; `schedule` (shifted by `offset`) replaces its own."""
    if schedule is not None:
        watch.schedule = lambda s: schedule(s + offset)
    return fit(model, data, opt, {**TRAIN, "steps": steps, "batch_size": data.batch}, watch, seed=offset)


def _user_loop(model, data, opt, steps: int, watch: Watch | None) -> list[float]:
    """A plain user loop (README's): per-step wall times, with or without `watch`."""
    batches = data.train_batches(data.batch, 0)
    times = []
    for step in range(steps):
        x, y = next(batches)
        t0 = time.perf_counter()
        if watch is None:
            loss = readme_step(model, opt, x, y)
            loss.item()  # the same one read per step the CLI's loop makes
        else:
            with watch.step(step):
                loss = readme_step(model, opt, x, y)
            watch.log(loss=loss.item())
        times.append(time.perf_counter() - t0)
    return times


def bench_case(label: str, device: torch.device, rounds: int, steps: int, long_steps: int, tmp: Path):
    name, cfg, shape, bs, norm = ALL_CASES[label]
    model, data, opt = kaiming_case(name, cfg, shape, bs, device, norm)
    full_cfg = TelemetryConfig.of("full")
    plain_cfg = TelemetryConfig.of({**full_cfg.as_dict(), "bn": False, "norm": False})

    def new_watch(mode: str, telemetry, logged: int | None = None) -> Watch:
        # the CPU's reducer as the CLI's run of that many logged steps takes it; the rounds
        # (steady state, every step logged) on the kernels from their first step
        path = CpuPath(logged) if logged is not None else CpuPath(start="kernels")
        return Watch(model, opt, out=tmp / f"{label.replace(' ', '_')}_{mode}", telemetry=telemetry, plots=False,
                     cpu_path=path)

    watches = {"off": new_watch("off", "off"), "full": new_watch("full", full_cfg),
               "plain": new_watch("plain", plain_cfg),
               "naive": new_watch("naive", full_cfg), "user_full": new_watch("user", full_cfg)}
    watches["naive"].telemetry = NaiveTelemetry(model)
    times: dict[str, list[float]] = {"off": [], "full": [], "plain": [], "naive": [], "user_off": [], "user_full": []}
    _fit(model, data, opt, 3, watches["off"])  # warm-up: allocator, kernels, caches
    _user_loop(model, data, opt, 3, watches["user_full"])
    for _ in range(rounds):
        for mode in ("off", "full", "plain", "naive"):
            times[mode] += [r["step_time"] for r in _fit(model, data, opt, steps, watches[mode]).rows]
        times["user_off"] += _user_loop(model, data, opt, steps, None)
        times["user_full"] += _user_loop(model, data, opt, steps, watches["user_full"])
    # The shipped default schedule over a long run, in chunks alternated with off chunks
    # (which goes first alternates too, so drift hits both alike).
    d = {"off": 0.0, "default": 0.0}
    sched = Schedule(long_steps, DEFAULT_SCHEDULE.first, DEFAULT_SCHEDULE.every, DEFAULT_SCHEDULE.log_points)
    logged = sum(sched(s) for s in range(long_steps))
    chunk = max(1, long_steps // CHUNKS)
    default_watch = new_watch("default", TelemetryConfig.of(DEFAULT_SCHEDULE), logged)
    for k, start in enumerate(range(0, long_steps, chunk)):
        n = min(chunk, long_steps - start)
        order = (("off", watches["off"], None), ("default", default_watch, sched))
        for mode, w, sch in order if k % 2 == 0 else order[::-1]:
            d[mode] += _fit(model, data, opt, n, w, sch, offset=start).train_s
    for w in (*watches.values(), default_watch):
        w.flush()
    off = median(times["off"])
    return {"off_ms": off * 1e3, "full": median(times["full"]) / off, "naive": median(times["naive"]) / off,
            "norm_rows": (median(times["full"]) - median(times["plain"])) / off,
            "user": median(times["user_full"]) / median(times["user_off"]),
            "default": d["default"] / d["off"], "logged": logged, "long_steps": long_steps}


CHUNKS = 10  # alternations of off and default chunks over the long run


def _big(label: str, device: torch.device) -> bool:
    """ResNet-18 on the CPU: minutes per case, so fewer steps and one process."""
    return label.startswith("ResNet") and device.type == "cpu"


def _steps(label: str, device: torch.device, quick: bool) -> tuple[int, int]:
    return (2, 8) if quick else ((3, 200) if _big(label, device) else (20, 1000))


def _in_processes(label: str, args: argparse.Namespace, n: int) -> list[dict]:
    """The case measured in n fresh processes, one after another."""
    cmd = [sys.executable, "-m", "benchmarks.telemetry_overhead", "--device", args.device, "--rounds",
           str(args.rounds), "--json", label] + (["--quick"] if args.quick else []) + (
        ["--threads", str(args.threads)] if args.threads else [])
    return [json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            for _ in range(n)]


def _cell(values: list[float], digits: int) -> str:
    mid = f"{statistics.median(values):.{digits}f}x"
    return mid if len(values) == 1 else f"{mid} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--processes", type=int, default=3,
                        help="fresh processes per case (ResNet-18 on CPU: 1, it takes minutes)")
    parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke run of the benchmark)")
    parser.add_argument("--only", nargs="*", default=None, help="cases whose label starts with these words")
    parser.add_argument("--tables", nargs="*", default=list(TABLES), choices=list(TABLES),
                        help="models: the overhead table; norms: conv4 under each norm")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own); the telemetry's work is one thread's")
    parser.add_argument("--tag", default="", help="appended to the results' file names (e.g. torch2.15)")
    parser.add_argument("--json", default=None, metavar="LABEL", help=argparse.SUPPRESS)  # one case, one process
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.json:
        keep_freed_memory()  # as the CLI's process does (initlab/speedups/allocator.py)
        steps, long_steps = _steps(args.json, device, args.quick)
        with tempfile.TemporaryDirectory() as tmp:
            rounds = 2 if args.quick else args.rounds
            print(json.dumps(bench_case(args.json, device, rounds, steps, long_steps, Path(tmp))))
        return
    for table in args.tables:
        _table(table, args, device)


def _table(table: str, args: argparse.Namespace, device: torch.device) -> None:
    rows = []
    for label, case in TABLES[table].items():
        if args.only and not any(label.startswith(o) for o in args.only):
            continue
        runs = _in_processes(label, args, 1 if _big(label, device) or args.quick else args.processes)
        r = runs[0]
        shares = [x["norm_rows"] for x in runs]
        share = "" if case[4] == "none" else f"{statistics.median(shares):+.3f}" + (
            f" ({min(shares):+.3f} to {max(shares):+.3f})" if len(shares) > 1 else "")
        rows.append([label, str(len(runs)), f"{statistics.median(x['off_ms'] for x in runs):.1f}",
                     _cell([x["full"] for x in runs], 2), share, _cell([x["user"] for x in runs], 2),
                     _cell([x["naive"] for x in runs], 2),
                     f"{_cell([x['default'] for x in runs], 3)} ({r['logged']}/{r['long_steps']} logged)"])
        print(rows[-1], flush=True)
    name = "telemetry" if table == "models" else "telemetry_norms"
    title = "Telemetry overhead" if table == "models" else "Telemetry overhead under each norm, conv4"
    write_table(
        f"{name}_{device.type}" + (f"_{args.tag}" if args.tag else "") + ("_quick" if args.quick else ""), f"{title} on {device.type} (step time / telemetry=off step time)",
        ["model", "processes", "off: median step (ms)", "full", "of which BN/norm rows", "watch() full, plain user loop",
         "naive .item() reference", "default schedule, whole run"],
        rows,
        ["Each cell: the median over fresh processes, (min–max) when there are several; the bare step moves by "
         "up to 2x between processes on a shared CPU, the overhead much less.",
         "full/naive: the CLI's loop (initlab.train.fit, which records through watch()); watch() full: the "
         "README's plain user loop with watch(telemetry='full') over the same loop without it.",
         "full/naive/watch(): within a process, medians of per-step times over interleaved rounds. A step's time is "
         "the training step and its statistics' reduction (the step_time metrics.parquet records): the bookkeeping "
         "after the step and the parquet flushes are outside it, and the median leaves out the steps a flush "
         "lands on. What a whole run pays for them is in the default column.",
         f"default: wall time of the whole loop, flushes included, over the run length shown, in {CHUNKS} off/default "
         "chunk pairs, in a process that has already loaded numba's kernels (a fresh `initlab` run pays their load, "
         "about a second here, once; benchmarks/waiting.py times the whole command).",
         "Each process keeps freed memory for reuse (initlab/speedups/allocator.py), as the CLI's does.",
         "ResNet-18 on CPU runs 1 process and 200 steps for the default-schedule column (a 1000-step CPU run takes "
         "~20 min); the shipped schedule logs a larger fraction of a 200-step run than of a 1000-step run.",
         "full records act+grad stats and histograms of every tracked module, weight/grad/update stats of "
         "every parameter, BN running/batch statistics and the norms' norm_mean/norm_var rows; naive records 6 "
         "act+grad statistics only.",
         "of which BN/norm rows: (full - full with telemetry.bn=false and telemetry.norm=false) / off step time, "
         "medians within each process: what the BatchNorm or norm rows add, in units of the bare step."],
    )


if __name__ == "__main__":
    main()
