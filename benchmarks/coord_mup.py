"""initlab's coordinate check beside microsoft/mup's own `get_coord_data`, on the same MLP,
widths, steps, seeds, batch, optimizer and learning rate: the per-layer slopes of log2 mean
|output| against log2 width from each, how far apart they are, and the wall time of both.

mup records each module's mean |output| only; initlab records its output, its ΔW·x and its
weight (l1, std, rms). Needs `pip install mup` (the `bench` extra)."""

import argparse
import time

import numpy as np
import pandas as pd
import torch
from torch import nn

from benchmarks.common import write_table
from initlab.width import coord_check
from initlab.width.coord import fit_slopes

N_IN, CLASSES, BATCH = 256, 10, 64


def plain_mlp(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(N_IN, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, CLASSES))


def mup_models(widths: list[int], base_width: int) -> dict[int, object]:
    from mup import MuReadout, set_base_shapes

    def make(width: int) -> nn.Module:
        return nn.Sequential(nn.Linear(N_IN, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                             MuReadout(width, CLASSES))

    def lazy(width: int):
        def build() -> nn.Module:
            model = make(width)
            set_base_shapes(model, make(base_width), delta=make(base_width * 2))
            return model
        return build

    return {w: lazy(w) for w in widths}


def mup_slopes(df: pd.DataFrame, seeds: int) -> pd.DataFrame:
    """mup's table (width, module, t, l1; rows in seed order) as initlab's slope table."""
    d = df[df["module"] != ""].copy()  # the whole model's output: not a layer
    d["seed"] = d.groupby(["width", "module", "t"]).cumcount() % seeds
    d = d.rename(columns={"module": "layer"}).assign(param="mup", kind="act", step=d["t"] - 1, module_type="",
                                                    layer_idx=d["module"].astype(int))
    return fit_slopes(d[["param", "width", "seed", "step", "layer", "layer_idx", "module_type", "kind", "l1"]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="3 widths, 3 steps, 2 seeds, 1 round")
    args = parser.parse_args()
    from mup.coord_check import get_coord_data

    widths, steps, seeds, rounds = ([64, 128, 256], 3, 2, 1) if args.quick else \
        ([64, 128, 256, 512, 1024, 2048], 10, 3, args.rounds)
    lr = 0.01
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(BATCH, N_IN, generator=g), torch.randint(0, CLASSES, (BATCH,), generator=g))
    times: dict[str, list[float]] = {"mup": [], "initlab": [], "initlab, act only": []}
    result = None
    for r in range(rounds):
        for who in list(times) if r % 2 == 0 else list(times)[::-1]:
            t0 = time.perf_counter()
            if who == "mup":
                mdf = get_coord_data(mup_models(widths, widths[0]), [batch], optimizer="adam", lr=lr, mup=True,
                                     nsteps=steps, nseeds=seeds, cuda=False, show_progress=False)
            else:
                out = coord_check(plain_mlp, widths, batch, optimizer="adam", lr=lr, param="mup",
                                  base_width=widths[0], steps=steps, seeds=seeds,
                                  kinds=("act",) if who.endswith("only") else ("act", "update", "weight"))
                if who == "initlab":
                    result = out
            times[who].append(time.perf_counter() - t0)
    assert result is not None
    ours_full = result.slopes[result.slopes["kind"] == "act"].set_index(["layer", "step"])
    theirs_full = mup_slopes(mdf, seeds).set_index(["layer", "step"])
    ours, theirs = ours_full["slope"], theirs_full["slope"]
    both = pd.concat({"initlab": ours, "mup": theirs}, axis=1).dropna()
    gap = (both["initlab"] - both["mup"]).abs()
    spread = pd.concat([ours_full["slope_sd"], theirs_full["slope_sd"]]).median()
    rows = []
    for layer, d in both.groupby(level=0, sort=False):
        name = {"0": "input Linear", "1": "ReLU", "2": "hidden Linear", "3": "ReLU", "4": "readout"}.get(layer, layer)
        later = d.xs(slice(1, None), level=1, drop_level=False) if len(d) > 1 else d
        rows.append([f"`{layer}` ({name})", f"{d['initlab'].iloc[0]:+.3f} / {d['mup'].iloc[0]:+.3f}",
                     f"{later['initlab'].abs().max():.3f} / {later['mup'].abs().max():.3f}",
                     f"{(d['initlab'] - d['mup']).abs().max():.3f}"])
    rows.append(["every layer and step", "", "", f"{gap.max():.3f} (median {gap.median():.3f}; the slopes' sd over "
                 f"seeds: median {spread:.3f})"])
    med = {k: float(np.median(v)) for k, v in times.items()}
    rows.append(["wall time, act, update and weight rows (median of rounds)", f"initlab {med['initlab']:.2f} s",
                 f"mup {med['mup']:.2f} s", f"initlab/mup {med['initlab'] / med['mup']:.2f}x"])
    rows.append(["wall time, the same job as mup's (act rows only)", f"initlab {med['initlab, act only']:.2f} s",
                 f"mup {med['mup']:.2f} s", f"initlab/mup {med['initlab, act only'] / med['mup']:.2f}x"])
    write_table(
        "coord_mup_cpu" + ("_quick" if args.quick else ""),
        "The coordinate check: initlab beside microsoft/mup's get_coord_data (μP, Adam)",
        ["layer", "slope at init, initlab / mup", "max |slope| after, initlab / mup", "max |difference|"],
        rows,
        [f"MLP {N_IN} -> w -> w -> {CLASSES} (ReLU), widths {widths}, base width {widths[0]}, Adam lr {lr}, "
         f"{steps} steps on one fixed batch of {BATCH}, {seeds} seeds; mup: MuReadout + set_base_shapes + MuAdam; "
         "initlab: plain nn.Linear layers + initlab.parametrize (inside coord_check).",
         "Slopes: least squares of log2 mean |output| against log2 width per seed, then the mean over seeds, per "
         "layer and step; 'after' is every step after the first update. Step 0 is the forward at init (mup's t=1).",
         "The weight draws differ (mup seeds each seed's sequence of widths once, initlab each model), so the "
         "slopes cannot agree bit for bit: the last row puts their difference beside their spread over seeds.",
         f"Wall time: the whole job ({len(widths)} widths x {seeds} seeds x {steps} steps) in this process, "
         f"{rounds} rounds, the order reversed every other round; mup records each module's act l1, initlab l1, std "
         "and rms of act (and of update and weight in the first row). Seeds run one after another in both."],
    )


if __name__ == "__main__":
    main()
