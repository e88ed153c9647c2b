"""Precision's costs, measured side by side in each process (interleaved rounds), over several
fresh processes (`--processes`):

- the format columns (telemetry.formats=[fp16,bf16,e4m3,e5m2]) in units of the bare step: full
  telemetry with them against full without, per-step medians; and the shipped default schedule's
  whole loop with them against without, in alternating chunks;
- a training step under autocast (bf16, fp16 without loss scaling, fp16 with dynamic scaling)
  against fp32, telemetry off.

    python -m benchmarks.precision            # benchmarks/results/precision_cpu.md
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.common import kaiming_case, median, write_table
from benchmarks.telemetry_overhead import CHUNKS, DEFAULT_SCHEDULE, _fit
from initlab.devices import resolve_device
from initlab.precision import precision_of
from initlab.record.watcher import Watch
from initlab.speedups.allocator import keep_freed_memory
from initlab.telemetry import CpuPath, Schedule, TelemetryConfig
from initlab.train import fit

FORMATS = ["fp16", "bf16", "e4m3", "e5m2"]
CASES = {  # label: (model, config, input shape, batch)
    "conv4 bs256 1x28x28": ("conv4", {"channels": [8, 16, 32]}, (1, 28, 28), 256),
    "MLP 20x256 bs256": ("mlp", {"depth": 20, "width": 256}, (256,), 256),
}
PRECISIONS = {"bf16": {"name": "bf16", "loss_scale": "none"}, "fp16": {"name": "fp16", "loss_scale": "none"},
              "fp16 dynamic": {"name": "fp16", "loss_scale": "dynamic", "init_scale": 65536.0, "growth_factor": 2.0,
                               "backoff_factor": 0.5, "growth_interval": 2000}}
TRAIN = {"eval_every": 0, "stop_on_nonfinite": False}


def bench_case(label: str, device: torch.device, rounds: int, steps: int, long_steps: int, tmp: Path) -> dict:
    name, cfg, shape, bs = CASES[label]
    model, data, opt = kaiming_case(name, cfg, shape, bs, device)
    full = TelemetryConfig.of("full")
    with_formats = TelemetryConfig.of({**full.as_dict(), "formats": FORMATS})

    def watch(mode: str, telemetry: object, logged: int | None = None) -> Watch:
        path = CpuPath(logged) if logged is not None else CpuPath(start="kernels")
        return Watch(model, opt, out=tmp / f"{label.replace(' ', '_')}_{mode}", telemetry=telemetry, plots=False,
                     cpu_path=path)

    watches = {"off": watch("off", "off"), "full": watch("full", full), "formats": watch("formats", with_formats)}
    precisions = {k: precision_of(v, device) for k, v in PRECISIONS.items()}
    times: dict[str, list[float]] = {k: [] for k in [*watches, *precisions]}
    _fit(model, data, opt, 3, watches["formats"])  # warm-up: allocator, kernels, caches
    for _ in range(rounds):
        for mode, w in watches.items():
            times[mode] += [r["step_time"] for r in _fit(model, data, opt, steps, w).rows]
        for mode, p in precisions.items():
            rows = fit(model, data, opt, {**TRAIN, "steps": steps, "batch_size": bs}, watches["off"], 0,
                       precision=p).rows
            times[mode] += [r["step_time"] for r in rows]
    # the shipped schedule's whole loop, with and without the formats, in alternating chunks
    sched = Schedule(long_steps, DEFAULT_SCHEDULE.first, DEFAULT_SCHEDULE.every, DEFAULT_SCHEDULE.log_points)
    logged = sum(sched(s) for s in range(long_steps))
    default = TelemetryConfig.of(DEFAULT_SCHEDULE)
    d_watch = {"default": watch("default", default, logged),
               "default_formats": watch("default_formats", TelemetryConfig.of({**default.as_dict(), "formats": FORMATS}),
                                        logged)}
    wall = {k: 0.0 for k in d_watch}
    chunk = max(1, long_steps // CHUNKS)
    for k, start in enumerate(range(0, long_steps, chunk)):
        n = min(chunk, long_steps - start)
        order = list(d_watch.items()) if k % 2 == 0 else list(d_watch.items())[::-1]
        for mode, w in order:
            wall[mode] += _fit(model, data, opt, n, w, sched, offset=start).train_s
    for w in (*watches.values(), *d_watch.values()):
        w.flush()
    off = median(times["off"])
    out = {"off_ms": off * 1e3, "full": median(times["full"]) / off,
           "formats_full": (median(times["formats"]) - median(times["full"])) / off,
           "formats_default": wall["default_formats"] / wall["default"], "logged": logged, "long_steps": long_steps}
    out.update({mode: median(times[mode]) / off for mode in precisions})
    return out


def _cell(values: list[float], digits: int, suffix: str = "x", sign: bool = False) -> str:
    fmt = f"{{:{'+' if sign else ''}.{digits}f}}{suffix}"
    mid = fmt.format(statistics.median(values))
    return mid if len(values) == 1 else f"{mid} ({fmt.format(min(values))} to {fmt.format(max(values))})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke run of the benchmark)")
    parser.add_argument("--json", default=None, metavar="LABEL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = resolve_device(args.device)
    steps, long_steps = (2, 8) if args.quick else (10, 300)
    if args.json:
        keep_freed_memory()
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(bench_case(args.json, device, 2 if args.quick else args.rounds, steps, long_steps,
                                        Path(tmp))))
        return
    rows = []
    for label in CASES:
        cmd = [sys.executable, "-m", "benchmarks.precision", "--device", args.device, "--rounds", str(args.rounds),
               "--json", label] + (["--quick"] if args.quick else [])
        runs = [json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
                for _ in range(1 if args.quick else args.processes)]
        rows.append([label, str(len(runs)), f"{statistics.median(r['off_ms'] for r in runs):.1f}",
                     _cell([r["full"] for r in runs], 2), _cell([r["formats_full"] for r in runs], 2, "", sign=True),
                     f"{_cell([r['formats_default'] for r in runs], 3)} ({runs[0]['logged']}/{runs[0]['long_steps']} logged)",
                     *(_cell([r[m] for r in runs], 2) for m in PRECISIONS)])
        print(rows[-1], flush=True)
    write_table(f"precision_{device.type}" + ("_quick" if args.quick else ""),
                f"Precision on {device.type}: the format columns' cost and autocast's step time (ratios to the bare fp32 step)",
                ["model", "processes", "fp32 bare step (ms)", "full telemetry", "+ 4 formats, full (in bare steps)",
                 "default schedule + 4 formats / without, whole run", "bf16 step", "fp16 step", "fp16 + dynamic scaling step"],
                rows,
                ["Each cell: the median over fresh processes (min to max); within a process, medians of per-step times "
                 "over interleaved rounds, the step and its statistics' reduction (what metrics.parquet's step_time "
                 "holds).",
                 "+ 4 formats, full: (full with telemetry.formats=[fp16,bf16,e4m3,e5m2] - full) / bare step: what the "
                 "format columns add to every logged step, in units of the bare step.",
                 "default schedule: the shipped schedule's whole loop, flushes included, with the formats over without, "
                 "in 10 alternating chunks.",
                 "bf16/fp16 steps: the training step under torch.autocast (telemetry off) over the fp32 step; on a CPU "
                 "autocast can be slower than fp32 (fp16 matmuls in particular have no fast CPU kernels on most "
                 "machines); a GPU's tensor cores are where they pay."])


if __name__ == "__main__":
    main()
