"""`initlab --help`: the configuration groups and the composed config, as Hydra's help shows
them, in a third of the time. Hydra's help builds a config repository per group option to
list the groups (2 s on a 2-core CPU); the groups are the folders of conf/, so they are
listed from there. `--hydra-help` stays Hydra's."""

from importlib.resources import files

HELP_FLAGS = ("--help", "-h")


def wants_help(args: list[str]) -> bool:
    return any(a in HELP_FLAGS for a in args) and "--hydra-help" not in args


def groups() -> dict[str, list[str]]:
    """Each config group of conf/ (Hydra's own under hydra/ left out) and its options."""
    conf = files("initlab.conf")
    out = {}
    for group in sorted(conf.iterdir(), key=lambda p: p.name):
        if group.is_dir() and group.name not in ("hydra", "__pycache__"):
            out[group.name] = sorted(f.name[:-5] for f in group.iterdir() if f.name.endswith(".yaml"))
    return out


def help_text(overrides: list[str]) -> str:
    """The help for `initlab OVERRIDES --help`: groups, then the config those overrides compose."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf, open_dict

    with initialize_config_module(config_module="initlab.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    with open_dict(cfg):
        cfg.pop("hydra", None)
    listed = "\n".join(f"{name}: {', '.join(options)}" for name, options in groups().items())
    return ("initlab: initialisation and normalisation studies (the manual: docs/, or `make docs`; docs/tour.md has the tour).\n\n"
            "== Configuration groups ==\nCompose your configuration from those groups (group=option)\n\n"
            f"{listed}\n\n\n== Config ==\nOverride anything in the config (foo.bar=value)\n\n"
            f"{OmegaConf.to_yaml(cfg)}\n"
            "Sweeps: initlab -m key=a,b other=c,d.  Powered by Hydra (https://hydra.cc);\n"
            "use --hydra-help to view Hydra specific help.\n")
