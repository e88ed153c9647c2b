"""Bad values -> one ConfigError naming the key, before any work. Adding a key to conf/
means adding its row here."""

import subprocess
import sys

import pytest
from torch import nn

from initlab.app.config import validate
from initlab.app.keys import check_overrides, known_keys
from initlab.errors import ConfigError, InitlabError
from initlab.telemetry import Telemetry, TelemetryConfig
from tests.conftest import run_cli

BAD = [
    ("optim.name=rmsprop", "optim.name='rmsprop' is invalid: choose from adam, adamw, sgd"),
    ("seed=4294967296", "seed=4294967296 is invalid: expected an integer in [0, 4294967295]"),
    ("telemetry.hist.min_abs=-1", "telemetry.hist.min_abs=-1 is invalid: expected a finite number > 0"),
    ("telemetry.hist.max_abs=1e-9", "telemetry.hist.max_abs=1e-09 is invalid: expected a number > telemetry.hist.min_abs"),
    ("telemetry.hist.sample=0", "telemetry.hist.sample=0 is invalid: expected an integer >= 1"),
    ("telemetry.hist.bins_per_decade=0", "telemetry.hist.bins_per_decade=0 is invalid: expected an integer >= 1"),
    ("telemetry.log_points=-1", "telemetry.log_points=-1 is invalid: expected an integer >= 0"),
    ("telemetry.dead.tanh=abc", "telemetry.dead.tanh='abc' is invalid: expected a finite number > 0"),
    ("telemetry.dead.sigmoid_high=0.01", "telemetry.dead.sigmoid_high=0.01 is invalid: expected a number > telemetry.dead.sigmoid_low"),
    ("telemetry.flush_seconds=0", "telemetry.flush_seconds=0 is invalid: expected a finite number > 0"),
    ("telemetry.modules=Conv2d", "telemetry.modules='Conv2d' is invalid: expected a list"),
    ("diagnose.vanishing_ratio=abc", "diagnose.vanishing_ratio='abc' is invalid: expected a finite number > 0"),
    ("optim.lr=inf", "optim.lr=inf is invalid: expected a finite number > 0"),
    ("init=normal init.std=inf", "init.std=inf is invalid: expected a finite number >= 0"),
    ("model=mlp model.depth=-1", "model.depth=-1 is invalid: expected an integer >= 1"),
    ("model=mlp model.width=0", "model.width=0 is invalid: expected an integer >= 1"),
    ("train.steps=abc", "train.steps='abc' is invalid: expected an integer >= 0"),
    ("train.batch_size=0", "train.batch_size=0 is invalid: expected an integer >= 1"),
    ("optim.lr=0", "optim.lr=0 is invalid: expected a finite number > 0"),
    ("optim.lr=-1e-3", "optim.lr=-0.001 is invalid: expected a finite number > 0"),
    ("init=normal init.std=-1", "init.std=-1 is invalid: expected a finite number >= 0"),
    ("data.shape=[0,28]", "data.shape=[0, 28] is invalid: expected [N] for flat inputs or [C,H,W]"),
    ("data.shape=[1,28]", "data.shape=[1, 28] is invalid: expected [N] for flat inputs or [C,H,W]"),
    ("data.shape=foo", "data.shape='foo' is invalid: expected [N] for flat inputs or [C,H,W]"),
    ("model.act=swish", "model.act='swish' is invalid: choose from relu, leaky_relu"),
    ("plot_format=jpg", "plot_format='jpg' is invalid: choose from png, svg, pdf"),
    ("plot_layers=[1]", "plot_layers=[1] is invalid: expected weighted, all, or a module type such as ReLU"),
    ("telemetry.formats=fp16", "telemetry.formats='fp16' is invalid: expected a list of format names"),
    ("telemetry.formats=[fp8]", "telemetry.formats=['fp8'] is invalid: expected names from fp16, bf16, e4m3, e5m2"),
    ("telemetry.ranks=all", "telemetry.ranks='all' is invalid: choose from merged, each"),
    ("precision.loss_scale=-2", "precision.loss_scale=-2 is invalid: expected none, dynamic or a number > 0"),
    ("precision.init_scale=0", "precision.init_scale=0 is invalid: expected a finite number > 0"),
    ("precision.growth_factor=1", "precision.growth_factor=1 is invalid: expected a finite number > 1"),
    ("precision.backoff_factor=1", "precision.backoff_factor=1 is invalid: expected a finite number > 0"),
    ("precision.growth_interval=0", "precision.growth_interval=0 is invalid: expected an integer >= 1"),
    ("diagnose.underflow=-0.1", "diagnose.underflow=-0.1 is invalid: expected a finite number > 0"),
    ("report.html=yes", "report.html='yes' is invalid: expected true or false"),
    ("probe.stacked=maybe", "probe.stacked='maybe' is invalid: expected true or false"),
    ("probe.inits=[default,he]", "probe.inits='he' is invalid: choose from default, fixup, kaiming, lsuv"),
    ("probe.inits=kaiming", "probe.inits='kaiming' is invalid: expected a list of init schemes, e.g. [default,"),
    ("data=mnist data.root=5", "data.root=5 is invalid: expected null ($INITLAB_DATA or ~/.cache/initlab/data) or a"),
    ("bn=true norm=layer", "bn=True is invalid: bn=true is short for norm=batch, which disagrees with norm=layer"),
    ("bn=false norm=group", "bn=False is invalid: bn=false is short for norm=none, which disagrees with norm=group"),
    ("bn=maybe", "bn='maybe' is invalid: expected true (= norm=batch), false (= norm=none) or null"),
    ("norm=group norm.groups=0", "norm.groups=0 is invalid: expected auto or an integer >= 1"),
    ("norm=batch norm.sync=maybe", "norm.sync='maybe' is invalid"),
    ("norm=auto norm.sync=true", "norm.sync=True is invalid: SyncBatchNorm replaces BatchNorm, and this run's norm is none"),
    ("headline={title:x}", "headline={'title': 'x'} is invalid: expected {title: the claim"),
    ("headline={title:x,x:train.batch_size}", "headline={'title': 'x', 'x': 'train.batch_size'} is invalid: headline.x needs headline.y"),
    ("norm=group norm.groups=many", "norm.groups='many' is invalid: expected auto or an integer >= 1"),
    ("norm=layer norm.eps=0", "norm.eps=0 is invalid: expected a finite number > 0"),
    ("norm=layer norm.affine=1", "norm.affine=1 is invalid: expected true or false"),
    ("model.norm_position=pre", "model.norm_position='pre' is invalid: choose from before_act, after_act"),
    ("model.bn_position=sideways", "model.bn_position='sideways' is invalid: choose from before_act, after_act"),
    ("model=vit model.norm_position=before_act", "model.norm_position='before_act' is invalid: choose from pre, post"),
    ("model=vit model.heads=3", "model.dim=64 is invalid: expected a multiple of model.heads=3"),
    ("model=vit model.patch=0", "model.patch=0 is invalid: expected an integer >= 1"),
    ("model=vit model.mlp_ratio=0", "model.mlp_ratio=0 is invalid: expected a finite number > 0"),
    ("optim.warmup_steps=-1", "optim.warmup_steps=-1 is invalid: expected an integer >= 0"),
    ("optim.lr_batch=0", "optim.lr_batch=0 is invalid: expected null (lr as given) or the batch size lr is meant for"),
    ("optim.schedule=linear", "optim.schedule='linear' is invalid: choose from constant, cosine"),
    ("train.samples=0", "train.samples=0 is invalid: expected null (train.steps counts) or an integer >= 1"),
    ("data=digits data.resize=4", "data.resize=4 is invalid: expected null (8x8) or a size >= 8"),
    ("telemetry.norm=yes", "telemetry.norm='yes' is invalid: expected true or false"),
    ("data=mnist data.fallback=cifar10", "data.fallback='cifar10' is invalid: expected null, synthetic or digits"),
    ("data.train_size=0", "data.train_size=0 is invalid: expected null (synthetic: the online stream; a dataset: its whole split) or"),
    ("param=mup param.base_width=-1", "param.base_width=-1 is invalid: expected null (the model's shipped width) or a number > 0"),
    ("param=mup param.depth=half", "param.depth='half' is invalid: choose from none, sqrt, linear"),
    ("param=mup param.readout_zero=1", "param.readout_zero=1 is invalid: expected true or false"),
    ("coord.widths=[64]", "coord.widths=[64] is invalid: expected at least two different widths > 0"),
    ("coord.params=[sp,mu]", "coord.params=['sp', 'mu'] is invalid: expected a list of sp, ntk, mup"),
    ("coord.steps=0", "coord.steps=0 is invalid: expected an integer >= 1"),
    ("coord.tolerance=0", "coord.tolerance=0 is invalid: expected a finite number > 0"),
    ("param=mup probe.seeds=3", "param.name='mup' is invalid: the probe draws plain models"),
]


