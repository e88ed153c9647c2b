"""Validate a composed config before any work: each bad value becomes one clear line.

Hydra already rejects unknown group options ("Available options in 'model': ...");
this module catches what Hydra cannot know: impossible numbers, malformed shapes,
unknown activations, and so on. Keys absent from a model's config are simply skipped.

`validate(cfg, heavy=False)` runs every check that needs no torch (numbers, lists, flags):
the command calls it before importing torch, so a bad value is answered in well under a
second; `run_study` then runs them all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from omegaconf import DictConfig

from initlab.app.keys import group_options
from initlab.checks import (
    MISSING,
    check_bool,
    check_choice,
    check_int,
    check_int_list,
    check_like_default,
    check_num,
    get_value,
    headline_problem,
    is_int,
    is_num,
)
from initlab.defaults import preset
from initlab.errors import ConfigError, InitlabError

if TYPE_CHECKING:  # torch: only for the checks that need the model zoo (heavy=True)
    from initlab.nn.norms import NormSpec


def _check_inits(cfg: DictConfig) -> None:
    """probe.inits: a list of init scheme names, each one of conf/init/."""
    inits = get_value(cfg, "probe.inits")
    if inits is MISSING:
        return
    if not isinstance(inits, list) or not all(isinstance(i, str) for i in inits):
        raise ConfigError("probe.inits", inits, "expected a list of init schemes, e.g. [default,xavier,kaiming]")
    for name in inits:
        try:
            preset("init", name)
        except InitlabError as exc:
            raise ConfigError("probe.inits", name, str(exc).split(": ", 1)[-1]) from None


def _check_norm(cfg: DictConfig, heavy: bool) -> None:
    """norm.eps, norm.affine, norm.groups; `bn` and `norm` both given must agree."""
    check_num(cfg, "norm.eps", 0.0, strict=True)
    check_bool(cfg, "norm.affine")
    if get_value(cfg, "norm.sync") is not MISSING:
        check_bool(cfg, "norm.sync")
    groups = get_value(cfg, "norm.groups")
    if groups is not MISSING and groups != "auto" and not (is_int(groups) and groups >= 1):
        raise ConfigError("norm.groups", groups, "expected auto or an integer >= 1 that divides the channels")
    if not heavy:
        return
    spec = norm_spec(cfg)
    if spec.sync and spec.name != "batch":
        raise ConfigError("norm.sync", True, f"SyncBatchNorm replaces BatchNorm, and this run's norm is {spec.name}: "
                          "give norm=batch (or bn=true)")


def norm_spec(cfg: DictConfig) -> NormSpec:
    """The run's normalisation: the `norm` group, or `bn` (true = batch, false = none) when
    norm is left at auto; both given and disagreeing is an error. auto becomes the zoo
    model's own (external models keep auto: they bring their own)."""
    norm = get_value(cfg, "norm")
    norm = norm if isinstance(norm, dict) else {"name": "auto"}
    bn = get_value(cfg, "bn")
    if isinstance(bn, bool):
        short = "batch" if bn else "none"
        if norm["name"] not in ("auto", short):
            raise ConfigError("bn", bn, f"bn={str(bn).lower()} is short for norm={short}, which disagrees with "
                              f"norm={norm['name']}: give one of them")
        norm = {**norm, "name": short}
    from initlab.models import MODELS, own_norm
    from initlab.models.external import EXTERNAL
    from initlab.nn.norms import NormSpec

    model = get_value(cfg, "model.name")
    return own_norm(model, NormSpec.of(norm)) if model in MODELS and model not in EXTERNAL else NormSpec.of(norm)


