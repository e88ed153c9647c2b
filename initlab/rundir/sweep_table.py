"""A sweep directory as a table: one row per job (its overrides, verdict, final metrics and
depth ratios), `sweep.parquet`, and `load_sweep`."""

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.dataset as ds
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from initlab.diagnose import WEIGHTED, depth_ratio
from initlab.rundir.layout import HYDRA_DIR, MULTIRUN_FILE, STATS_DIR, SUMMARY_FILE, SWEEP_FILE
from initlab.rundir.safe import inside


def is_sweep_dir(path: Path) -> bool:
    return (path / MULTIRUN_FILE).exists() or any(path.glob(f"*/{HYDRA_DIR}/overrides.yaml"))


def job_dirs(sweep_dir: Path) -> list[Path]:
    """Every job directory (holding .hydra/overrides.yaml) under a sweep, in job order."""
    dirs = [p.parent.parent for p in sweep_dir.rglob(f"{HYDRA_DIR}/overrides.yaml")]
    return sorted(dirs, key=lambda d: (len(d.parts), int(d.name) if d.name.isdigit() else 0, d.name))


def asked(job_dir: Path) -> list[str]:
    """The overrides Hydra gave the job (.hydra/overrides.yaml)."""
    return [str(o) for o in yaml.safe_load((job_dir / HYDRA_DIR / "overrides.yaml").read_text()) or []]


def overrides(job_dir: Path, items: list[str] | None = None) -> dict[str, Any]:
    """A job's command-line overrides (`items`, default: what Hydra gave it) as typed values
    ('bn=true' -> {'bn': True}), read with Hydra's own override parser (it writes 'cuda:7' as
    'cuda\\:7')."""
    parsed = OverridesParser.create().parse_overrides(asked(job_dir) if items is None else items)
    return {o.key_or_group: o.value() for o in parsed if not o.is_delete()}


def _layer_summaries(job_dir: Path) -> dict[str, float]:
    """Step-0 activation std of the first and last weighted layer, and the depth ratios the
    diagnosis reads, read with a filter so only a few rows leave the disk."""
    path = job_dir / STATS_DIR
    if not path.exists() or not any(path.glob("*.parquet")):
        return {}
    cols = ["step", "layer_idx", "module_type", "kind", "std", "nonfinite"]
    table = ds.dataset(path, format="parquet").to_table(
        columns=cols, filter=(ds.field("step") == 0) & ds.field("kind").isin(["act", "grad"]))
    d = table.to_pandas()
    d = d[d["module_type"].isin(WEIGHTED)].sort_values("layer_idx")
    act = d[d["kind"] == "act"]
    out: dict[str, float] = {}
    if len(act):
        out["act_std_first"], out["act_std_last"] = float(act["std"].iloc[0]), float(act["std"].iloc[-1])
    out["act_std_ratio"], out["grad_std_ratio_first_last"] = depth_ratio(d, "act"), depth_ratio(d, "grad")
    return out


def job_row(job_dir: Path, sweep_dir: Path) -> dict[str, Any]:
    """One job's row: its labels are what the sweep asked of it; its numbers are read only where
    the run in its directory recorded those same overrides (a refused job is a failed job, never
    another run's numbers under its labels)."""
    summary_path = job_dir / SUMMARY_FILE
    try:
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {"status": "missing"}
    except (ValueError, OSError) as exc:  # torn or unreadable: the job's verdict is unknown, the sweep's table stands
        summary = {"status": "failed", "error": f"{SUMMARY_FILE} unreadable ({type(exc).__name__})"}
    given, recorded = asked(job_dir), summary.get("overrides")
    theirs = recorded is not None and recorded != given
    if theirs:
        summary = {"status": "failed", "error": "the job's directory holds another run's files (that run's "
                   f"overrides: {' '.join(recorded) or 'none'}); its own results are not there"}
    row: dict[str, Any] = {"job": job_dir.name, "path": str(job_dir.relative_to(sweep_dir)), **verdict(summary)}
    row.update(overrides(job_dir, given))
    if not theirs:
        row.update(_layer_summaries(job_dir))
    return row


def verdict(summary: dict[str, Any]) -> dict[str, Any]:
    """A run's verdict, final metrics and flags as a table row's columns."""
    final = summary.get("final") or {}
    diverged = summary.get("diverged") or {}
    row: dict[str, Any] = {
        "status": summary.get("status"), "error": summary.get("error"), "steps_done": summary.get("steps_done"),
        "final_loss": final.get("loss"), "loss_avg": final.get("loss_avg"), "final_accuracy": final.get("accuracy"),
        "val_loss": final.get("val_loss"), "val_accuracy": final.get("val_accuracy"),
        "diverged_step": diverged.get("step"), "diverged_layer": diverged.get("layer"),
        "max_rss_mb": (summary.get("timings") or {}).get("max_rss_mb"),
        "flags": ",".join(f["flag"] for f in summary.get("flags") or []),
    }
    for f in summary.get("flags") or []:
        row[f"flag_{f['flag']}"] = True
    return row


