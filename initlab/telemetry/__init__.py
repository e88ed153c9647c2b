"""Per-layer statistics of a training step, with one device->host transfer per logged step.

- `recorder`: hooks, call order, parameter snapshot (`Telemetry`)
- `reducers`: tensor -> row of statistics, CPU kernels or queued tensor ops (`CpuPath`: when the kernels pay)
- `kernels`: the numba kernels of the CPU path
- `hist`: the fixed histogram bins and binners
- `columns`: rows -> tidy columns
- `schedule`: the settings (`TelemetryConfig`) and which steps are logged
- `ranks`: the ranks' rows of a step merged under DDP, one collective
- `formats`: what fp16, bf16, e4m3 and e5m2 would flush, hold as subnormals or overflow (`telemetry.formats`)
"""

from initlab.telemetry.columns import KINDS, PARAM_KINDS, Slot, first_nonfinite
from initlab.telemetry.hist import (
    Binner,
    HistSpec,
    SampleStage,
    hist_codes,
    hist_lut,
    sample_stride,
)
from initlab.telemetry.recorder import Telemetry, tracked_modules
from initlab.telemetry.reducers import (
    CpuPath,
    CpuReducer,
    DeadRegion,
    dead_region,
    group_stats,
    param_rows,
    tensor_stats,
)
from initlab.telemetry.schedule import Schedule, TelemetryConfig
from initlab.telemetry.stats import STATS

__all__ = [
    "KINDS", "PARAM_KINDS", "STATS", "Binner", "CpuPath", "CpuReducer", "DeadRegion", "HistSpec", "SampleStage",
    "Schedule", "Slot", "Telemetry", "TelemetryConfig", "dead_region", "first_nonfinite", "group_stats",
    "hist_codes", "hist_lut", "param_rows", "sample_stride", "tensor_stats", "tracked_modules",
]
