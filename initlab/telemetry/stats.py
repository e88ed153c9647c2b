"""The statistics initlab records: one declared row each. Every path that computes them (the
numba kernels, the tensor-op path, the stacked probe) returns them in `STATS` order; the
columns, the parquet dtypes and the TensorBoard export read this table. Adding a statistic is
one row here plus its lines in each path; tests/test_stats_table.py fails if a path misses it.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Stat:
    name: str
    meaning: str
    integer: bool = False  # stored as int64 (counts)
    reduced: bool = True  # computed by the reducers, in STATS order; False: derived by telemetry.columns
    params: bool = True  # recorded for parameter kinds (weight, weight_grad, update); False: NaN there


TABLE: tuple[Stat, ...] = (
    Stat("mean", "mean of all elements"),
    Stat("std", "standard deviation of all elements (unbiased)"),
    Stat("min", "smallest element", params=False),
    Stat("max", "largest element", params=False),
    Stat("zero_frac", "fraction exactly zero", params=False),
    Stat("dead_frac", "activations: fraction in the dead or saturated region of the activation table", params=False),
    Stat("dead_units", "activations: fraction of units (channels) dead for the whole batch", params=False),
    Stat("nonfinite", "count of NaN and inf elements", integer=True),
    Stat("numel", "number of elements", integer=True),
    Stat("absmax", "largest magnitude, from min and max", reduced=False, params=False),
    Stat("norm", "2-norm, from mean, std and numel", reduced=False),
    Stat("ratio", "weight_grad or update std over the weight's std (after the step)", reduced=False),
)
BY_NAME = {s.name: s for s in TABLE}
STATS = tuple(s.name for s in TABLE if s.reduced)  # the reducers' row, in order
DERIVED = tuple(s.name for s in TABLE if not s.reduced)
INTEGER = frozenset(s.name for s in TABLE if s.integer)
NOT_FOR_PARAMS = tuple(s.name for s in TABLE if s.reduced and not s.params)  # NaN in a parameter's row
