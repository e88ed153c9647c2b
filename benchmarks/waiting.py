"""Where users wait: start-up of the commands, a run's figures, a step-0 run's overhead, a
step-0 probe over many weight draws (stacked against one draw at a time) and a probe sweep
with and without per-run figures, measured side by side in one run.

Start-up: wall time of fresh processes (the interpreter, imports, Hydra, the run), the
median of `--rounds`, the reference commands interleaved with initlab's in each round.
Figures: `plot_run` on the default study's own tables (a run made once with plots=false).
The default study as a whole command: with figures, without, and with the speed-ups off.
Probe: `run_study` in this process, the two probe paths interleaved."""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import write_table
from initlab.app.behind import NICE, workers


def wall(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def spread(xs: list[float], unit: str = "s", digits: int = 2) -> str:
    xs = sorted(xs)
    mid = xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2
    return f"{mid:.{digits}f} {unit}" + (f" ({xs[0]:.{digits}f}–{xs[-1]:.{digits}f})" if len(xs) > 1 else "")


def start_up(rounds: int, tmp: Path) -> list[list[str]]:
    py = sys.executable
    smoke = [py, "-m", "initlab", "experiment=smoke", "plots=false", "train.progress=false"]
    commands = {
        "python -c 'import torch'": [py, "-c", "import torch"],
        "python -c 'import torch, torch._dynamo'": [py, "-c", "import torch, torch._dynamo"],
        "initlab --help": [py, "-m", "initlab", "--help"],
        "initlab --cfg job": [py, "-m", "initlab", "--cfg", "job"],
        "initlab experiment=smoke plots=false": smoke,
    }
    times: dict[str, list[float]] = {k: [] for k in commands}
    wall(smoke + [f"hydra.run.dir={tmp / 'warm'}"], tmp)  # numba's kernel cache, the page cache
    for r in range(rounds):
        for name, cmd in commands.items():
            extra = [f"hydra.run.dir={tmp / f'smoke{r}'}"] if cmd is smoke else []
            times[name].append(wall(cmd + extra, tmp))
    torch_s = sorted(times["python -c 'import torch'"])[rounds // 2]
    return [[name, spread(ts), f"{sorted(ts)[rounds // 2] - torch_s:+.2f} s"] for name, ts in times.items()]


FIRST_CALL = ("import sys, time; t0 = time.perf_counter(); from pathlib import Path; "
              "from initlab.report.plots import plot_run; from initlab.rundir.store import load_run; "
              "run = load_run(Path(sys.argv[1])); t1 = time.perf_counter(); "
              "plot_run(run.stats, run.metrics, run.config, Path(sys.argv[2]), run.hist, run.probe); "
              "print(time.perf_counter() - t1, time.perf_counter() - t0)")


def figures(rounds: int, tmp: Path) -> dict[str, list[float]]:
    """plot_run on the default study's tables: the first call of a fresh process (what one
    `initlab` run pays), its draw alone and with the imports of matplotlib and the run's
    tables; then later calls in this process (a sweep's jobs drawn by a worker)."""
    from initlab.app.study import run_study
    from initlab.report.plots import plot_run
    from initlab.rundir.store import load_run
    from tests.conftest import compose_cfg

    run_dir = tmp / "default"
    run_dir.mkdir()
    run_study(compose_cfg(["plots=false", "train.progress=false"]), run_dir)
    times: dict[str, list[float]] = {"first": [], "first with imports": [], "later": []}
    for r in range(2 * rounds + 1):
        done = subprocess.run([sys.executable, "-c", FIRST_CALL, str(run_dir), str(tmp / f"first_{r}")], check=True,
                              capture_output=True, text=True).stdout
        draw, whole = (float(x) for x in done.strip().splitlines()[-1].split())
        times["first"].append(draw)
        times["first with imports"].append(whole)
    run = load_run(run_dir)
    plot_run(run.stats, run.metrics, run.config, tmp / "plots_warm", run.hist, run.probe)
    for r in range(2 * rounds + 1):
        t0 = time.perf_counter()
        plot_run(run.stats, run.metrics, run.config, tmp / f"plots_{r}", run.hist, run.probe)
        times["later"].append(time.perf_counter() - t0)
    return times


# The default study as a user runs it: with figures, without (plots=false), and with every
# speed-up of initlab/speedups/ off (INITLAB_SPEEDUPS=0).
DEFAULT_STUDY = {"initlab": ([], {}), "initlab plots=false": (["plots=false"], {}),
                 "INITLAB_SPEEDUPS=0 initlab": ([], {"INITLAB_SPEEDUPS": "0"})}


def checkout(rev: str, tmp: Path) -> Path:
    """initlab as it was at git revision `rev`, importable from the returned folder (put first
    on PYTHONPATH, it shadows the installed package; its configs ride along as initlab.conf)."""
    root = Path(__file__).parents[1]
    tree = tmp / f"rev-{rev}"
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=root, check=True,
                   capture_output=True)
    (tree / "initlab" / "conf").symlink_to(tree / "conf", target_is_directory=True)
    return tree


def default_study(rounds: int, tmp: Path, before: str | None = None) -> dict[str, list[float]]:
    """Whole commands in fresh processes, interleaved, which goes first rotating each round;
    with `before`, the same two commands at that git revision too."""
    import os

    variants = dict(DEFAULT_STUDY)
    if before:
        tree = checkout(before, tmp)
        variants[f"initlab at {before}"] = ([], {"PYTHONPATH": str(tree)})
        variants[f"initlab plots=false at {before}"] = (["plots=false"], {"PYTHONPATH": str(tree)})
    out: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(rounds + 1):  # round 0 warms caches (numba's kernels, the page cache): not kept
        for name in names[r % len(names):] + names[:r % len(names)]:
            args, env = variants[name]
            cmd = [sys.executable, "-m", "initlab", *args, "train.progress=false",
                   f"hydra.run.dir={tmp / f'default_{r}_{len(name)}'}"]
            t0 = time.perf_counter()
            subprocess.run(cmd, cwd=tmp, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env={**os.environ, **env})
            if r:
                out[name].append(time.perf_counter() - t0)
    if before:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=Path(__file__).parents[1],
                       capture_output=True)
    return out


