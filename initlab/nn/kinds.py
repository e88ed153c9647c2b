"""Which layers are which: the one place that says what counts as weighted or a norm."""

from torch import nn

from initlab.nn.names import WEIGHTED_TYPES
from initlab.nn.norms import RMSNorm

WEIGHTED = tuple(getattr(nn, name) for name in WEIGHTED_TYPES)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
RMS_NORMS = (RMSNorm, *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))
NORMS = (*BATCH_NORMS, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
         *RMS_NORMS)
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
# Modules that only reshape: never tracked by telemetry.
RESHAPE = (nn.Flatten, nn.Unflatten, nn.Identity)


def is_leaf(module: nn.Module) -> bool:
    return not any(True for _ in module.children())