def _check_width(cfg: DictConfig, heavy: bool) -> None:
    if heavy:
        from initlab.width.parametrize import DEPTHS, PARAMS

        check_choice(cfg, "param.name", PARAMS)
        check_choice(cfg, "param.depth", DEPTHS)
    check_bool(cfg, "param.readout_zero")
    base = get_value(cfg, "param.base_width")
    if base is not MISSING and base is not None and not (is_num(base) and base > 0):
        raise ConfigError("param.base_width", base, "expected null (the model's shipped width) or a number > 0")
    check_bool(cfg, "coord.run")
    widths = get_value(cfg, "coord.widths")
    if widths is not MISSING and not (isinstance(widths, list) and len(set(widths)) >= 2
                                       and all(is_num(w) and w > 0 for w in widths)):
        raise ConfigError("coord.widths", widths, "expected at least two different widths > 0, e.g. [64,128,256]")
    params = get_value(cfg, "coord.params")
    if heavy and params is not MISSING and not (isinstance(params, list) and params and all(p in PARAMS for p in params)):
        raise ConfigError("coord.params", params, f"expected a list of {', '.join(PARAMS)}, e.g. [sp,mup]")
    check_int(cfg, "coord.steps", 1)
    check_int(cfg, "coord.seeds", 1)
    check_num(cfg, "coord.tolerance", 0.0, strict=True)
    name = get_value(cfg, "param.name")
    if name not in (MISSING, "sp") and (get_value(cfg, "probe.seeds") not in (MISSING, 1) or get_value(cfg, "probe.inits")):
        raise ConfigError("param.name", name, "the probe draws plain models: probe.seeds and probe.inits take "
                          "param=sp (leave param out)")


