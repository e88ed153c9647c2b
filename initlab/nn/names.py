"""Layer knowledge that tables and figures read by class name, without importing torch."""

# the weighted layers: their outputs are the depth axis of every per-layer figure and ratio
WEIGHTED_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d")
