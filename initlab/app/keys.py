"""Every setting the shipped YAML defines, so a misspelt command-line key gets one line that
names the keys nearby, before Hydra composes (Hydra's own answer is a multi-line "not in
struct" and exit 1). Keys that exist in some group option but not the chosen one are left
to Hydra, which names the option."""

import difflib
import functools
from importlib.resources import files
from typing import Any

from initlab.errors import InitlabError

_GLOBAL = "# @package _global_"


def _paths(node: Any, prefix: str) -> set[str]:
    out = {prefix} if prefix else set()
    if isinstance(node, dict):
        for k, v in node.items():
            if k != "defaults":
                out |= _paths(v, f"{prefix}.{k}" if prefix else str(k))
    return out


@functools.cache
def known_keys() -> frozenset[str]:
    """Dotted paths of every node in conf/ (config.yaml, then each group's files under the
    group's name, or at the top for `@package _global_` files); group names included."""
    import yaml

    conf = files("initlab.conf")
    keys = _paths(yaml.safe_load((conf / "config.yaml").read_text()), "")
    for group in conf.iterdir():
        if not group.is_dir() or group.name in ("hydra", "__pycache__"):
            continue
        keys.add(group.name)
        for f in group.iterdir():
            if f.name.endswith(".yaml"):
                text = f.read_text()
                keys |= _paths(yaml.safe_load(text) or {}, "" if text.startswith(_GLOBAL) else group.name)
    return frozenset(k for k in keys if k.split(".")[0] != "hydra")  # Hydra checks its own


def check_overrides(args: list[str]) -> None:
    """Refuse a `key=value` whose key is a setting nowhere in conf/ (a typo), with the nearest
    keys; `+key=` (a new key), `~key`, hydra.* and anything unparsable are Hydra's."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if "--shell-completion" in args or "-sc" in args:
        return
    candidates = [a for a in args if "=" in a and not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(candidates)
    except HydraException:
        return  # Hydra says what is wrong with the syntax
    known = known_keys()
    for o in parsed:
        key = o.key_or_group
        if o.is_add() or o.is_force_add() or o.is_delete() or key.startswith("hydra") or key in known:
            continue
        parent, _, leaf = key.rpartition(".")
        siblings = sorted(k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == parent and k != parent)
        near = [f"{parent}.{n}" if parent else n for n in difflib.get_close_matches(leaf, siblings, n=2, cutoff=0.6)]
        near = near or difflib.get_close_matches(key, sorted(known), n=2, cutoff=0.75)
        hint = f"did you mean {' or '.join(near)}? " if near else ""
        where = f"{parent} has: {', '.join(siblings)}" if parent in known and siblings else \
            "settings start with: " + ", ".join(sorted(k for k in known if "." not in k))
        raise InitlabError(f"{key} is not a setting: {hint}({where}; +{key}=... adds a new key)")
