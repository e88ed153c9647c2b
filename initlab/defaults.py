"""The shipped YAML (conf/, installed as `initlab.conf`) read as plain dicts: the library's
defaults are the CLI's, written once, in conf/."""

import functools
from collections.abc import Mapping
from importlib.resources import files
from typing import Any

from initlab.errors import InitlabError


@functools.cache
def _load(group: str, name: str) -> dict[str, Any]:
    from omegaconf import OmegaConf

    path = files("initlab.conf") / group / f"{name}.yaml"
    if not path.is_file():
        choices = sorted(p.name[:-5] for p in (files("initlab.conf") / group).iterdir() if p.name.endswith(".yaml"))
        raise InitlabError(f"{group}={name!r} is invalid: choose from {', '.join(choices)}")
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    out: dict[str, Any] = {}
    for parent in raw.pop("defaults", []) or []:  # this group's own defaults list: [base, _self_]
        if parent != "_self_":
            out = _merge(out, _load(group, parent))
    return _merge(out, raw)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def preset(group: str, name: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """conf/GROUP/NAME.yaml as a dict (a fresh copy), with `overrides` merged in."""
    return _merge(_load(group, name), dict(overrides or {}))