def sweep_table(sweep_dir: Path) -> pd.DataFrame:
    """The sweep's table: a row per job (job_row)."""
    return _tidy(pd.DataFrame([job_row(d, sweep_dir) for d in job_dirs(sweep_dir)]))


def _tidy(df: pd.DataFrame) -> pd.DataFrame:
    """Column kinds parquet and a groupby can take: flags as bools, metrics as floats."""
    for col in [c for c in df.columns if c.startswith("flag_")]:
        df[col] = df[col].fillna(False).astype(bool)
    for col in ("final_loss", "loss_avg", "final_accuracy", "val_loss", "val_accuracy"):
        if col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce")  # "nan" strings from summary.json
    for col in [c for c in df.columns if pd.api.types.is_object_dtype(df[c])]:  # a swept key of mixed kinds
        kinds = {type(v) for v in df[col] if v is not None and not (isinstance(v, float) and math.isnan(v))}
        if len(kinds) > 1:  # (loss_scale=none,1024): parquet takes one kind a column, so as text
            df[col] = [None if v is None else str(v) for v in df[col]]
    return df


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'model': {'name': 'mlp'}} -> {'model.name': 'mlp'}; lists stay values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def run_dirs(paths: str | Path | list[str | Path]) -> list[Path]:
    """Run directories from paths and globs ("runs/*"), in the order given, each once; a path
    that is no run directory (no summary.json) is one line."""
    from glob import glob

    found: list[Path] = []
    for p in [paths] if isinstance(paths, (str, Path)) else list(paths):
        matches = sorted(glob(str(p))) if any(c in str(p) for c in "*?[") else [str(p)]
        if not matches:
            raise FileNotFoundError(f"no run directory matches {p}")
        for m in map(Path, matches):
            if not (m / SUMMARY_FILE).exists():
                if any(c in str(p) for c in "*?["):
                    continue  # a glob may match other things beside runs
                raise FileNotFoundError(f"{m} is not a run directory (no {SUMMARY_FILE})")
            if m.resolve() not in [f.resolve() for f in found]:
                found.append(m)
    if not found:
        raise FileNotFoundError(f"no run directory (holding {SUMMARY_FILE}) in {paths}")
    return found


def load_runs(paths: str | Path | list[str | Path]) -> pd.DataFrame:
    """Runs from anywhere (`watch()` runs, command-line runs; paths or globs such as "runs/*") as one
    table, a row each, as a sweep's: `run` and `path`, the config keys on which the runs differ
    (dotted, `optim.lr`), then each run's verdict, final metrics and flags."""
    from initlab.rundir.store import read_metadata

    rows, configs = [], []
    for run_dir in run_dirs(paths):
        try:
            summary = json.loads((run_dir / SUMMARY_FILE).read_text())
        except (ValueError, OSError) as exc:
            summary = {"status": "failed", "error": f"{SUMMARY_FILE} unreadable ({type(exc).__name__})"}
        configs.append(_flat(read_metadata(run_dir).get("config") or {}))
        rows.append({"run": run_dir.name, "path": str(run_dir), **verdict(summary), **_layer_summaries(run_dir)})
    keys = list(dict.fromkeys(k for c in configs for k in c))
    differ = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True, default=str) for c in configs}) > 1]
    for row, config in zip(rows, configs):
        row.update({k: config.get(k) for k in differ})
    df = _tidy(pd.DataFrame(rows))
    return df[["run", "path", *differ, *(c for c in df.columns if c not in ("run", "path", *differ))]]


def swept_factors(df: pd.DataFrame, known: set[str] | None = None) -> list[str]:
    """Override columns that take more than one value, in the order they were given."""
    fixed = {"job", "run", "path", "status", "error", "steps_done", "final_loss", "loss_avg", "final_accuracy", "val_loss", "val_accuracy",
             "diverged_step", "diverged_layer", "act_std_first", "act_std_last", "act_std_ratio",
             "grad_std_ratio_first_last", "max_rss_mb", "flags"}
    return [c for c in df.columns if c not in fixed and not c.startswith("flag_") and df[c].astype(str).nunique() > 1]


def load_sweep(path: str | Path, stats: bool = False) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """The sweep table (built if missing); with stats=True also every job's stats with the
    override columns attached, ready for one groupby."""
    sweep_dir = Path(path)
    table_path = sweep_dir / SWEEP_FILE
    table = pd.read_parquet(table_path) if table_path.exists() else sweep_table(sweep_dir)
    if not stats:
        return table
    factors = [c for c in swept_factors(table) if c in table]
    frames = []
    for _, job in table.iterrows():
        job_dir = inside(sweep_dir, str(job["path"]))  # job paths are relative to the sweep, and stay in it
        p = job_dir / STATS_DIR if job_dir is not None else None
        if p is not None and p.exists() and any(p.glob("*.parquet")):
            s = pd.read_parquet(p)
            for f in ["job", *factors]:
                s[f] = job[f]
            frames.append(s)
    return table, (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame())
