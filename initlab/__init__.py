"""initlab: weight-initialisation and normalisation studies in PyTorch."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("initlab")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from initlab.store import load_run  # noqa: E402
from initlab.sweep import load_sweep  # noqa: E402

__all__ = ["__version__", "load_run", "load_sweep"]