def step0_overhead(rounds: int, tmp: Path) -> list[float]:
    """A step-0 run's own time but its forward and backward (run_study's timings.total_s
    less the step's time), the 10-layer MLP, warm process."""
    from initlab.app.study import run_study
    from tests.conftest import compose_cfg

    cfg = compose_cfg(["model=mlp", "model.depth=10", "model.width=256", "train.steps=0", "plots=false",
                       "train.progress=false"])
    run_study(cfg, tmp / "step0_warm")
    out = []
    for r in range(3 * rounds):
        t = run_study(cfg, tmp / f"step0_{r}")["timings"]
        out.append(t["total_s"] - t["step_time_median_s"])
    return out


SWEEP = ["train.steps=0", "model=mlp", "model.depth=10", "data.shape=[256]", "train.progress=false"]


PROBE = ["model=mlp", "model.depth=10", "model.width=256", "train.steps=0", "plots=false", "train.progress=false"]


def sweep(jobs: int, tmp: Path, rounds: int = 2) -> dict[str, list[float]]:
    """The README's probe sweep (`initlab -m "seed=range(0,N)" ...`) with plots=false and with
    per-run figures: wall time of the whole command, in rounds that alternate which goes
    first (the machine's speed drifts over minutes)."""
    out: dict[str, list[float]] = {"false": [], "true": []}
    for r in range(rounds):
        for plots in ("false", "true") if r % 2 == 0 else ("true", "false"):
            cmd = [sys.executable, "-m", "initlab", "-m", f"seed=range(0,{jobs})", *SWEEP, f"plots={plots}",
                   f"hydra.sweep.dir={tmp / f'sweep_{plots}_{r}'}"]
            out[plots].append(wall(cmd, tmp))
    return out


def probe(rounds: int, tmp: Path, seeds: int) -> dict[str, list[float]]:
    from initlab.app.study import run_study
    from tests.conftest import compose_cfg

    base = [*PROBE, f"probe.seeds={seeds}"]
    out: dict[str, list[float]] = {"stacked": [], "per draw": []}
    for r in range(rounds):
        for path, flag in (("stacked", "true"), ("per draw", "false")):
            d = tmp / f"probe_{flag}_{r}"
            d.mkdir()
            summary = run_study(compose_cfg([*base, f"probe.stacked={flag}"]), d)
            out[path].append(summary["probe"]["seconds"])
    return out


