"""Validate a composed config before any work: each bad value becomes one clear line.

Hydra already rejects unknown group options ("Available options in 'model': ...");
this module catches what Hydra cannot know: impossible numbers, malformed shapes,
unknown activations, and so on. Keys absent from a model's config are simply skipped.
"""

import math
from collections.abc import Iterable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from initlab.defaults import preset
from initlab.errors import ConfigError, InitlabError
from initlab.models import MODELS, own_norm
from initlab.models.blocks import ACTIVATIONS, NORM_POSITIONS
from initlab.models.cnn import VGG_PLANS
from initlab.models.external import EXTERNAL
from initlab.nn.norms import NormSpec

_MISSING = object()


def _get(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key, default=_MISSING)
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    return value


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_int(cfg: DictConfig, key: str, lo: int, what: str = "") -> None:
    v = _get(cfg, key)
    if v is _MISSING:
        return
    if not _is_int(v) or v < lo:
        raise ConfigError(key, v, what or f"expected an integer >= {lo}")


def check_num(cfg: DictConfig, key: str, lo: float, *, strict: bool, hi: float | None = None) -> None:
    v = _get(cfg, key)
    if v is _MISSING:
        return
    ok = _is_num(v) and math.isfinite(v) and (v > lo if strict else v >= lo) and (hi is None or v < hi)
    if not ok:
        bound = f"> {lo}" if strict else f">= {lo}"
        if hi is not None:
            bound += f" and < {hi}"
        raise ConfigError(key, v, f"expected a finite number {bound}")


def check_choice(cfg: DictConfig, key: str, choices: Iterable[str]) -> None:
    v = _get(cfg, key)
    if v is _MISSING:
        return
    choices = list(choices)
    if v not in choices:
        raise ConfigError(key, v, f"choose from {', '.join(choices)}")


def _check_inits(cfg: DictConfig) -> None:
    """probe.inits: a list of init scheme names, each one of conf/init/."""
    inits = _get(cfg, "probe.inits")
    if inits is _MISSING:
        return
    if not isinstance(inits, list) or not all(isinstance(i, str) for i in inits):
        raise ConfigError("probe.inits", inits, "expected a list of init schemes, e.g. [default,xavier,kaiming]")
    for name in inits:
        try:
            preset("init", name)
        except InitlabError as exc:
            raise ConfigError("probe.inits", name, str(exc).split(": ", 1)[-1]) from None


def _check_norm(cfg: DictConfig) -> None:
    """norm.eps, norm.affine, norm.groups; `bn` and `norm` both given must agree."""
    check_num(cfg, "norm.eps", 0.0, strict=True)
    check_bool(cfg, "norm.affine")
    groups = _get(cfg, "norm.groups")
    if groups is not _MISSING and groups != "auto" and not (_is_int(groups) and groups >= 1):
        raise ConfigError("norm.groups", groups, "expected auto or an integer >= 1 that divides the channels")
    norm_spec(cfg)


def norm_spec(cfg: DictConfig) -> NormSpec:
    """The run's normalisation: the `norm` group, or `bn` (true = batch, false = none) when
    norm is left at auto; both given and disagreeing is an error. auto becomes the zoo
    model's own (external models keep auto: they bring their own)."""
    norm = _get(cfg, "norm")
    norm = norm if isinstance(norm, dict) else {"name": "auto"}
    bn = _get(cfg, "bn")
    if isinstance(bn, bool):
        short = "batch" if bn else "none"
        if norm["name"] not in ("auto", short):
            raise ConfigError("bn", bn, f"bn={str(bn).lower()} is short for norm={short}, which disagrees with "
                              f"norm={norm['name']}: give one of them")
        norm = {**norm, "name": short}
    model = _get(cfg, "model.name")
    return own_norm(model, NormSpec.of(norm)) if model in MODELS and model not in EXTERNAL else NormSpec.of(norm)


def check_bool(cfg: DictConfig, key: str) -> None:
    v = _get(cfg, key)
    if v is not _MISSING and not isinstance(v, bool):
        raise ConfigError(key, v, "expected true or false")


