"""Parquet writing and reading for a run directory.

stats.parquet, hist.parquet and metrics.parquet are folders of part files, written every
`flush_every` logged steps (and every METRICS_ROWS steps for metrics), so a killed run
keeps everything up to its last flush and memory stays bounded. pandas.read_parquet
reads each folder as one table. Every file carries the run's
resolved config and versions in its schema metadata under the key `initlab`.
"""

import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from initlab.rundir.layout import (
    COORD_FILE,
    HIST_DIR,
    METRICS_DIR,
    PROBE_FILE,
    STATS_DIR,
    SUMMARY_FILE,
    THEORY_FILE,
)
from initlab.rundir.safe import write_text

META_KEY = b"initlab"
METRICS_ROWS = 1000  # metric rows held in memory before a part is written, telemetry or not
LOSS_TAIL = 50  # summary final.loss_avg: the training loss over the last this many steps (one minibatch is noise)


def _jsonable(obj: Any) -> Any:
    """NaN/inf are results here: keep them readable (as strings) in strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    return obj


def write_json(path: Path, obj: Any) -> None:
    """JSON into `path`, atomically and never through a link (rundir/safe.py)."""
    write_text(path, json.dumps(_jsonable(obj), indent=2) + "\n")


class RunStore:
    """Buffers telemetry columns and writes them as parquet parts."""

    def __init__(self, run_dir: Path, metadata: dict[str, Any], flush_every: int = 50,
                 flush_seconds: float = math.inf) -> None:
        self.run_dir = Path(run_dir)
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self._last_flush = time.monotonic()
        self._meta = {META_KEY: json.dumps(_jsonable(metadata)).encode()}
        self._stats: list[dict[str, np.ndarray]] = []
        self._hist: list[dict[str, np.ndarray]] = []
        self._metrics: list[dict[str, Any]] = []
        self._parts = 0
        self._metric_parts = 0
        self.logged_steps = 0
        self.max_buffered = 0  # the most logged steps ever held in memory (bounded by flush_every)

    def add_stats(self, collected: tuple[dict, dict | None] | None) -> None:
        """Buffer one logged step's (stats, histogram) columns; flush every `flush_every`."""
        if collected is None:
            return
        stats, hist = collected
        self._stats.append(stats)
        self.logged_steps += 1
        if hist is not None:
            self._hist.append(hist)
        self.max_buffered = max(self.max_buffered, len(self._stats))
        if len(self._stats) >= self.flush_every:
            self.flush()

    def due(self, waiting: int = 0) -> bool:
        """Whether `flush_seconds` have passed since the last flush with something to write
        (`waiting`: rows the caller still holds): checked on every step, logged or not."""
        return bool(self._stats or self._metrics or waiting) and \
            time.monotonic() - self._last_flush >= self.flush_seconds

    def tick(self) -> None:
        """At a whole-step boundary: flush when `flush_seconds` have passed since the last
        flush, and step 0's rows at once, so a SIGKILL loses at most that window."""
        if self._stats and (self._parts == 0 or time.monotonic() - self._last_flush >= self.flush_seconds):
            self.flush()
        elif self._metrics and time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def add_metrics(self, row: dict[str, Any]) -> None:
        """One step's metrics; written with the next flush (or every METRICS_ROWS rows)."""
        self._metrics.append(row)
        if len(self._metrics) >= METRICS_ROWS:
            self._flush_metrics()

    def _write_table(self, folder: str, table: pa.Table, index: int) -> tuple[Path, Path]:
        """Write a part under a temporary dotfile name (readers skip dotfiles); returns
        (temporary, final) for `_publish`."""
        out = self.run_dir / folder
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".part-{index:05d}.tmp"
        try:
            pq.write_table(table.replace_schema_metadata({**(table.schema.metadata or {}), **self._meta}), tmp)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        return tmp, out / f"part-{index:05d}.parquet"

    @staticmethod
    def _publish(written: list[tuple[Path, Path]]) -> None:
        for tmp, final in written:
            tmp.replace(final)  # atomic, and needs no space: a full disk fails in the writes

    @staticmethod
    def _discard(written: list[tuple[Path, Path]]) -> None:
        for tmp, _ in written:
            tmp.unlink(missing_ok=True)

    def _metrics_part(self) -> tuple[Path, Path]:
        table = pa.Table.from_pandas(pd.DataFrame(self._metrics), preserve_index=False)
        return self._write_table(METRICS_DIR, table, self._metric_parts)

    def _stats_part(self, folder: str, buffer: list[dict[str, np.ndarray]]) -> tuple[Path, Path]:
        merged = {k: np.concatenate([b[k] for b in buffer]) for k in buffer[0]}
        return self._write_table(folder, pa.table(merged), self._parts)

    def _flush_metrics(self) -> None:
        if self._metrics:
            self._publish([self._metrics_part()])
            self._metric_parts += 1
            self._metrics = []

    @property
    def parts(self) -> int:
        return self._parts

    def flush(self) -> None:
        """Write what is buffered as the next part files; memory is released. The metrics,
        stats and histogram parts of one flush appear together or not at all (a full or
        read-only disk raises with nothing half-written), so they cover the same steps."""
        self._last_flush = time.monotonic()
        written: list[tuple[Path, Path]] = []
        try:
            if self._metrics:
                written.append(self._metrics_part())
            if self._stats:
                written.append(self._stats_part(STATS_DIR, self._stats))
                if self._hist:
                    written.append(self._stats_part(HIST_DIR, self._hist))
        except OSError:
            self._discard(written)
            raise
        self._publish(written)
        if self._metrics:
            self._metric_parts += 1
            self._metrics = []
        if self._stats:
            self._parts += 1
            self._stats, self._hist = [], []

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.run_dir / SUMMARY_FILE, summary)


