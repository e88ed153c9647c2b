"""Where users wait: start-up of the commands, a run's figures, a step-0 run's overhead, a
step-0 probe over many weight draws (stacked against one draw at a time) and a probe sweep
with and without per-run figures, measured side by side in one run.

Start-up: wall time of fresh processes (the interpreter, imports, Hydra, the run), the
median of `--rounds`, the reference commands interleaved with initlab's in each round.
Figures: `plot_run` on the default study's own tables (a run made once with plots=false).
Collector: two whole commands with and without initlab/collector.py's policy.
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
from initlab.behind import NICE, workers


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


# matplotlib's own Agg text (glyph by glyph, every figure) and PNG encoding (in turn), as
# initlab drew before initlab/plots/agg.py
AGG_OFF = "import initlab.plots.agg as a; a.WHOLE_STRINGS = False; "
FIRST_CALL = ("import sys, time; from pathlib import Path; from initlab.plots import plot_run; "
              "from initlab.store import load_run; run = load_run(Path(sys.argv[1])); t0 = time.perf_counter(); "
              "plot_run(run.stats, run.metrics, run.config, Path(sys.argv[2]), run.hist, run.probe); "
              "print(time.perf_counter() - t0)")


# the strings kept on disk (initlab/plots/textstore.py) removed first: a first run after an install
EMPTY_STORE = "import initlab.plots.textstore as t; t.path().unlink(missing_ok=True); "
# every tick built by matplotlib, none copied from an axis' first (initlab/plots/panel.py)
BUILT_TICKS = "import initlab.plots.panel as p; p.COPY_TICKS = False; "
FIRST_CALLS = {"first": "", "first empty store": EMPTY_STORE, "first built ticks": BUILT_TICKS,
               "first agg off": AGG_OFF}


def figures(rounds: int, tmp: Path) -> dict[str, list[float]]:
    """plot_run on the default study's tables. 'first': the first call of a fresh process
    (what one `initlab` run pays: matplotlib's fonts, nothing kept in the process yet), as
    shipped with the strings an earlier process kept on disk, as shipped with none kept
    (the store file removed), and with AGG_OFF, interleaved. Then in this process, later
    calls (a sweep's jobs drawn by a worker) alternating four ways: as shipped, with AGG_OFF,
    with BUILT_TICKS, and without plot_run's `drawing` wrapper (full collections as Python
    starts them, each PNG encoded in turn)."""
    import initlab.plots.agg as agg
    import initlab.plots.panel as panel
    from initlab.plots import plot_run
    from initlab.store import load_run
    from initlab.study import run_study
    from tests.conftest import compose_cfg

    run_dir = tmp / "default"
    run_dir.mkdir()
    run_study(compose_cfg(["plots=false", "train.progress=false"]), run_dir)
    later = ("later", "later agg off", "later built ticks", "later collected")
    times: dict[str, list[float]] = {k: [] for k in (*FIRST_CALLS, *later)}

    def first_call(variant: str, out: Path) -> float:
        code = FIRST_CALLS[variant] + FIRST_CALL
        done = subprocess.run([sys.executable, "-c", code, str(run_dir), str(out)], check=True,
                              capture_output=True, text=True).stdout
        return float(done.strip().splitlines()[-1])

    first_call("first", tmp / "first_warm")  # the store as a run before this one leaves it
    order = list(FIRST_CALLS)
    for r in range(2 * rounds + 1):
        for variant in order[r % len(order):] + order[:r % len(order)]:  # each variant first in turn
            times[variant].append(first_call(variant, tmp / f"first_{r}_{len(variant)}"))
    run = load_run(run_dir)
    draw = {"later": plot_run, "later agg off": plot_run, "later built ticks": plot_run,
            "later collected": plot_run.__wrapped__}
    plot_run(run.stats, run.metrics, run.config, tmp / "plots_warm", run.hist, run.probe)
    for r in range(2 * rounds + 1):
        for k in draw if r % 2 else reversed(draw):
            agg.WHOLE_STRINGS, panel.COPY_TICKS = k != "later agg off", k != "later built ticks"
            t0 = time.perf_counter()
            draw[k](run.stats, run.metrics, run.config, tmp / f"plots_{r}_{len(k)}", run.hist, run.probe)
            times[k].append(time.perf_counter() - t0)
    agg.WHOLE_STRINGS = panel.COPY_TICKS = True
    return times


def step0_overhead(rounds: int, tmp: Path) -> list[float]:
    """A step-0 run's own time but its forward and backward (run_study's timings.total_s
    less the step's time), the 10-layer MLP, warm process."""
    from initlab.study import run_study
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


# The command with initlab/collector.py switched off: Python's collector as it comes.
COLLECTOR_OFF = ("import contextlib, initlab.collector as c; c.paused = contextlib.nullcontext; "
                 "c.freeze_loaded = lambda: None; ")
COLLECTED = {"the default study (`initlab`)": ["train.progress=false"],
             "the probe command (`initlab ... probe.seeds=100`)": [*PROBE, "probe.seeds=100"]}


def collector(rounds: int, tmp: Path) -> dict[str, dict[str, list[float]]]:
    """Each command in COLLECTED as shipped and with initlab/collector.py switched off, fresh
    processes, interleaved (which goes first alternates): the whole command's wall time."""
    out: dict[str, dict[str, list[float]]] = {name: {"shipped": [], "off": []} for name in COLLECTED}
    for r in range(rounds):
        for name, args in COLLECTED.items():
            for variant in ("shipped", "off") if r % 2 == 0 else ("off", "shipped"):
                argv = ["initlab", *args, f"hydra.run.dir={tmp / f'collector_{variant}_{r}_{len(args)}'}"]
                code = (COLLECTOR_OFF if variant == "off" else "") + (
                    f"import sys; sys.argv = {argv!r}; from initlab.cli import main; main()")
                out[name][variant].append(wall([sys.executable, "-c", code], tmp))
    return out


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
    from initlab.study import run_study
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
    args = parser.parse_args()
    rounds, seeds, jobs = (1, 10, 10) if args.quick else (args.rounds, args.seeds, args.sweep_jobs)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        rows = [[name, t, "", over] for name, t, over in start_up(rounds, tmp)]
        f = figures(rounds, tmp)

        def faster(base: str, against: str) -> str:
            ratios = sorted(a / b for a, b in zip(f[against], f[base]))
            return f"{statistics.median(ratios):.2f}x faster ({ratios[0]:.2f}–{ratios[-1]:.2f})"

        rows += [["the default study's 8 figures (plot_run): the first call in a fresh process, strings kept "
                  "on disk by an earlier run", spread(f["first"]), faster("first", "first agg off"), ""],
                 ["the same, no string kept on disk yet (a first run after an install)", spread(f["first empty store"]),
                  faster("first empty store", "first agg off"), ""],
                 ["the same, strings on disk, every tick built by matplotlib (none copied)",
                  spread(f["first built ticks"]), f"shipped: {faster('first', 'first built ticks')}", ""],
                 ["the same, matplotlib's own Agg text and PNG encoding", spread(f["first agg off"]), "1.0x", ""],
                 ["the default study's 8 figures: later calls in a process (a sweep's jobs)", spread(f["later"]),
                  faster("later", "later agg off"), ""],
                 ["the same, matplotlib's own Agg text and PNG encoding", spread(f["later agg off"]), "1.0x", ""],
                 ["the same, every tick built by matplotlib (none copied)", spread(f["later built ticks"]),
                  f"shipped: {faster('later', 'later built ticks')}", ""],
                 ["the same, without `drawing` (full collections as Python starts them, PNGs encoded in turn)",
                  spread(f["later collected"]), f"{faster('later', 'later collected').split(' (')[0]} (shipped)", ""]]
        rows.append(["a step-0 run's own overhead (MLP 10x256: run_study but forward/backward)",
                     spread(step0_overhead(rounds, tmp)), "", ""])
        for name, t in collector(rounds, tmp).items():
            ratios = [off / on for on, off in zip(t["shipped"], t["off"])]
            rows.append([f"{name}, whole command", spread(t["shipped"]),
                         f"{statistics.median(ratios):.2f}x faster ({min(ratios):.2f}–{max(ratios):.2f})", ""])
            rows.append([f"{name}, whole command, Python's collector as it comes", spread(t["off"]), "1.0x", ""])
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
         "optimizers take those wrappers off (initlab/eager_optim.py), so its runs do not pay it.",
         "Figures: plot_run on a default run's tables. First call: fresh processes (matplotlib's fonts load, no "
         "string kept in the process yet), as shipped with the strings an earlier process kept on disk "
         "(initlab/plots/textstore.py), as shipped with the store file removed, and with matplotlib's own Agg text "
         "(glyph by glyph, laid out again in every figure) and PNG encoding (in turn, not behind the next figure), "
         "initlab/plots/agg.py switched off, and with every tick built by matplotlib rather than copied from its "
         "axis' first (initlab/plots/panel.py), interleaved, each first in turn. Later calls: in this process, the "
         "four ways alternating; the last without plot_run's `drawing` wrapper (initlab/plots/base.py). 'against' "
         "is the median (range) of the call-by-call ratios.",
         "Whole-command rows: fresh processes, each command as shipped and with initlab/collector.py switched "
         "off (no pause of full collections during imports and drawing, nothing frozen after the imports), "
         "interleaved, which goes first alternating; 'against' is the median (range) of the per-round ratios.",
         f"Step-0 overhead: {3 * rounds} runs in this process after a warm-up; total_s less step_time_median_s.",
         "Probe rows: the probe stage's own time (summary.json probe.seconds), building and initialising each draw "
         "included; the same run_study otherwise. The fresh-process rows run the command itself "
         f"(`initlab {' '.join(PROBE)} probe.seeds={seeds}`), the first probe of its process.",
         f"Sweep rows: `initlab -m \"seed=range(0,{jobs})\" {' '.join(SWEEP)}`, "
         "each in a fresh process, in rounds alternating which goes first; 'against' is the ratio to plots=false "
         "within a round (median, range). With figures, the jobs run one after another in the sweep's process "
         f"and {workers()} worker processes (nice +{NICE}, initlab/behind.py) draw each finished job's figures "
         "from its files; the command ends when the last job's are drawn."],
    )


if __name__ == "__main__":
    main()
