"""After-the-fact outputs: the TensorBoard export of a 1000-step telemetry=full run, and the
HTML report of a 100-job sweep (its table, comparison figures and every job's page).

The run is a real one (conv4 on the synthetic default, telemetry=full, no figures). The sweep
is one real probe job copied to 100 job directories with their own overrides (seed=0..99):
the report's cost depends on how many jobs and files there are, not on what they hold."""

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.common import write_table
from benchmarks.waiting import spread


def export_time(rounds: int, tmp: Path, steps: int) -> tuple[list[float], dict[str, int]]:
    from initlab.app.study import run_study
    from initlab.report.tensorboard import export_run
    from tests.conftest import compose_cfg

    run_dir = tmp / "full"
    run_dir.mkdir()
    run_study(compose_cfg([f"train.steps={steps}", "telemetry=full", "plots=false", "train.progress=false"]),
              run_dir)
    times, n = [], {}
    for r in range(rounds):
        t0 = time.perf_counter()
        n = export_run(run_dir, tmp / f"tb{r}")
        times.append(time.perf_counter() - t0)
    return times, n


def sweep_report_time(rounds: int, tmp: Path, jobs: int) -> list[float]:
    from initlab.app.study import run_study
    from initlab.report.build import build_sweep_report as build_report
    from initlab.report.html import write_html
    from tests.conftest import compose_cfg

    job0 = tmp / "job"
    job0.mkdir()
    run_study(compose_cfg(["train.steps=0", "model=mlp", "model.depth=10", "data.shape=[256]", "plots=false",
                           "train.progress=false"]), job0)
    sweep = tmp / "multirun" / "sweep"
    for j in range(jobs):
        d = sweep / str(j)
        shutil.copytree(job0, d)
        (d / ".hydra").mkdir()
        (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"seed={j}"]))
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": ["train.steps=0"]}}}))
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        build_report(sweep)
        write_html(sweep)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="100 steps, 10 jobs, 1 round")
    args = parser.parse_args()
    rounds, steps, jobs = (1, 100, 10) if args.quick else (args.rounds, 1000, 100)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        export, n = export_time(rounds, tmp, steps)
        report = sweep_report_time(rounds, tmp, jobs)
    write_table(
        "reports_cpu" + ("_quick" if args.quick else ""),
        "After the fact: TensorBoard export and HTML report",
        ["what", "median (min–max)"],
        [[f"the TensorBoard export (what `initlab-report --tensorboard` calls), in a warm process: conv4, {steps} "
          f"steps, telemetry=full ({n['scalars']:,} scalars, {n['histograms']:,} histograms)", spread(export)],
         [f"a {jobs}-job probe sweep's report (table, comparison figures) and report.html (what `initlab-report "
          f"--html` calls), in a warm process", spread(report)]],
        [f"{rounds} rounds in one process, after its imports: the command's interpreter start-up and imports are "
         "not in these rows; the run is made once before them (not timed).",
         "The sweep: one real probe job copied to each job directory with its own seed override."],
    )


if __name__ == "__main__":
    main()
