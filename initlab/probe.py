"""probe.seeds=N: the step-0 picture over N weight draws.

One run's step 0 is one draw of the weights; at depth and finite width a single draw can
sit well off the expectation. The probe rebuilds and re-initialises the model for seeds
seed .. seed+N-1 (under each scheme of probe.inits, or the run's own), runs step 0's batch
forward and backward once under the same telemetry, and keeps every draw's per-layer
statistics (probe.parquet) and their spread (mean, sd, min, max per layer; summary.json
`probe`). Weights change, the batch does not.

Two paths give the same rows: the stacked one (`telemetry.stacked`: all draws in one
vmapped pass, the default) and one draw at a time (the reference, and the fallback for
models the stacked path cannot take; `probe.stacked=false` asks for it).
"""

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import pandas as pd
import torch
from torch import nn

from initlab.diagnose import depth_ratio
from initlab.record.watcher import Watch
from initlab.signals import Watchdog
from initlab.telemetry import TelemetryConfig
from initlab.telemetry.reducers import CpuPath
from initlab.telemetry.stacked import NotStackable, stacked_step0
from initlab.train import forward_backward

Draw = tuple[str, int]  # (init scheme, seed)


def probe_stacked(make_model: Callable[[str, int], nn.Module], batch: tuple[torch.Tensor, torch.Tensor],
                  draws: Sequence[Draw], tel_cfg: TelemetryConfig, device: torch.device) -> pd.DataFrame:
    """probe_draws' table from one vmapped pass over the stacked draws (`tel_cfg` as probe()
    prepares it); raises NotStackable (saying why) for the models it cannot take."""
    x, y = batch
    tables, _ = stacked_step0(lambda d: make_model(*d).to(device).train(), list(draws), x, y, tel_cfg)
    rows = [len(t["step"]) for t in tables]  # one frame from the joined columns, not N frames concatenated
    cols = {k: np.concatenate([t[k] for t in tables]) for k in tables[0]}
    cols["init"] = np.repeat(np.array([i for i, _ in draws], dtype=object), rows)
    cols["seed"] = np.repeat(np.array([s for _, s in draws], dtype=np.int64), rows)
    return pd.DataFrame(cols)


def probe_draws(make_model: Callable[[str, int], nn.Module], batch: tuple[torch.Tensor, torch.Tensor],
                draws: Sequence[Draw], tel_cfg: TelemetryConfig, device: torch.device) -> pd.DataFrame:
    """Step-0 statistics (act, grad, weight, weight_grad rows) of each draw's model, one at
    a time (the reference): one long table with `init` and `seed` columns.
    `make_model(init, seed)` builds and initialises on the CPU; `tel_cfg` as probe() prepares it."""
    x, y = batch
    frames = []
    path = CpuPath(len(draws))  # one decision for all the draws: each is one logged step
    dropped = Watchdog()
    for init, seed in draws:
        dropped.check()  # a Ctrl-C Python dropped (e.g. inside numba's loading) still stops the probe
        model = make_model(init, seed).to(device).train()
        w = Watch(model, telemetry=tel_cfg, cpu_path=path)  # in memory
        with w.step(0, force=True):
            forward_backward(model, x, y)
        w.flush()
        if w.collected:
            frames.append(pd.DataFrame(w.collected[0][0]).assign(init=init, seed=seed))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def probe(make_model: Callable[[str, int], nn.Module], batch: tuple[torch.Tensor, torch.Tensor],
          draws: Sequence[Draw], tel_cfg: TelemetryConfig, device: torch.device, stacked: bool = True
          ) -> tuple[pd.DataFrame, str]:
    """The probe's table, and the path that made it: 'stacked', or 'per draw' (asked for,
    or the fallback, with the reason). Histograms are not probed; every other kind is."""
    tel_cfg = replace(tel_cfg, hist=None, enabled=True)
    if stacked:
        try:
            return probe_stacked(make_model, batch, draws, tel_cfg, device), "stacked"
        except NotStackable as exc:
            how = f"per draw: the stacked path cannot take this model ({exc})"
    else:
        how = "per draw (probe.stacked=false)"
    return probe_draws(make_model, batch, draws, tel_cfg, device), how


def _ratios(per_seed: pd.DataFrame) -> dict[str, object]:
    out: dict[str, object] = {}
    for kind, key in (("act", "act_std_last_over_first"), ("grad", "grad_std_first_over_last")):
        rows = per_seed[per_seed["kind"].to_numpy() == kind]  # one split, not one per draw
        ratios = np.array([depth_ratio(g, kind) for _, g in rows.groupby("seed")], dtype=float)
        lost = int(np.isinf(ratios).sum())  # draws whose values went non-finite: no ratio, counted
        ratios = ratios[np.isfinite(ratios)]
        if len(ratios):
            out[key] = {"mean": float(ratios.mean()), "sd": float(ratios.std(ddof=1)) if len(ratios) > 1 else 0.0,
                        "min": float(ratios.min()), "max": float(ratios.max()), "n": len(ratios)}
        if lost:
            out.setdefault(key, {})["nonfinite_draws"] = lost
    return out


def headline(per_draw: pd.DataFrame) -> dict[str, object]:
    """summary.json's `probe`: the seeds, and the depth ratios the diagnosis reads
    (activations last/first, gradients first/last) as mean, sd, min and max over seeds;
    with several init schemes, those ratios per scheme under `inits`."""
    out: dict[str, object] = {"seeds": sorted(int(s) for s in per_draw["seed"].unique())}
    inits = list(dict.fromkeys(per_draw["init"])) if "init" in per_draw else []
    if len(inits) > 1:
        out["inits"] = {name: _ratios(per_draw[per_draw["init"] == name]) for name in inits}
    else:
        out.update(_ratios(per_draw))
    return out
