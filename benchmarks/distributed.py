"""Telemetry under 2-process DDP on the CPU (gloo, loopback), measured side by side in one run:
the cost of merging a logged step's rows over the ranks (the one all_gather and the merge), and
the step time with telemetry `full` and the shipped `default` schedule against telemetry off.

    python -m benchmarks.distributed      # benchmarks/results/distributed_cpu.md

The parent starts `torchrun --standalone --nproc_per_node=2 -m benchmarks.distributed --worker`;
each rank trains an MLP 20x256 under DDP on its half of a global batch of 256, one thread each.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from benchmarks.common import median, write_table
from benchmarks.telemetry_overhead import DEFAULT_SCHEDULE
from initlab.init import apply_init
from initlab.models import build_model
from initlab.record.watcher import Watch
from initlab.telemetry import Schedule, TelemetryConfig, ranks, recorder

GLOBAL_BATCH = 256


def _steps(model, opt, w: Watch, steps: int, x, y, offset: int = 0) -> list[float]:
    times = []
    for s in range(steps):
        t0 = time.perf_counter()
        with w.step(offset + s):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        w.log(loss=loss)
        times.append(time.perf_counter() - t0)
    return times


def worker(rounds: int, steps: int, long_steps: int) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    inner = build_model("mlp", {"act": "relu", "depth": 20, "width": 256}, (256,), 10, norm="none")
    apply_init(inner, {"name": "kaiming"}, "relu")
    model = DistributedDataParallel(inner)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(GLOBAL_BATCH, 256, generator=g), torch.randint(0, 10, (GLOBAL_BATCH,), generator=g)
    n = GLOBAL_BATCH // world
    x, y = x[rank * n:(rank + 1) * n], y[rank * n:(rank + 1) * n]
    merge_s: list[float] = []
    merge = ranks.merge

    def timed(*args):
        t0 = time.perf_counter()
        out = merge(*args)
        merge_s.append(time.perf_counter() - t0)
        return out

    recorder.merge = timed  # this benchmark's own timer around initlab's merge
    tmp = Path(tempfile.mkdtemp())
    watches = {"off": Watch(model, opt, out=tmp / "off", telemetry="off", plots=False),
               "full": Watch(model, opt, out=tmp / "full", telemetry="full", plots=False)}
    times: dict[str, list[float]] = {k: [] for k in watches}
    _steps(model, opt, watches["full"], 3, x, y)  # warm-up
    merge_s.clear()
    for _ in range(rounds):
        for mode, w in watches.items():
            times[mode] += _steps(model, opt, w, steps, x, y)
    merges_full = list(merge_s)
    sched = Schedule(long_steps, DEFAULT_SCHEDULE.first, DEFAULT_SCHEDULE.every, DEFAULT_SCHEDULE.log_points)
    default = Watch(model, opt, out=tmp / "default", telemetry=TelemetryConfig.of(DEFAULT_SCHEDULE), plots=False,
                    total_steps=long_steps)
    off_long = Watch(model, opt, out=tmp / "off_long", telemetry="off", plots=False)
    wall = {"off": 0.0, "default": 0.0}
    chunk = long_steps // 10
    for k, start in enumerate(range(0, long_steps, chunk)):
        order = [("off", off_long), ("default", default)]
        for mode, w in order if k % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            _steps(model, opt, w, chunk, x, y, offset=start)
            wall[mode] += time.perf_counter() - t0
    for w in (*watches.values(), default, off_long):
        w.flush()
    if rank == 0:
        off = median(times["off"])
        print(json.dumps({"off_ms": off * 1e3, "full": median(times["full"]) / off,
                          "merge_ms": median(merges_full) * 1e3, "merge_in_steps": median(merges_full) / off,
                          "default": wall["default"] / wall["off"], "logged": sum(sched(s) for s in range(long_steps)),
                          "long_steps": long_steps}))
    shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--processes", type=int, default=3, help="fresh torchrun launches")
    parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke run of the benchmark)")
    args = parser.parse_args()
    steps, long_steps = (2, 20) if args.quick else (10, 300)
    if args.worker:
        worker(2 if args.quick else args.rounds, steps, long_steps)
        return
    beside = Path(sys.executable).with_name("torchrun")  # this interpreter's torch
    torchrun = str(beside) if beside.exists() else (shutil.which("torchrun") or str(beside))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "GLOO_SOCKET_IFNAME": "lo"}
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", "-m", "benchmarks.distributed", "--worker",
           "--rounds", str(args.rounds)] + (["--quick"] if args.quick else [])
    runs = []
    for _ in range(1 if args.quick else args.processes):
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
        runs.append(json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1]))

    def cell(key: str, fmt: str) -> str:
        values = [r[key] for r in runs]
        mid = format(statistics.median(values), fmt)
        return mid if len(values) == 1 else f"{mid} ({format(min(values), fmt)} to {format(max(values), fmt)})"

    write_table("distributed_cpu" + ("_quick" if args.quick else ""),
                "Telemetry under 2-process DDP on cpu (gloo, loopback; MLP 20x256, global batch 256, 1 thread a rank)",
                ["launches", "off: median step (ms)", "merge per logged step (ms)", "merge in bare steps",
                 "full / off", "default schedule / off, whole run"],
                [[str(len(runs)), cell("off_ms", ".1f"), cell("merge_ms", ".2f"), cell("merge_in_steps", ".3f"),
                  cell("full", ".2f") + "x", cell("default", ".3f") + f"x ({runs[0]['logged']}/{runs[0]['long_steps']} logged)"]],
                ["Each cell: the median over fresh torchrun launches (min to max); within a launch, rank 0's medians of "
                 "per-step wall times over interleaved rounds (off, full).",
                 "merge: the step's rows, histogram counts packed into one vector, all_gathered and merged (telemetry/ranks.py), "
                 "timed around the call on rank 0; full: every statistic every step, the merge included.",
                 "default: the shipped schedule's whole loop against off, in 10 alternating chunks."])


if __name__ == "__main__":
    main()