@dataclass
class RunData:
    """A run's recorded results as pandas objects."""

    path: Path
    stats: pd.DataFrame
    hist: pd.DataFrame
    metrics: pd.DataFrame
    summary: dict[str, Any]
    config: dict[str, Any]
    probe: pd.DataFrame  # probe.seeds > 1: step-0 statistics of every seed (empty otherwise)
    coord: pd.DataFrame = field(default_factory=pd.DataFrame)  # experiment=coord_check's rows (empty otherwise)


def _what(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"


def readable_parts(path: Path) -> tuple[list[Path], dict[str, str]]:
    """A folder's part files whose footer parquet can open, and {file: what is wrong} for the rest
    (a part torn by a crash or a disk fault is named, never allowed to sink the run)."""
    good, bad = [], {}
    for f in sorted(path.glob("*.parquet")) if path.exists() else []:
        try:
            pq.ParquetFile(f).close()
            good.append(f)
        except (pa.ArrowException, OSError) as exc:
            bad[str(f)] = _what(exc)
    return good, bad


def _read_parts(path: Path) -> pd.DataFrame:
    """A folder's readable parts as one table. Each part is read whole on its own, so one whose
    pages are damaged behind an intact footer is skipped with a warning naming it, and the rest
    load; parts whose columns differ (a user's `w.log` keys that appear later in a run) are
    read under the union of their schemas."""
    files, _ = readable_parts(path)
    tables = []
    for f in files:
        try:
            tables.append(pq.read_table(f))
        except (pa.ArrowException, OSError) as exc:
            warnings.warn(f"skipped an unreadable part {f} ({_what(exc)}); the other parts are loaded", stacklevel=3)
    if not tables:
        return pd.DataFrame()
    return pa.concat_tables(tables, promote_options="permissive").to_pandas()


def bad_parts(run_dir: Path) -> dict[str, str]:
    """Every unreadable part file of a run directory, with what is wrong."""
    out: dict[str, str] = {}
    for folder in (STATS_DIR, HIST_DIR, METRICS_DIR):
        out.update(readable_parts(Path(run_dir) / folder)[1])
    return out


def read_stats(run_dir: Path) -> pd.DataFrame:
    """stats.parquet as one table, rows by step, kind and forward order; step-0 act/grad
    rows carry `theory_std` (the predicted std) where theory.parquet has it."""
    df = _read_parts(Path(run_dir) / STATS_DIR)
    if df.empty:
        return df
    theory_path = Path(run_dir) / THEORY_FILE
    if theory_path.exists():
        theory = pd.read_parquet(theory_path, columns=["step", "layer_idx", "kind", "theory_std"])
        df = df.merge(theory, on=["step", "layer_idx", "kind"], how="left")
    return df.sort_values(["step", "kind", "layer_idx", "param"], ignore_index=True)


def write_theory(run_dir: Path, theory: pd.DataFrame) -> Path:
    """theory.parquet: the predicted step-0 std per layer (columns step, layer_idx, kind, theory_std, ...)."""
    path = Path(run_dir) / THEORY_FILE
    theory.to_parquet(path, index=False)
    return path


def write_probe(run_dir: Path, per_draw: pd.DataFrame) -> Path:
    """probe.parquet: the step-0 statistics of every weight draw (init and seed columns)."""
    path = Path(run_dir) / PROBE_FILE
    per_draw.to_parquet(path, index=False)
    return path


def write_coord(run_dir: Path, table: pd.DataFrame, metadata: dict[str, Any] | None = None) -> Path:
    """coord.parquet: the coordinate check's rows (param, width, seed, step, layer, kind: l1, std,
    rms), the run's config and versions in its schema metadata as every parquet file of a run."""
    path = Path(run_dir) / COORD_FILE
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    if metadata is not None:
        arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}),
                                               META_KEY: json.dumps(_jsonable(metadata)).encode()})
    pq.write_table(arrow, path)
    return path


