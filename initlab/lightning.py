"""`from initlab.lightning import InitlabCallback`: the Lightning callback (initlab/record/lightning.py)."""

from initlab.record.lightning import InitlabCallback

__all__ = ["InitlabCallback"]