BUILD = [  # known only once the model is built: one line, exit 2
    (["norm=group", "norm.groups=3"], "norm.groups=3 does not divide the 8 channels of features.1: give a divisor"),
    (["model=mlp", "norm=instance"], "norm=instance has nothing to normalise in model=mlp's Linear layers"),
    (["model=vit", "norm=batch"], "norm=batch does not apply to tokens (model=vit takes norm=layer, rms or none)"),
    (["model=torchvision", "norm=group"], "norm='group' is invalid: norm does not apply to model=torchvision"),
    (["model=lenet", "param=mup"], "model='lenet' is invalid: param=mup needs a model with a width knob"),
    (["model=torchvision", "data.shape=[3,32,32]", "param=mup"],
     "model='torchvision' is invalid: param=mup needs a model with a width knob"),
]


@pytest.mark.parametrize("args,message", BUILD, ids=[" ".join(b[0]) for b in BUILD])
def test_a_norm_the_model_cannot_take_is_one_line(tmp_path, args: list[str], message: str) -> None:
    proc = run_cli([*args, "train.steps=0", "plots=false", "train.progress=false", "data.train_size=64",
                    f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"initlab: error: {message}"), last


@pytest.mark.parametrize("override,message", BAD, ids=[b[0] for b in BAD])
def test_bad_value_is_one_config_error(make_cfg, override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(*override.split()))
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_the_shipped_config_is_valid(make_cfg) -> None:
    validate(make_cfg())


def test_modules_matching_nothing_is_an_error_not_an_empty_verdict() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with pytest.raises(InitlabError, match=r"telemetry.modules=\['NoSuchLayer'\] matches no module.*Linear, ReLU"):
        Telemetry(model, TelemetryConfig(modules=["NoSuchLayer"]))


UNKNOWN = [
    ("modle=mlp", "modle is not a setting: did you mean model?"),
    ("train.step=5", "train.step is not a setting: did you mean train.steps? (train has: batch_size,"),
    ("telemetry.hist.sampel=9", "telemetry.hist.sampel is not a setting: did you mean telemetry.hist.sample?"),
]


@pytest.mark.parametrize("override,message", UNKNOWN, ids=[u[0] for u in UNKNOWN])
def test_an_unknown_key_names_the_keys_nearby(override: str, message: str) -> None:
    with pytest.raises(InitlabError) as err:
        check_overrides([override])
    assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)