def validate(cfg: DictConfig, heavy: bool = True) -> None:
    """Raise ConfigError on the first value that cannot work; `heavy=False`: only the checks that
    need no torch (the model zoo's, the registries' names are left for heavy=True)."""
    check_int(cfg, "seed", 0, "expected an integer >= 0")
    seed = get_value(cfg, "seed")
    if is_int(seed) and seed > 2**32 - 1:  # numpy's seed range
        raise ConfigError("seed", seed, "expected an integer in [0, 4294967295]")
    bn = get_value(cfg, "bn")
    if bn is not MISSING and bn is not None and not isinstance(bn, bool):
        raise ConfigError("bn", bn, "expected true (= norm=batch), false (= norm=none) or null (not given)")
    _check_norm(cfg, heavy)
    check_bool(cfg, "plots")
    check_bool(cfg, "report.html")
    fmt = get_value(cfg, "plot_format")
    if fmt is not MISSING and fmt not in ("png", "svg", "pdf"):
        raise ConfigError("plot_format", fmt, "choose from png, svg, pdf")
    headline = get_value(cfg, "headline")
    if headline is not MISSING and (why := headline_problem(headline)):
        raise ConfigError("headline", headline, why)
    layers = get_value(cfg, "plot_layers")
    if layers is not MISSING and not (isinstance(layers, str) and layers.isidentifier()):
        raise ConfigError("plot_layers", layers, "expected weighted, all, or a module type such as ReLU")
    # model: each key the kind of value its option's YAML has, then the family's own checks,
    # registered beside it (initlab/models/)
    name = get_value(cfg, "model.name")
    if isinstance(name, str) and name in group_options().get("model", ()):
        check_like_default(cfg, "model", preset("model", name))
    if heavy:
        from initlab.models.base import MODEL_CHECKS

        name = get_value(cfg, "model.name")
        if name in MODEL_CHECKS:
            MODEL_CHECKS[name](cfg)
    # init
    check_choice(cfg, "init.distribution", ["uniform", "normal"])
    check_choice(cfg, "init.mode", ["fan_in", "fan_out"])
    check_num(cfg, "init.std", 0.0, strict=False)
    check_bool(cfg, "init.zero_last_bn")
    check_num(cfg, "init.tol", 0.0, strict=True)
    check_int(cfg, "init.max_iter", 0)
    gain = get_value(cfg, "init.gain")
    if gain is not MISSING and gain != "auto" and not (is_num(gain) and gain > 0):
        raise ConfigError("init.gain", gain, "expected a number > 0 or `auto`")
    # data
    check_int_list(
        cfg, "data.shape", (1, 3), "expected [N] for flat inputs or [C,H,W] for images, positive integers"
    )
    check_int(cfg, "data.num_classes", 2)
    for key, lo in (("data.train_size", 1), ("data.val_size", 0)):
        v = get_value(cfg, key)
        if v is not MISSING and v is not None and not (is_int(v) and v >= lo):
            what = "synthetic: the online stream; a dataset: its whole split" if key == "data.train_size" else "the whole split"
            raise ConfigError(key, v, f"expected null ({what}) or an integer >= {lo}")
    resize = get_value(cfg, "data.resize")
    if resize is not MISSING and resize is not None and not (is_int(resize) and resize >= 8):
        raise ConfigError("data.resize", resize, "expected null (8x8) or a size >= 8, e.g. 16 for model=lenet")
    check_bool(cfg, "data.download")
    root = get_value(cfg, "data.root")
    if root is not MISSING and root is not None and not isinstance(root, str):
        raise ConfigError("data.root", root, "expected null ($INITLAB_DATA or ~/.cache/initlab/data) or a directory path")
    fallback = get_value(cfg, "data.fallback")
    if fallback is not MISSING and fallback not in (None, "synthetic", "digits"):
        raise ConfigError("data.fallback", fallback, "expected null, synthetic or digits")
    check_bool(cfg, "data.normalize")
    check_choice(cfg, "data.loader", ["auto", "resident", "torch"])
    check_num(cfg, "data.memory_budget_mb", 0.0, strict=True)
    check_int(cfg, "data.num_workers", 0)
    data_seed = get_value(cfg, "data.seed")
    if data_seed is not MISSING and data_seed is not None and not (is_int(data_seed) and data_seed >= 0):
        raise ConfigError("data.seed", data_seed, "expected null or an integer >= 0")
    # optim
    if heavy:
        from initlab.train import OPTIMIZERS  # the registry is the list of names

        check_choice(cfg, "optim.name", OPTIMIZERS.choices())
    check_num(cfg, "optim.lr", 0.0, strict=True)
    check_num(cfg, "optim.momentum", 0.0, strict=False, hi=1.0)
    check_num(cfg, "optim.weight_decay", 0.0, strict=False)
    betas = get_value(cfg, "optim.betas")
    if betas is not MISSING and not (
        isinstance(betas, list) and len(betas) == 2 and all(is_num(b) and 0 <= b < 1 for b in betas)
    ):
        raise ConfigError("optim.betas", betas, "expected two numbers in [0, 1), e.g. [0.9,0.999]")
    check_int(cfg, "optim.warmup_steps", 0)
    lr_batch = get_value(cfg, "optim.lr_batch")
    if lr_batch is not MISSING and lr_batch is not None and not (is_int(lr_batch) and lr_batch >= 1):
        raise ConfigError("optim.lr_batch", lr_batch, "expected null (lr as given) or the batch size lr is meant for")
    if heavy:
        from initlab.train import SCHEDULES

        check_choice(cfg, "optim.schedule", SCHEDULES)
    # train
    check_int(cfg, "probe.seeds", 1)
    check_bool(cfg, "probe.stacked")
    _check_inits(cfg)
    check_int(cfg, "train.steps", 0)
    samples = get_value(cfg, "train.samples")
    if samples is not MISSING and samples is not None and not (is_int(samples) and samples >= 1):
        raise ConfigError("train.samples", samples, "expected null (train.steps counts) or an integer >= 1")
    check_int(cfg, "train.batch_size", 1)
    check_int(cfg, "train.eval_every", 0)
    check_bool(cfg, "train.stop_on_nonfinite")
    check_bool(cfg, "train.progress")
    size, bs = get_value(cfg, "data.train_size"), get_value(cfg, "train.batch_size")
    if is_int(size) and is_int(bs) and bs > size:
        raise ConfigError("train.batch_size", bs, f"expected at most data.train_size={size}")
    # telemetry
    check_bool(cfg, "telemetry.enabled")
    check_int(cfg, "telemetry.first", 0)
    check_int(cfg, "telemetry.every", 1)
    check_int(cfg, "telemetry.flush_every", 1)
    check_int(cfg, "telemetry.log_points", 0)
    check_bool(cfg, "telemetry.params")
    check_bool(cfg, "telemetry.bn")
    check_bool(cfg, "telemetry.norm")
    modules = get_value(cfg, "telemetry.modules")
    if modules is not MISSING and not (isinstance(modules, list) and all(isinstance(m, str) for m in modules)):
        raise ConfigError("telemetry.modules", modules, 'expected a list of class or module-name patterns, e.g. [Conv2d,"features.*"]')
    formats = get_value(cfg, "telemetry.formats")
    if formats is not MISSING and not (isinstance(formats, list) and all(isinstance(f, str) for f in formats)):
        raise ConfigError("telemetry.formats", formats, "expected a list of format names, e.g. [fp16,bf16,e4m3,e5m2]")
    if heavy and formats is not MISSING:
        from initlab.telemetry.formats import formats_of

        formats_of(formats)  # names it knows, or one line
    check_choice(cfg, "telemetry.ranks", ("merged", "each"))
    _check_precision(cfg, heavy)
    check_bool(cfg, "telemetry.hist.enabled")
    check_num(cfg, "telemetry.hist.min_abs", 0.0, strict=True)
    check_num(cfg, "telemetry.hist.max_abs", 0.0, strict=True)
    lo, hi = get_value(cfg, "telemetry.hist.min_abs"), get_value(cfg, "telemetry.hist.max_abs")
    if is_num(lo) and is_num(hi) and hi <= lo:
        raise ConfigError("telemetry.hist.max_abs", hi, f"expected a number > telemetry.hist.min_abs={lo}")
    check_int(cfg, "telemetry.hist.bins_per_decade", 1)
    check_int(cfg, "telemetry.hist.sample", 1)
    check_num(cfg, "telemetry.dead.tanh", 0.0, strict=True, hi=1.0)
    check_num(cfg, "telemetry.dead.sigmoid_low", 0.0, strict=False, hi=1.0)
    check_num(cfg, "telemetry.dead.sigmoid_high", 0.0, strict=True, hi=1.0 + 1e-12)
    low, high = get_value(cfg, "telemetry.dead.sigmoid_low"), get_value(cfg, "telemetry.dead.sigmoid_high")
    if is_num(low) and is_num(high) and high <= low:
        raise ConfigError("telemetry.dead.sigmoid_high", high, f"expected a number > telemetry.dead.sigmoid_low={low}")
    # width: param and the coordinate check
    _check_width(cfg, heavy)
    # diagnose: thresholds
    for key in ("vanishing_ratio", "exploding_ratio", "dead_frac", "update_ratio_low", "update_ratio_high", "underflow"):
        check_num(cfg, f"diagnose.{key}", 0.0, strict=True)
    check_num(cfg, "telemetry.flush_seconds", 0.0, strict=True)


def _check_precision(cfg: DictConfig, heavy: bool) -> None:
    if heavy:
        from initlab.precision import DTYPES

        check_choice(cfg, "precision.name", DTYPES)
    scale = get_value(cfg, "precision.loss_scale")
    if scale is not MISSING and scale not in (None, "none", "dynamic") and not (is_num(scale) and scale > 0):
        raise ConfigError("precision.loss_scale", scale, "expected none, dynamic or a number > 0 (a fixed scale)")
    check_num(cfg, "precision.init_scale", 0.0, strict=True)
    check_num(cfg, "precision.growth_factor", 1.0, strict=True)
    check_num(cfg, "precision.backoff_factor", 0.0, strict=True, hi=1.0)
    check_int(cfg, "precision.growth_interval", 1)