def read_coord(run_dir: Path) -> pd.DataFrame:
    """coord.parquet, or an empty table when the run made none."""
    path = Path(run_dir) / COORD_FILE
    return pd.read_parquet(path) if path.exists() else pd.DataFrame()


def read_hist(run_dir: Path) -> pd.DataFrame:
    """hist.parquet (long format: one row per non-empty bin)."""
    df = _read_parts(Path(run_dir) / HIST_DIR)
    return df.sort_values(["step", "kind", "layer_idx", "bin"], ignore_index=True) if len(df) else df


def read_metrics(run_dir: Path) -> pd.DataFrame:
    """metrics.parquet (a folder of parts) as one table, by step."""
    df = _read_parts(Path(run_dir) / METRICS_DIR)
    return df.sort_values("step", ignore_index=True) if len(df) else df


def read_probe(run_dir: Path) -> pd.DataFrame:
    """probe.parquet: step-0 statistics of each seed of the probe (empty without one)."""
    path = Path(run_dir) / PROBE_FILE
    return pd.read_parquet(path) if path.exists() else pd.DataFrame()


def read_metadata(run_dir: Path) -> dict[str, Any]:
    """The config and versions stored in the run's parquet metadata."""
    candidates = [*sorted((Path(run_dir) / METRICS_DIR).glob("*.parquet")),
                  *sorted((Path(run_dir) / STATS_DIR).glob("*.parquet")),
                  *([Path(run_dir) / COORD_FILE] if (Path(run_dir) / COORD_FILE).exists() else [])]
    for f in candidates:
        try:
            meta = pq.read_schema(f).metadata or {}
        except (pa.ArrowException, OSError):  # an unreadable part: bad_parts names it
            continue
        if META_KEY in meta:
            return json.loads(meta[META_KEY])
    return {}


def load_run(path: str | Path) -> RunData:
    """Everything a run recorded: stats, histograms, metrics, summary and config."""
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run directory at {run_dir}")
    metrics = read_metrics(run_dir)
    summary_path = run_dir / SUMMARY_FILE
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    meta = read_metadata(run_dir)
    return RunData(run_dir, read_stats(run_dir), read_hist(run_dir), metrics, summary, meta.get("config", {}),
                   read_probe(run_dir), read_coord(run_dir))
