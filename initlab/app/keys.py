"""Every setting the shipped YAML defines, so a misspelt command-line key gets one line that
names the keys nearby, before Hydra composes (Hydra's own answer is a multi-line "not in
struct" and exit 1). A key of a group (`model.depth`) is checked against the option the
command chooses (`model=conv4` has no depth): one line naming the keys that option has."""

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
    parser = OverridesParser.create()
    parsed = []
    for arg in candidates:  # one at a time, to name the one that does not parse
        try:
            parsed += parser.parse_overrides([arg])
        except HydraException as exc:
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InitlabError(f"{arg} cannot be read ({why}): check its brackets and quotes; values with "
                               "spaces or special characters go in quotes, e.g. 'note=\"a b\"'") from None
    known = known_keys()
    multirun = "-m" in args or "--multirun" in args or any(_sweeps_itself(o) for o in parsed)
    for o in parsed:
        key = o.key_or_group
        if o.is_add() or o.is_force_add():
            _check_group_key(o, parsed)
        if o.is_add() or o.is_force_add() or o.is_delete() or key.startswith("hydra"):
            continue
        if key in group_options():
            _check_option(o, key)
        _check_group_key(o, parsed)
        if o.is_sweep_override() and not multirun:
            raise InitlabError(f"{o.input_line} gives several values, which is a sweep: add -m "
                               f"(initlab -m {o.input_line})")
        if key in known:
            continue
        parent, _, leaf = key.rpartition(".")
        siblings = sorted(k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == parent and k != parent)
        near = [f"{parent}.{n}" if parent else n for n in difflib.get_close_matches(leaf, siblings, n=2, cutoff=0.6)]
        near = near or difflib.get_close_matches(key, sorted(known), n=2, cutoff=0.75)
        hint = f"did you mean {' or '.join(near)}? " if near else ""
        where = f"{parent} has: {', '.join(siblings)}" if parent in known and siblings else \
            "settings start with: " + ", ".join(sorted(k for k in known if "." not in k))
        raise InitlabError(f"{key} is not a setting: {hint}({where}; +{key}=... adds a new key)")


@functools.cache
def group_options() -> dict[str, tuple[str, ...]]:
    """Each config group's options (conf/GROUP/NAME.yaml), by group."""
    conf = files("initlab.conf")
    return {g.name: tuple(sorted(f.name[:-5] for f in g.iterdir() if f.name.endswith(".yaml")))
            for g in conf.iterdir() if g.is_dir() and g.name not in ("hydra", "__pycache__")}


def _values(o: Any) -> list[str]:
    """The option names an override asks for (`init=a,b` asks for two)."""
    value = o.value()
    items = getattr(value, "list", None)
    return [str(v) for v in (items if items is not None else [value])]


def _check_option(o: Any, group: str) -> None:
    options = group_options()[group]
    for name in _values(o):
        if name in options or name == "null":
            continue
        near = difflib.get_close_matches(name, options, n=2, cutoff=0.6)
        hint = f": did you mean {' or '.join(f'{group}={n}' for n in near)}?" if near else ""
        raise InitlabError(f"{group}={name} is not one of the {group} options{hint} ({group} has: {', '.join(options)})")


@functools.cache
def _option_keys(group: str, name: str) -> tuple[str, ...] | None:
    """The top-level keys of conf/GROUP/NAME.yaml, with those of the options of its group it
    extends (`defaults: [default]`); None where the file is not a plain option."""
    import yaml

    f = files("initlab.conf") / group / f"{name}.yaml"
    if not f.is_file():
        return None
    text = f.read_text()
    data = yaml.safe_load(text) or {}
    if text.startswith(_GLOBAL) or not isinstance(data, dict):
        return None
    keys = [k for k in data if k != "defaults"]
    for base in data.get("defaults") or []:
        if isinstance(base, str) and base != "_self_":
            keys += [k for k in _option_keys(group, base) or () if k not in keys]
    return tuple(keys)


def _chosen(group: str, parsed: list[Any]) -> list[str] | None:
    """The options of `group` this command runs: its own `group=...`, else config.yaml's default;
    None where an experiment may choose them (experiment files set options of their own)."""
    import yaml

    for o in parsed:
        if o.key_or_group == group and not (o.is_add() or o.is_delete()):
            return _values(o)
    conf = files("initlab.conf")
    for o in parsed:
        if o.key_or_group == "experiment":
            f = conf / "experiment" / f"{o.value()}.yaml"
            if o.is_sweep_override() or not f.is_file():
                return None
            chosen = _default_of(yaml.safe_load(f.read_text()) or {}, f"override /{group}")
            if chosen is not None:
                return [chosen]
    return [c] if (c := _default_of(yaml.safe_load((conf / "config.yaml").read_text()), group)) else None


def _default_of(config: dict, entry: str) -> str | None:
    """The option a defaults list picks for `entry` (`model`, or `override /model` in an experiment)."""
    for d in config.get("defaults") or []:
        if isinstance(d, dict) and entry in d and d[entry] is not None:
            return str(d[entry])
    return None


def _check_group_key(o: Any, parsed: list[Any]) -> None:
    """`model.depth=3` with model=conv4: conv4 has no depth, which Hydra says in six lines and `+model.depth`
    would silently ignore. An option that builds through another library (`_target_`, `arch`)
    passes `+model.KEY` on to its builder."""
    group, _, rest = o.key_or_group.partition(".")
    if not rest or group not in group_options() or group == "experiment" or o.is_delete():
        return
    for name in _chosen(group, parsed) or []:
        keys = _option_keys(group, name)
        first = rest.split(".")[0]
        if keys is None or first in keys:
            continue
        passes_on = "_target_" in keys or "arch" in keys
        if passes_on and (o.is_add() or o.is_force_add()):
            continue
        near = difflib.get_close_matches(first, keys, n=2, cutoff=0.6)
        hint = f" (did you mean {' or '.join(f'{group}.{n}' for n in near)}?)" if near else ""
        also = [other for other in group_options()[group] if first in (_option_keys(group, other) or ())]
        elsewhere = f"; {first} belongs to {group}={', '.join(also)}" if also else ""
        extra = f"; +{group}.{rest}=... passes an argument to its builder" if passes_on else ""
        raise InitlabError(f"{group}={name} has no setting {first}{hint}: its settings are "
                           f"{', '.join(k for k in keys if k != 'name')}{elsewhere}{extra}")


def _sweeps_itself(o: Any) -> bool:
    """An experiment= whose file makes the run a sweep (hydra.mode: MULTIRUN)."""
    if o.key_or_group != "experiment" or o.is_sweep_override():
        return False
    f = files("initlab.conf") / "experiment" / f"{o.value()}.yaml"
    return f.is_file() and "MULTIRUN" in f.read_text()
