"""What a run directory is called: the overrides that made it differ from the defaults, so eight
runs of `model=mlp` with different depths are told apart at a glance. Registered as the OmegaConf
resolver `initlab_run_name`, which conf/config.yaml's `hydra.run.dir` calls with Hydra's
`hydra.job.override_dirname`."""

import re

from omegaconf import OmegaConf

LONGEST = 60  # characters of the name taken from the overrides; the timestamp before it keeps names unique


def run_name(overrides: str, model: str, init: str) -> str:
    """`mlp_depth=3_init=kaiming` from `model=mlp,model.depth=3,init=kaiming`: the model's name,
    then each override as its last key segment and value, in characters every file system takes."""
    items = [o for o in re.split(r",(?![^\[]*\])", overrides) if o] if overrides else []  # commas inside [..] stay
    parts = []
    for item in items:
        key, _, value = item.partition("=")
        if key.lstrip("+~") == "model":
            continue  # the name starts with it
        parts.append(f"{key.rsplit('.', 1)[-1]}={value}")
    safe = [re.sub(r"[^A-Za-z0-9.=+-]+", "-", p).strip("-") for p in ([model, *parts] if parts else [model, init])]
    return "_".join(p for p in safe if p)[:LONGEST].rstrip("-_") or "run"


def register() -> None:
    if not OmegaConf.has_resolver("initlab_run_name"):
        OmegaConf.register_new_resolver("initlab_run_name", run_name)
