"""`initlab-report DIR --tensorboard [LOGDIR]`: a run or a sweep as TensorBoard event files,
after the fact (training pays nothing), through TensorBoard's own writer.

- metrics (loss, accuracy, lr, held-out loss and accuracy, ...): scalars `metrics/NAME`;
- per layer: activation and gradient `std`, `mean`, `dead_frac` as `LAYER/KIND/STAT`, and
  the weights' update:data ratio as `LAYER/update/ratio`;
- every recorded histogram as `LAYER/KIND`, written with `add_histogram_raw` from the stored
  counts: the buckets are the run's fixed bins (no re-binning; TensorBoard's own binning
  moves with every step's range). TensorBoard needs a histogram's sum and sum of squares:
  they are the tensor's mean and std scaled to the sample size (the histogram bins a strided
  sample of at most `telemetry.hist.sample` elements; every other statistic uses all of them).
- a sweep: one TensorBoard run per job, named by its overrides (`bn=true,init=kaiming`), so
  TensorBoard's run selector compares them.
"""

from pathlib import Path

import numpy as np
import pandas as pd

from initlab.errors import InitlabError
from initlab.rundir.store import SUMMARY_FILE, load_run, read_metadata

LAYER_STATS = {"act": ("std", "mean", "dead_frac"), "grad": ("std", "mean")}
BIG = float(np.finfo(np.float64).max)  # TensorBoard's own last bucket limit (DBL_MAX), for +inf


def _writer(logdir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # torch.utils.tensorboard imports the tensorboard package
        raise InitlabError("TensorBoard export needs the tensorboard package: "
                           "pip install 'initlab[tensorboard]'") from exc
    return SummaryWriter(log_dir=str(logdir))


def _edges(run_dir: Path, hist: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) of every bin of the run's layout, from its recorded settings; checked
    against the bins the table holds."""
    from initlab.telemetry.hist import HistSpec

    spec_cfg = read_metadata(run_dir).get("hist") or {}
    spec = HistSpec(**{k: spec_cfg[k] for k in ("min_abs", "max_abs", "bins_per_decade", "sample") if k in spec_cfg})
    lo, hi = spec.bounds()
    b = hist["bin"].to_numpy()
    if b.max() >= len(lo) or not (np.allclose(lo[b], hist["lo"]) and np.allclose(hi[b], hist["hi"])):
        raise InitlabError(f"{run_dir}: the histogram bins do not match the run's recorded layout")
    return lo, hi


def _histograms(writer, run_dir: Path, hist: pd.DataFrame, stats: pd.DataFrame) -> int:
    lo, hi = _edges(run_dir, hist)
    moments = stats[stats["kind"].isin(["act", "grad"])].set_index(["step", "layer", "kind"])[["mean", "std", "min",
                                                                                            "max"]]
    written = 0
    for (step, layer, kind), rows in hist.groupby(["step", "layer", "kind"], sort=True):
        first, last = int(rows["bin"].min()), int(rows["bin"].max())
        counts = np.zeros(last - first + 1)
        counts[rows["bin"].to_numpy() - first] = rows["count"].to_numpy()
        limits = np.where(np.isposinf(hi[first:last + 1]), BIG, hi[first:last + 1])
        m = moments.loc[(step, layer, kind)] if (step, layer, kind) in moments.index else None
        num = float(counts.sum())
        mean, std = (float(m["mean"]), float(m["std"])) if m is not None else (0.0, 0.0)
        low = lo[first] if np.isfinite(lo[first]) else (float(m["min"]) if m is not None else -BIG)
        high = float(m["max"]) if m is not None and np.isfinite(m["max"]) else float(limits[-1])
        writer.add_histogram_raw(f"{layer}/{kind}", min=float(low), max=high, num=num, sum=mean * num,
                                 sum_squares=(std ** 2 + mean ** 2) * num, bucket_limits=limits.tolist(),
                                 bucket_counts=counts.tolist(), global_step=int(step))
        written += 1
    return written


def export_run(run_dir: Path, logdir: Path) -> dict[str, int]:
    """One run's metrics, per-layer statistics and histograms into `logdir`; how many of each."""
    run = load_run(run_dir)
    if run.stats.empty and run.metrics.empty:
        raise InitlabError(f"{run_dir}: nothing to export, the run recorded no readable statistics or metrics")
    writer = _writer(logdir)
    n = {"scalars": 0, "histograms": 0}
    try:
        for col in run.metrics.columns:
            if col == "step" or not pd.api.types.is_numeric_dtype(run.metrics[col]):
                continue
            for step, value in run.metrics[["step", col]].dropna().itertuples(index=False):
                writer.add_scalar(f"metrics/{col}", float(value), int(step))
                n["scalars"] += 1
        s = run.stats
        for kind, names in LAYER_STATS.items():
            for row in s[s["kind"] == kind].itertuples(index=False):
                for stat in names:
                    value = getattr(row, stat)
                    # NaN is "not recorded" (dead_frac of a conv) unless the layer held non-finite values
                    if value == value or row.nonfinite != 0:
                        writer.add_scalar(f"{row.layer}/{kind}/{stat}", float(value), int(row.step))
                        n["scalars"] += 1
        if "param" in s:
            for row in s[(s["kind"] == "update") & (s["param"] == "weight")].itertuples(index=False):
                if row.ratio == row.ratio:
                    writer.add_scalar(f"{row.layer}/update/ratio", float(row.ratio), int(row.step))
                    n["scalars"] += 1
        if not run.hist.empty:
            n["histograms"] = _histograms(writer, run_dir, run.hist, s)
    finally:
        writer.close()
    return n


def export(path: Path, logdir: Path) -> list[tuple[Path, dict[str, int]]]:
    """A run directory into `logdir`, or a sweep: each job into `logdir/OVERRIDES`."""
    from initlab.rundir.sweep_table import is_sweep_dir, job_dirs, overrides

    if not is_sweep_dir(path):
        return [(logdir, export_run(path, logdir))]
    jobs = [j for j in job_dirs(path) if (j / SUMMARY_FILE).exists() or (j / "metrics.parquet").exists()]
    given = [overrides(j) for j in jobs]
    swept = [k for k in dict.fromkeys(k for o in given for k in o) if len({str(o.get(k)) for o in given}) > 1]
    out = []
    for job, o in zip(jobs, given):
        name = ",".join(f"{k}={o.get(k)}" for k in swept) or job.name  # what tells the jobs apart
        target = logdir / name.replace("/", "_")
        out.append((target, export_run(job, target)))
    return out