def probe_fresh(rounds: int, tmp: Path, seeds: int) -> tuple[list[float], list[float]]:
    """What `initlab ... probe.seeds=N` pays as a command: the wall time of fresh processes and
    their probe stage (the process's first probe: numba's kernels load, its memory is fresh)."""
    walls, stages = [], []
    for r in range(rounds):
        d = tmp / f"probe_cli_{r}"
        walls.append(wall([sys.executable, "-m", "initlab", *PROBE, f"probe.seeds={seeds}", f"hydra.run.dir={d}"], tmp))
        stages.append(json.loads((d / "summary.json").read_text())["probe"]["seconds"])
    return walls, stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--sweep-jobs", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="1 round, 10 seeds, a 10-job sweep")
    parser.add_argument("--before", metavar="REV", default=None,
                        help="also time the default study (with and without figures) at git revision REV, side by side")
    args = parser.parse_args()
    rounds, seeds, jobs = (1, 10, 10) if args.quick else (args.rounds, args.seeds, args.sweep_jobs)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        rows = [[name, t, "", over] for name, t, over in start_up(rounds, tmp)]
        f = figures(rounds, tmp)
        study = default_study(1 if args.quick else max(rounds, 5), tmp, args.before)

        def against(name: str, base: str) -> str:
            ratios = sorted(a / b for a, b in zip(study[name], study[base]))
            return f"{statistics.median(ratios):.2f}x ({ratios[0]:.2f}–{ratios[-1]:.2f})"

        rows += [["the default study's 8 figures (plot_run): the first call in a fresh process", spread(f["first"]),
                  "", ""],
                 ["the same, with the imports of matplotlib and the run's tables", spread(f["first with imports"]),
                  "", ""],
                 ["the default study's 8 figures: later calls in a process (a sweep's jobs)", spread(f["later"]), "", ""]]
        for name in study:
            rows.append([f"the default study, whole command (`{name}`)", spread(study[name]),
                         "1.0x" if name == "initlab" else against(name, "initlab"), ""])
        if args.before:
            rows.append([f"its figures' cost (`initlab` against `initlab plots=false`), now and at {args.before}",
                         f"{statistics.median(a - b for a, b in zip(study['initlab'], study['initlab plots=false'])):.2f} s"
                         f" now, {statistics.median(a - b for a, b in zip(study[f'initlab at {args.before}'], study[f'initlab plots=false at {args.before}'])):.2f} s then",
                         "", ""])
        rows.append(["a step-0 run's own overhead (MLP 10x256: run_study but forward/backward)",
                     spread(step0_overhead(rounds, tmp)), "", ""])
        p = probe(rounds, tmp, seeds)
        cli_wall, cli_stage = probe_fresh(rounds, tmp, seeds)
        sw = sweep(jobs, tmp, 1 if args.quick else 2)
    speed = sorted(a / b for a, b in zip(p["per draw"], p["stacked"]))
    rows.append([f"probe.seeds={seeds}, MLP 10x256, batch 64: stacked (vmap)", spread(p["stacked"]),
                 f"{speed[len(speed) // 2]:.1f}x faster", ""])
    rows.append([f"probe.seeds={seeds}, MLP 10x256, batch 64: one draw at a time", spread(p["per draw"]), "1.0x", ""])
    rows.append([f"`initlab ... probe.seeds={seeds}` in a fresh process: its probe stage", spread(cli_stage), "", ""])
    rows.append([f"`initlab ... probe.seeds={seeds}` in a fresh process: the whole command", spread(cli_wall), "", ""])
    ratios = [t / f for t, f in zip(sw["true"], sw["false"])]
    rows.append([f"{jobs}-job probe sweep, plots=false", spread(sw["false"], digits=1), "1.0x", ""])
    rows.append([f"{jobs}-job probe sweep, per-run figures", spread(sw["true"], digits=1),
                 f"{statistics.median(ratios):.2f}x" + (f" ({min(ratios):.2f}–{max(ratios):.2f})" if len(ratios) > 1
                                                        else ""), ""])
    write_table(
        "waiting_cpu" + ("_quick" if args.quick else ""),
        "Where users wait: start-up, figures, probes, sweeps",
        ["what", "median (min–max)", "against", "over `import torch`"],
        rows,
        [f"{rounds} rounds; start-up rows are fresh processes, interleaved in each round, after one warm-up run "
         "(numba's on-disk kernel cache and the page cache warm).",
         "The torch._dynamo row is what torch.optim's wrappers import at the first optimizer call; initlab's "
         "optimizers take those wrappers off (initlab/speedups/eager_optim.py), so its runs do not pay it.",
         "Figures: plot_run on a default run's tables, drawn with matplotlib as it ships. First call: fresh "
         "processes, the draw alone and from the interpreter's first import on (matplotlib, pandas and the "
         "run's tables loaded). Later calls: in this process after one warm-up.",
         "Whole default study: `initlab` as shipped, with plots=false and with INITLAB_SPEEDUPS=0"
         + (f", and both commands at git revision {args.before} (a worktree first on PYTHONPATH)" if args.before else "")
         + f": {len(study['initlab'])} fresh processes each after a warm-up round, interleaved, which goes first rotating; "
         "'against' is the median (range) of the per-round ratios to `initlab`.",
         f"Step-0 overhead: {3 * rounds} runs in this process after a warm-up; total_s less step_time_median_s.",
         "Probe rows: the probe stage's own time (summary.json probe.seconds), building and initialising each draw "
         "included; the same run_study otherwise. The fresh-process rows run the command itself "
         f"(`initlab {' '.join(PROBE)} probe.seeds={seeds}`), the first probe of its process.",
         f"Sweep rows: `initlab -m \"seed=range(0,{jobs})\" {' '.join(SWEEP)}`, "
         "each in a fresh process, in rounds alternating which goes first; 'against' is the ratio to plots=false "
         "within a round (median, range). With figures, the jobs run one after another in the sweep's process "
         f"and {workers()} worker processes (nice +{NICE}, initlab/app/behind.py) draw each finished job's figures "
         "from its files; the command ends when the last job's are drawn."],
    )


if __name__ == "__main__":
    main()
