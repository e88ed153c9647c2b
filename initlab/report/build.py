"""A run's or a sweep's report rebuilt from its files alone (training is never re-run): the
figures, a missing summary.json, a sweep's table. `initlab-report` (report/cli.py), the
sweep callback and the workers that draw a sweep's runs behind it all call these."""

from pathlib import Path

import pandas as pd

from initlab.rundir.layout import METRICS_DIR, MULTIRUN_FILE, SUMMARY_FILE, RunLayout, SweepLayout
from initlab.rundir.safe import fresh_target, inside
from initlab.rundir.store import load_run, write_json
from initlab.rundir.sweep_table import load_runs, sweep_table, swept_factors


def rebuilt_summary(metrics: pd.DataFrame) -> dict:
    """For a run that ended without writing summary.json (killed): what its parts say."""
    last = metrics.iloc[-1].to_dict() if len(metrics) else {}
    return {
        "status": "incomplete",
        "note": "rebuilt by initlab-report from the flushed parquet parts: the run ended "
                "without writing its summary (killed?)",
        "steps_done": int(last["step"]) + 1 if last else 0,
        "final": {k: last.get(k) for k in ("loss", "accuracy", "val_loss", "val_accuracy")},
    }


class NothingToDraw(Exception):
    """The run directory holds no readable statistics or metrics."""


def report_run(run_dir: Path, layers: str | None = None, fmt: str | None = None) -> list[Path]:
    """Re-plot one run directory (and rebuild a missing summary.json) from its readable parts;
    training is never re-run. Raises NothingToDraw, saying why, when no part can be read."""
    run = load_run(run_dir)
    if not run.coord.empty:  # experiment=coord_check: its one figure
        from initlab.report.plots.coord import plot_coord_check

        verdict = (run.summary.get("coord_check") or {}).get("verdict") or {}
        fmt = fmt or run.config.get("plot_format") or "png"
        return [plot_coord_check(run.coord, verdict, RunLayout(run_dir).plots / "coord_check", fmt)]
    if run.stats.empty and run.metrics.empty:
        status = run.summary.get("status", "no summary.json")
        why = f": {run.summary['error']}" if run.summary.get("error") else ""
        raise NothingToDraw(f"{run_dir}: nothing to draw, the run recorded no readable statistics or metrics "
                            f"(status {status}{why})")
    from initlab.report.plots import plot_run  # matplotlib: only when a run is drawn

    layout, made = RunLayout(run_dir), []
    if not run.summary:
        write_json(layout.summary, rebuilt_summary(run.metrics))
        made.append(layout.summary)
    config = {**run.config, **({"plot_format": fmt} if fmt else {})}
    return made + plot_run(run.stats, run.metrics, config, layout.plots, run.hist, run.probe, layers=layers)


def latest_run(root: Path) -> Path | None:
    """The most recently finished single run under `root` (by its summary.json)."""
    summaries = [p for p in root.rglob(SUMMARY_FILE)
                 if (p.parent / METRICS_DIR).exists() and "multirun" not in p.parts]
    return max(summaries, key=lambda p: p.stat().st_mtime).parent if summaries else None


def latest_sweep(root: Path) -> Path | None:
    """The most recent sweep directory under `root`/multirun."""
    sweeps = [p.parent for p in (root / "multirun").rglob(MULTIRUN_FILE)]
    return max(sweeps, key=lambda p: p.stat().st_mtime) if sweeps else None


def build_sweep_report(sweep_dir: Path, layers: str = "weighted", fmt: str = "png") -> tuple[Path, list[Path]]:
    """sweep.parquet and the comparison plots for a sweep directory."""
    from initlab.report.plots import plot_sweep  # matplotlib: only when a sweep is drawn

    df = sweep_table(sweep_dir)
    table_path = SweepLayout(sweep_dir).table
    df.to_parquet(fresh_target(table_path), index=False)
    inner = [inside(sweep_dir, p) for p in df["path"]]  # a row naming a path outside the sweep is not drawn
    df = df[[p is not None for p in inner]]
    plots = plot_sweep(df.assign(path=[str(p) for p in inner if p is not None]), swept_factors(df),
                       SweepLayout(sweep_dir).plots, fmt=fmt, layers=layers, headlines=_headlines(sweep_dir))
    return table_path, plots


def _headlines(sweep_dir: Path) -> list[dict]:
    """The headline figures the sweep's experiment declares (multirun.yaml holds its config)."""
    import yaml

    try:
        spec = (yaml.safe_load(SweepLayout(sweep_dir).multirun.read_text()) or {}).get("headline")
    except (OSError, yaml.YAMLError):
        return []
    return [s for s in (spec if isinstance(spec, list) else [spec]) if isinstance(s, dict)]


def build_comparison(paths: list[Path], out: Path, layers: str = "weighted", fmt: str = "png"
                     ) -> tuple[Path, list[Path]]:
    """Runs from anywhere drawn side by side as a sweep's figures, into `out` (a directory of its
    own, never a run's or a sweep's): runs.parquet and plots/."""
    from initlab.errors import InitlabError
    from initlab.report.plots import plot_sweep

    if (out / SUMMARY_FILE).exists() or (out / MULTIRUN_FILE).exists():
        raise InitlabError(f"{out} holds a run or a sweep: give --out a directory of its own")
    df = load_runs(paths)
    if len(df) < 2:
        raise InitlabError(f"--compare needs two runs or more; {', '.join(map(str, paths))} gave {len(df)}")
    out.mkdir(parents=True, exist_ok=True)
    table_path = SweepLayout(out).runs
    df.to_parquet(fresh_target(table_path), index=False)
    factors = swept_factors(df) or ["run"]  # runs whose configs agree are told apart by their names
    plots = plot_sweep(df.assign(path=[str(Path(p).resolve()) for p in df["path"]]), factors,
                       SweepLayout(out).plots, fmt=fmt, layers=layers)
    return table_path, plots
