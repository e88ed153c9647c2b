"""Checks of one config value each: a bad value raises ConfigError naming the key, the value and
what is accepted; a key the config does not have is skipped. The app validates with these, and
each model family registers the checks of its own keys with them (initlab/models/)."""

import math
from collections.abc import Iterable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from initlab.errors import ConfigError

MISSING = object()


def get_value(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key, default=MISSING)
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    return value


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_int(cfg: DictConfig, key: str, lo: int, what: str = "") -> None:
    v = get_value(cfg, key)
    if v is MISSING:
        return
    if not is_int(v) or v < lo:
        raise ConfigError(key, v, what or f"expected an integer >= {lo}")


def check_num(cfg: DictConfig, key: str, lo: float, *, strict: bool, hi: float | None = None) -> None:
    v = get_value(cfg, key)
    if v is MISSING:
        return
    ok = is_num(v) and math.isfinite(v) and (v > lo if strict else v >= lo) and (hi is None or v < hi)
    if not ok:
        bound = f"> {lo}" if strict else f">= {lo}"
        if hi is not None:
            bound += f" and < {hi}"
        raise ConfigError(key, v, f"expected a finite number {bound}")


def check_choice(cfg: DictConfig, key: str, choices: Iterable[str]) -> None:
    v = get_value(cfg, key)
    if v is MISSING:
        return
    choices = list(choices)
    if v not in choices:
        raise ConfigError(key, v, f"choose from {', '.join(choices)}")


def check_bool(cfg: DictConfig, key: str) -> None:
    v = get_value(cfg, key)
    if v is not MISSING and not isinstance(v, bool):
        raise ConfigError(key, v, "expected true or false")


def check_like_default(cfg: DictConfig, group: str, defaults: dict[str, Any]) -> None:
    """Each key of `group` has the kind of value its option's own default has (an integer where
    the YAML has 4, a list where it has [8, 16, 32]): the check of a model's keys that needs
    none of the model's code, so it runs before torch loads; ranges are the family's checks."""
    kinds = ((bool, lambda v: isinstance(v, bool), "true or false"), (int, is_int, "an integer"),
             (float, is_num, "a number"), (list, lambda v: isinstance(v, list), "a list"))
    for key, default in defaults.items():
        v = get_value(cfg, f"{group}.{key}")
        if v is MISSING or v is None:
            continue
        for kind, ok, what in kinds:
            if isinstance(default, kind):
                if not ok(v):
                    raise ConfigError(f"{group}.{key}", v, f"expected {what}, as {group}={defaults.get('name')} "
                                      f"takes (its default: {default})")
                break


def check_int_list(cfg: DictConfig, key: str, lengths: tuple[int, ...], what: str) -> None:
    v = get_value(cfg, key)
    if v is MISSING:
        return
    if not isinstance(v, list) or len(v) not in lengths or not all(is_int(x) and x >= 1 for x in v):
        raise ConfigError(key, v, what)


def headline_problem(spec: Any, columns: list[str] | None = None) -> str | None:
    """What is wrong with a sweep's `headline` declaration (report/plots/headline.py draws it), in one
    line, or None; `columns`: the sweep table's."""
    if spec is None:
        return None
    if isinstance(spec, list):  # several figures: headline.png, headline_2.png, ...
        return next((why for s in spec if (why := headline_problem(s, columns))), None) if spec else "an empty list"
    if not isinstance(spec, dict) or not isinstance(spec.get("title"), str) or sum(k in spec for k in ("x", "layers")) != 1:
        return "expected {title: the claim, x: a swept key, y: a sweep.parquet column, lines: a swept key} " \
               "or {title, layers: {kind, stat}, lines}"
    if "x" in spec and not isinstance(spec.get("y"), str):
        return "headline.x needs headline.y: the sweep.parquet column to draw against it (val_loss, loss_avg, ...)"
    if "layers" in spec and not (isinstance(spec["layers"], dict) and {"kind", "stat"} <= set(spec["layers"])):
        return "headline.layers: expected {kind: act|grad|weight|weight_grad|update, stat: std|norm|mean, param: weight}"
    needed = [spec.get(k) for k in ("x", "y", "lines", "panels") if spec.get(k) is not None]
    missing = [c for c in needed if columns is not None and c not in columns]
    return f"headline names {', '.join(missing)}, which the sweep table has no column for" if missing else None
