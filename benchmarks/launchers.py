"""A 16-job sweep's wall time on Hydra's basic launcher, joblib and a local Ray, side by side:
the whole `initlab -m` command, as a user waits for it (Ray's start and stop included), in
rounds that rotate which launcher goes first (the machine's speed drifts over minutes).

    python -m benchmarks.launchers [--rounds 3] [--jobs 16] [--quick]
"""

import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

from benchmarks.common import write_table
from benchmarks.waiting import spread, wall

# a short job: a 10-layer MLP, 50 steps, no figures; the jobs differ by seed
JOB = ["model=mlp", "model.depth=10", "train.steps=50", "train.batch_size=64", "train.eval_every=0", "plots=false",
       "train.progress=false"]
CORES = os.cpu_count() or 1
LAUNCHERS = {
    "basic (one process)": [],
    f"joblib, n_jobs={CORES}": ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={CORES}"],
    f"ray (local, {CORES} CPUs)": ["hydra/launcher=ray", f"+hydra.launcher.ray.init.num_cpus={CORES}",
                                   "+hydra.launcher.ray.init.include_dashboard=false",
                                   "+hydra.launcher.ray.init._node_ip_address=127.0.0.1"],
}
PLUGINS = {"joblib": "hydra_plugins.hydra_joblib_launcher", "ray": "hydra_plugins.hydra_ray_launcher"}


def installed(label: str) -> bool:
    plugin = next((m for k, m in PLUGINS.items() if label.startswith(k)), None)
    return plugin is None or importlib.util.find_spec(plugin) is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="1 round of a 4-job sweep")
    args = parser.parse_args()
    rounds, jobs = (1, 4) if args.quick else (args.rounds, args.jobs)
    labels = [label for label in LAUNCHERS if installed(label)]
    times: dict[str, list[float]] = {label: [] for label in labels}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for k in range(len(labels)):
                label = labels[(k + r) % len(labels)]
                cmd = [sys.executable, "-m", "initlab", "-m", *LAUNCHERS[label], f"seed=range(0,{jobs})", *JOB,
                       f"hydra.sweep.dir={Path(tmp) / f'{r}_{k}'}"]
                times[label].append(wall(cmd, Path(tmp)))
    base = sorted(times[labels[0]])[len(times[labels[0]]) // 2]
    rows = [[label, spread(ts, "s", 1), f"{base / sorted(ts)[len(ts) // 2]:.2f}×"] for label, ts in times.items()]
    write_table(
        "launchers_cpu" + ("_quick" if args.quick else ""),
        f"A {jobs}-job sweep's wall time by launcher",
        ["launcher", "wall time, median (range)", "speed-up against basic"],
        rows,
        [f"`initlab -m seed=range(0,{jobs}) {' '.join(JOB)}` plus the launcher's keys; {rounds} rounds, the order "
         "rotated each round; the whole command, Hydra's composition and Ray's start and stop included.",
         "Under joblib and Ray each job's study runs in a child process (initlab/app/isolation.py); the basic "
         "launcher runs the jobs one after another in the sweep's process.",
         *([f"not installed, so not measured: {', '.join(set(LAUNCHERS) - set(labels))}"] if len(labels) < len(LAUNCHERS)
           else [])],
    )


if __name__ == "__main__":
    main()
