"""DataFrames -> figures. Reads parquet-shaped tables only; never imports torch (or pyplot:
figures are drawn straight onto Agg canvases, no window manager, no global figure list)."""

from initlab.report.plots.run import plot_probe, plot_run, probe_spread, title_of
from initlab.report.plots.sweep import plot_sweep

__all__ = ["plot_probe", "plot_run", "plot_sweep", "probe_spread", "title_of"]
