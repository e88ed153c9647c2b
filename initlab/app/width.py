"""The CLI's width stages: `param=ntk|mup` applied to the zoo model (its width knob gives the
base model), and `coord.run=true` (experiment=coord_check) through `initlab.coord_check`."""

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from initlab.defaults import preset
from initlab.errors import ConfigError
from initlab.models.base import WIDTHS, WidthKnob
from initlab.rundir.layout import RunLayout
from initlab.rundir.store import write_coord
from initlab.width import coord_check, parametrize
from initlab.width.coord import CoordResult, shapes_only
from initlab.width.parametrize import describe_groups

log = logging.getLogger("initlab")


def knob(model_name: str, why: str) -> WidthKnob:
    """The model's width knob, or the one-line error that points at the library route."""
    if model_name not in WIDTHS:
        raise ConfigError("model", model_name, f"{why} needs a model with a width knob ({', '.join(sorted(WIDTHS))}); "
                          f"for model={model_name}, call initlab.parametrize(model, 'mup', base=...) on it in your own "
                          "script (docs: width)")
    return WIDTHS[model_name]


def base_width(cfg: DictConfig, mcfg: dict[str, Any], k: WidthKnob) -> float:
    """param.base_width, or the model's shipped width."""
    given = cfg.param.base_width
    return float(given) if given is not None else float(k.get(preset("model", mcfg["name"])))


def parametrised(cfg: DictConfig, model: torch.nn.Module, mcfg: dict[str, Any], ocfg: dict[str, Any],
                 build: Callable[[dict[str, Any]], torch.nn.Module]) -> tuple[list[dict[str, Any]] | None, dict[str, Any]]:
    """param=sp as given (nothing built, nothing drawn: bit-identical to no param group); else
    the base model built at param.base_width and the parameter groups `parametrize` returns.
    Returns (groups or None, what summary.json records)."""
    p = cfg.param
    if p.name == "sp" and p.depth == "none" and not p.readout_zero:
        return None, {"name": "sp"}
    k = knob(mcfg["name"], f"param={p.name}")
    width, base = float(k.get(mcfg)), base_width(cfg, mcfg, k)
    base_model, other = shapes_only(build, k.set(mcfg, base)), shapes_only(build, k.set(mcfg, 2 * base))
    groups = parametrize(model, p.name, base_model, optimizer=ocfg["name"], lr=float(ocfg["lr"]),
                         weight_decay=float(ocfg.get("weight_decay", 0.0)), readout_zero=bool(p.readout_zero),
                         depth=p.depth, delta=other)
    described = describe_groups(groups)
    for g in described:
        log.info("param   %s %-6s %3d tensors: lr %.4g (x%.4g)%s", p.name, g["role"], len(g["names"]), g["lr"],
                 g["lr_mult"], f", eps {g['eps']:.3g}" if "eps" in g else "")
    return groups, {"name": p.name, "width": width, "base_width": base, "width_mult": width / base,
                    "depth": p.depth, "readout_zero": bool(p.readout_zero), "groups": described}


def run_coord(cfg: DictConfig, run_dir: Path, mcfg: dict[str, Any], ocfg: dict[str, Any],
              make: Callable[[dict[str, Any]], torch.nn.Module], batch: tuple[torch.Tensor, torch.Tensor],
              device: torch.device, meta: dict[str, Any]) -> dict[str, Any]:
    """experiment=coord_check: every width x param x seed, coord.parquet, the figure, the verdict."""
    c = OmegaConf.to_container(cfg.coord, resolve=True)
    k = knob(mcfg["name"], "the coordinate check")
    widths = c["widths"]
    base = cfg.param.base_width if cfg.param.base_width is not None else min(widths)
    result = coord_check(lambda w: make(k.set(mcfg, w)), widths, batch, optimizer=ocfg["name"],
                         lr=float(ocfg["lr"]), param=c["params"], base_width=base, steps=int(c["steps"]),
                         seeds=int(c["seeds"]), weight_decay=float(ocfg.get("weight_decay", 0.0)),
                         tolerance=float(c["tolerance"]), readout_zero=bool(cfg.param.readout_zero), device=device,
                         progress=lambda what: log.info("coord   %s", what))
    write_coord(run_dir, result.table, meta)
    if cfg.plots:
        result.plot(RunLayout(run_dir).plots / "coord_check", cfg.plot_format)
    print_verdict(result)
    act = result.slopes[result.slopes["kind"] == "act"]
    return {"widths": list(widths), "base_width": base, "params": list(c["params"]), "steps": int(c["steps"]),
            "seeds": int(c["seeds"]), "verdict": result.verdict,
            "slopes": act[["param", "layer", "layer_idx", "step", "slope", "slope_sd"]].to_dict("records")}


def print_verdict(result: CoordResult) -> None:
    """The verdict table, where the user is looking."""
    table = Table(title=f"coordinate check (|slope| <= {result.tolerance:g}: flat)", title_justify="left")
    for col in ("param", "verdict", "max |slope|", "drifting layers (slope, from step)"):
        table.add_column(col)
    for param, v in result.verdict.items():
        drift = ", ".join(f"{d['layer']} ({d['slope']:+.2f}, {d['from_step']})" for d in v["drifting"]) or "-"
        table.add_row(param, v["verdict"], f"{v['max_abs_slope']:.2f}", drift)
    Console(stderr=True).print(table)