GROUP_KEYS = [  # a key the chosen option does not have: one line naming what it has, and where the key lives
    (["model=conv4", "model.depth=3"], "model=conv4 has no setting depth: its settings are channels,", "depth belongs to model=mlp, vit"),
    (["+model.depth=3"], "model=conv4 has no setting depth", "depth belongs to model=mlp"),  # the default model, and a + no exception
    (["model=mlp", "model.depht=3"], "model=mlp has no setting depht (did you mean model.depth?)", "depth, width"),
    (["norm=layer", "norm.sync=true"], "norm=layer has no setting sync", "sync belongs to norm=auto, batch"),
    (["experiment=smoke", "model.width=8"], "model=conv4 has no setting width", "width belongs to model=mlp, resnet"),
    (["optim=sgd", "optim.betas=[0.9,0.99]"], "optim=sgd has no setting betas", "betas belongs to optim=adam, adamw"),
]


@pytest.mark.parametrize("args,start,mention", GROUP_KEYS, ids=[" ".join(g[0]) for g in GROUP_KEYS])
def test_a_key_the_chosen_option_lacks_names_its_keys(args: list[str], start: str, mention: str) -> None:
    with pytest.raises(InitlabError) as err:
        check_overrides(args)
    assert str(err.value).startswith(start) and mention in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_the_command_line_refuses_a_key_of_another_model_in_one_line_before_torch(tmp_path) -> None:
    proc = run_cli(["model=conv4", "model.depth=3"], cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "model=conv4 has no setting depth" in proc.stderr and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("args", [["model=mlp", "model.depth=3"], ["model=torchvision", "+model.zero_init_residual=true"],
                                  ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], ["-m", "init=default,kaiming"],
                                  ["experiment=smoke", "model=target", "model._target_=x.y"], ["--cfg", "job"]])
def test_known_keys_new_keys_and_hydra_keys_pass(args: list[str]) -> None:
    check_overrides(args)


def test_every_shipped_key_is_known(make_cfg) -> None:
    """known_keys reads conf/ itself: every node of the composed default config is in it."""
    from omegaconf import OmegaConf

    def paths(node: object, prefix: str = "") -> list[str]:
        if not isinstance(node, dict):
            return [prefix]
        return [prefix] * bool(prefix) + [p for k, v in node.items() for p in paths(v, f"{prefix}.{k}" if prefix else k)]

    cfg = OmegaConf.to_container(make_cfg("model=mlp"), resolve=False)
    assert set(paths(cfg)) - known_keys() == set()


def test_the_command_line_refuses_an_unknown_key_in_one_line(tmp_path) -> None:
    proc = run_cli(["train.step=5"], cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("initlab: error: train.step is not a setting: did you mean train.steps? (train has: "
                                   "batch_size, eval_every, progress, samples, steps, stop_on_nonfinite; +train.step=... adds "
                                   "a new key)")
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("value", ["train.steps=-1", "optim.lr=-2", "telemetry.every=0", "seed=1.5",
                                   "model.channels=abc", "model.act_slope=[1]", "model=mlp model.depth=abc",
                                   "model=vit model.heads=2.5"])
def test_a_bad_value_is_answered_before_torch_loads(tmp_path, value: str) -> None:
    """The checks that need no torch run before the import (0.5 s against 4 s): exit 2, one line.
    A model's key whose value is not the kind its option's YAML default is (depth: 4) is one."""
    code = (f"import sys\nsys.argv = ['initlab', *{value.split()!r}]\nfrom initlab.app.cli import _main\ntry:\n    _main()\n"
            "except SystemExit as exc:\n    print(exc.code, 'torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["2", "False"], proc.stdout + proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith(f"initlab: error: {value.split()[-1].split('=')[0]}")