def check_int_list(cfg: DictConfig, key: str, lengths: tuple[int, ...], what: str) -> None:
    v = _get(cfg, key)
    if v is _MISSING:
        return
    if not isinstance(v, list) or len(v) not in lengths or not all(_is_int(x) and x >= 1 for x in v):
        raise ConfigError(key, v, what)


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError on the first value that cannot work."""
    check_int(cfg, "seed", 0, "expected an integer >= 0")
    seed = _get(cfg, "seed")
    if _is_int(seed) and seed > 2**32 - 1:  # numpy's seed range
        raise ConfigError("seed", seed, "expected an integer in [0, 4294967295]")
    bn = _get(cfg, "bn")
    if bn is not _MISSING and bn is not None and not isinstance(bn, bool):
        raise ConfigError("bn", bn, "expected true (= norm=batch), false (= norm=none) or null (not given)")
    _check_norm(cfg)
    check_bool(cfg, "plots")
    check_bool(cfg, "report.html")
    fmt = _get(cfg, "plot_format")
    if fmt is not _MISSING and fmt not in ("png", "svg", "pdf"):
        raise ConfigError("plot_format", fmt, "choose from png, svg, pdf")
    layers = _get(cfg, "plot_layers")
    if layers is not _MISSING and not (isinstance(layers, str) and layers.isidentifier()):
        raise ConfigError("plot_layers", layers, "expected weighted, all, or a module type such as ReLU")
    # model
    check_int(cfg, "model.depth", 1)
    check_int(cfg, "model.width", 1)
    for key in ("model.patch", "model.dim", "model.heads"):
        check_int(cfg, key, 1)
    check_num(cfg, "model.mlp_ratio", 0.0, strict=True)
    dim, heads = _get(cfg, "model.dim"), _get(cfg, "model.heads")
    if _is_int(dim) and _is_int(heads) and heads >= 1 and dim % heads:
        raise ConfigError("model.dim", dim, f"expected a multiple of model.heads={heads}")
    check_choice(cfg, "model.act", ACTIVATIONS)
    check_num(cfg, "model.act_slope", 0.0, strict=False)
    check_num(cfg, "model.act_sub", float("-inf"), strict=False)
    maxv = _get(cfg, "model.act_maxv")
    if maxv is not _MISSING and maxv is not None and not _is_num(maxv):
        raise ConfigError("model.act_maxv", maxv, "expected null (no clip) or a number")
    positions = ["pre", "post"] if _get(cfg, "model.name") == "vit" else list(NORM_POSITIONS)
    check_choice(cfg, "model.norm_position", positions)
    if _get(cfg, "model.bn_position") is not None:  # the older name: conv nets' positions only
        check_choice(cfg, "model.bn_position", NORM_POSITIONS)
    check_int_list(cfg, "model.channels", (3,), "expected three positive integers, e.g. [8,16,32]")
    check_int_list(cfg, "model.blocks", (1, 2, 3, 4, 5, 6),
                   "expected 1 to 6 positive integers, e.g. [2,2,2,2] (ResNet-18) or [3,4,6,3]")
    check_choice(cfg, "model.block", ["basic", "preact"])
    check_choice(cfg, "model.stem", ["auto", "small", "large"])
    check_choice(cfg, "model.variant", ["auto", "classic", "small"])
    check_choice(cfg, "model.cfg", VGG_PLANS)
    check_choice(cfg, "model.pool", ["avg", "max"])
    check_num(cfg, "model.width_mult", 0.0, strict=True)
    check_num(cfg, "model.dropout", 0.0, strict=False, hi=1.0)
    check_bool(cfg, "model.torchvision_compat")
    # init
    check_choice(cfg, "init.distribution", ["uniform", "normal"])
    check_choice(cfg, "init.mode", ["fan_in", "fan_out"])
    check_num(cfg, "init.std", 0.0, strict=False)
    check_bool(cfg, "init.zero_last_bn")
    check_num(cfg, "init.tol", 0.0, strict=True)
    check_int(cfg, "init.max_iter", 0)
    gain = _get(cfg, "init.gain")
    if gain is not _MISSING and gain != "auto" and not (_is_num(gain) and gain > 0):
        raise ConfigError("init.gain", gain, "expected a number > 0 or `auto`")
    # data
    check_int_list(
        cfg, "data.shape", (1, 3), "expected [N] for flat inputs or [C,H,W] for images, positive integers"
    )
    check_int(cfg, "data.num_classes", 2)
    for key, lo in (("data.train_size", 1), ("data.val_size", 0)):
        v = _get(cfg, key)
        if v is not _MISSING and v is not None and not (_is_int(v) and v >= lo):
            what = "synthetic: the online stream; a dataset: its whole split" if key == "data.train_size" else "the whole split"
            raise ConfigError(key, v, f"expected null ({what}) or an integer >= {lo}")
    resize = _get(cfg, "data.resize")
    if resize is not _MISSING and resize is not None and not (_is_int(resize) and resize >= 8):
        raise ConfigError("data.resize", resize, "expected null (8x8) or a size >= 8, e.g. 16 for model=lenet")
    check_bool(cfg, "data.download")
    root = _get(cfg, "data.root")
    if root is not _MISSING and root is not None and not isinstance(root, str):
        raise ConfigError("data.root", root, "expected null ($INITLAB_DATA or ~/.cache/initlab/data) or a directory path")
    fallback = _get(cfg, "data.fallback")
    if fallback is not _MISSING and fallback not in (None, "synthetic", "digits"):
        raise ConfigError("data.fallback", fallback, "expected null, synthetic or digits")
    check_bool(cfg, "data.normalize")
    check_choice(cfg, "data.loader", ["auto", "resident", "torch"])
    check_num(cfg, "data.memory_budget_mb", 0.0, strict=True)
    check_int(cfg, "data.num_workers", 0)
    data_seed = _get(cfg, "data.seed")
    if data_seed is not _MISSING and data_seed is not None and not (_is_int(data_seed) and data_seed >= 0):
        raise ConfigError("data.seed", data_seed, "expected null or an integer >= 0")
    # optim
    from initlab.train import OPTIMIZERS  # the registry is the list of names

    check_choice(cfg, "optim.name", OPTIMIZERS.choices())
    check_num(cfg, "optim.lr", 0.0, strict=True)
    check_num(cfg, "optim.momentum", 0.0, strict=False, hi=1.0)
    check_num(cfg, "optim.weight_decay", 0.0, strict=False)
    betas = _get(cfg, "optim.betas")
    if betas is not _MISSING and not (
        isinstance(betas, list) and len(betas) == 2 and all(_is_num(b) and 0 <= b < 1 for b in betas)
    ):
        raise ConfigError("optim.betas", betas, "expected two numbers in [0, 1), e.g. [0.9,0.999]")
    check_int(cfg, "optim.warmup_steps", 0)
    lr_batch = _get(cfg, "optim.lr_batch")
    if lr_batch is not _MISSING and lr_batch is not None and not (_is_int(lr_batch) and lr_batch >= 1):
        raise ConfigError("optim.lr_batch", lr_batch, "expected null (lr as given) or the batch size lr is meant for")
    from initlab.train import SCHEDULES

    check_choice(cfg, "optim.schedule", SCHEDULES)
    # train
    check_int(cfg, "probe.seeds", 1)
    check_bool(cfg, "probe.stacked")
    _check_inits(cfg)
    check_int(cfg, "train.steps", 0)
    samples = _get(cfg, "train.samples")
    if samples is not _MISSING and samples is not None and not (_is_int(samples) and samples >= 1):
        raise ConfigError("train.samples", samples, "expected null (train.steps counts) or an integer >= 1")
    check_int(cfg, "train.batch_size", 1)
    check_int(cfg, "train.eval_every", 0)
    check_bool(cfg, "train.stop_on_nonfinite")
    check_bool(cfg, "train.progress")
    size, bs = _get(cfg, "data.train_size"), _get(cfg, "train.batch_size")
    if _is_int(size) and _is_int(bs) and bs > size:
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
    modules = _get(cfg, "telemetry.modules")
    if modules is not _MISSING and not (isinstance(modules, list) and all(isinstance(m, str) for m in modules)):
        raise ConfigError("telemetry.modules", modules, 'expected a list of class or module-name patterns, e.g. [Conv2d,"features.*"]')
    check_bool(cfg, "telemetry.hist.enabled")
    check_num(cfg, "telemetry.hist.min_abs", 0.0, strict=True)
    check_num(cfg, "telemetry.hist.max_abs", 0.0, strict=True)
    lo, hi = _get(cfg, "telemetry.hist.min_abs"), _get(cfg, "telemetry.hist.max_abs")
    if _is_num(lo) and _is_num(hi) and hi <= lo:
        raise ConfigError("telemetry.hist.max_abs", hi, f"expected a number > telemetry.hist.min_abs={lo}")
    check_int(cfg, "telemetry.hist.bins_per_decade", 1)
    check_int(cfg, "telemetry.hist.sample", 1)
    check_num(cfg, "telemetry.dead.tanh", 0.0, strict=True, hi=1.0)
    check_num(cfg, "telemetry.dead.sigmoid_low", 0.0, strict=False, hi=1.0)
    check_num(cfg, "telemetry.dead.sigmoid_high", 0.0, strict=True, hi=1.0 + 1e-12)
    low, high = _get(cfg, "telemetry.dead.sigmoid_low"), _get(cfg, "telemetry.dead.sigmoid_high")
    if _is_num(low) and _is_num(high) and high <= low:
        raise ConfigError("telemetry.dead.sigmoid_high", high, f"expected a number > telemetry.dead.sigmoid_low={low}")
    # diagnose: thresholds
    for key in ("vanishing_ratio", "exploding_ratio", "dead_frac", "update_ratio_low", "update_ratio_high"):
        check_num(cfg, f"diagnose.{key}", 0.0, strict=True)
    check_num(cfg, "telemetry.flush_seconds", 0.0, strict=True)
