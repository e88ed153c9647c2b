"""probe.seeds=N: the step-0 picture over N weight draws.

One run's step 0 is one draw of the weights; at depth and finite width a single draw can
sit well off the expectation. The probe rebuilds and re-initialises the model for seeds
seed .. seed+N-1, runs step 0's batch forward and backward once under the same
telemetry, and keeps every draw's per-layer statistics (probe.parquet) and their spread
(mean, sd, min, max per layer; summary.json `probe`). Weights change, the batch does not.
"""

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import pandas as pd
import torch
from torch import nn

from initlab.diagnose import depth_ratio
from initlab.telemetry import TelemetryConfig
from initlab.train import forward_backward
from initlab.watcher import Watch


def probe_seeds(make_model: Callable[[int], nn.Module], batch: tuple[torch.Tensor, torch.Tensor],
                seeds: Sequence[int], tel_cfg: TelemetryConfig, device: torch.device) -> pd.DataFrame:
    """Step-0 statistics (act, grad, weight, weight_grad rows) of each seed's model: one
    long table with a `seed` column. `make_model(seed)` builds and initialises on the CPU."""
    x, y = batch
    frames = []
    for seed in seeds:
        model = make_model(seed).to(device).train()
        w = Watch(model, telemetry=replace(tel_cfg, hist=None, enabled=True))  # in memory
        with w.step(0, force=True):
            forward_backward(model, x, y)
        w.flush()
        if w.collected:
            frames.append(pd.DataFrame(w.collected[0][0]).assign(seed=seed))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def headline(per_seed: pd.DataFrame) -> dict[str, object]:
    """summary.json's `probe`: the seeds, and the depth ratios the diagnosis reads
    (activations last/first, gradients first/last) as mean, sd, min and max over seeds."""
    out: dict[str, object] = {"seeds": sorted(int(s) for s in per_seed["seed"].unique())}
    for kind, key in (("act", "act_std_last_over_first"), ("grad", "grad_std_first_over_last")):
        ratios = np.array([depth_ratio(g, kind) for _, g in per_seed.groupby("seed")], dtype=float)
        ratios = ratios[np.isfinite(ratios)]
        if len(ratios):
            out[key] = {"mean": float(ratios.mean()), "sd": float(ratios.std(ddof=1)) if len(ratios) > 1 else 0.0,
                        "min": float(ratios.min()), "max": float(ratios.max()), "n": len(ratios)}
    return out
