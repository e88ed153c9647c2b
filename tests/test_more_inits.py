"""LSUV, Fixup, SkipInit and leaky Kaiming for GeneralRelu: what their papers define."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from initlab.errors import InitlabError
from initlab.init import apply_init
from initlab.models import build_model
from initlab.models.blocks import Bias, GeneralRelu, Scale
from initlab.rundir.store import load_run

RESNET = {"name": "resnet", "blocks": [1, 1, 1, 1], "width": 8, "block": "basic", "act": "relu", "stem": "auto"}


def _weighted(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def _output_vars(model: nn.Module, x: torch.Tensor) -> list[float]:
    out: list[float] = []
    hooks = [m.register_forward_hook(lambda m, a, o: out.append(float(o.double().var()))) for m in _weighted(model)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return out


@pytest.mark.parametrize("model_name, cfg, shape, bn", [
    ("mlp", {"depth": 12, "width": 128, "act": "tanh"}, (200,), False),
    ("mlp", {"depth": 12, "width": 128, "act": "general_relu", "act_slope": 0.1, "act_sub": 0.4}, (200,), False),
    ("conv4", {"channels": [8, 16, 32], "act": "relu"}, (1, 28, 28), True),
    ("vgg", {"cfg": "vgg11", "width_mult": 0.125, "variant": "auto", "act": "relu", "dropout": 0.5},
     (3, 32, 32), False),
])
def test_lsuv_brings_every_layer_output_variance_within_tol(model_name, cfg, shape, bn) -> None:
    torch.manual_seed(0)
    model = build_model(model_name, {"name": model_name, **cfg}, shape, 10, bn)
    x = torch.randn(128, *shape)
    tol = 0.05
    report = apply_init(model, {"name": "lsuv", "tol": tol, "max_iter": 10}, cfg["act"],
                        float(cfg.get("act_slope", 0.01)), batch=lambda: x)
    if bn:  # the rescaling forwards must not move BatchNorm's running averages
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert torch.all(m.running_mean == 0) and torch.all(m.running_var == 1)
                assert int(m.num_batches_tracked) == 0
    model.train()
    for m in model.modules():  # LSUV measures with dropout off; so does this check
        if isinstance(m, nn.Dropout):
            m.eval()
    got = _output_vars(model, x)
    assert len(got) == len(_weighted(model)) >= 4
    assert all(abs(v - 1) < tol for v in got), got
    lsuv = [r for r in report if "lsuv_iters" in r]
    assert len(lsuv) == len(got) and all(r["lsuv_converged"] for r in lsuv)
    assert any(r["lsuv_iters"] >= 1 for r in lsuv)  # it had work to do: orthonormal alone is not it


def test_lsuv_starts_orthonormal_and_reports_when_it_gives_up() -> None:
    torch.manual_seed(0)
    model = build_model("mlp", {"name": "mlp", "depth": 2, "width": 64, "act": "relu"}, (64,), 10, False)
    x = torch.randn(32, 64)
    report = apply_init(model, {"name": "lsuv", "tol": 1e-9, "max_iter": 0}, "relu", batch=lambda: x)
    w = model.layers[0].weight.detach()
    assert torch.allclose(w @ w.T, torch.eye(64), atol=1e-4)  # max_iter=0: orthonormal, untouched
    assert all(r["lsuv_iters"] == 0 and not r["lsuv_converged"] for r in report if "lsuv_iters" in r)


def test_lsuv_without_a_batch_is_a_clear_error() -> None:
    model = build_model("mlp", {"name": "mlp", "depth": 2, "width": 8, "act": "relu"}, (8,), 2, False)
    with pytest.raises(InitlabError, match="needs a batch"):
        apply_init(model, {"name": "lsuv"}, "relu")


def _resnet(bn: bool = False, block: str = "basic") -> nn.Module:
    torch.manual_seed(0)
    return build_model("resnet", {**RESNET, "block": block}, (3, 32, 32), 10, bn)


def test_fixup_zeroes_branch_ends_and_classifier_scales_the_rest_and_adds_scalars() -> None:
    model = _resnet()
    apply_init(model, {"name": "fixup", "mode": "fan_in"}, "relu")
    blocks = [m for m in model.modules() if hasattr(m, "branch")]
    L = len(blocks)
    assert L == 4
    for block in blocks:
        convs = [m for m in block.branch if isinstance(m, nn.Conv2d)]
        assert torch.all(convs[-1].weight == 0)
        fan_in = convs[0].weight[0].numel()
        expected = math.sqrt(2 / fan_in) * L ** -0.5  # He x L^(-1/(2m-2)), m = 2
        assert convs[0].weight.std().item() == pytest.approx(expected, rel=0.1)
        kinds = [type(m) for m in block.branch]
        # a scalar bias before each conv and activation; multiplier then bias at the end
        assert kinds == [Bias, nn.Conv2d, Bias, nn.ReLU, Bias, nn.Conv2d, Scale, Bias]
    assert torch.all(model.fc.weight == 0) and torch.all(model.fc.bias == 0)
    x = torch.randn(4, 3, 32, 32)
    y = model(x)
    assert torch.all(y == 0)  # the classifier starts at zero
    y.sum().backward()  # and every scalar is trainable
    assert all(p.grad is not None for m in model.modules() if isinstance(m, (Bias, Scale)) for p in m.parameters())


def test_fixup_blocks_start_as_their_shortcut() -> None:
    model = _resnet()
    apply_init(model, {"name": "fixup"}, "relu")
    block = model.stages[0][0]  # identity shortcut
    x = torch.randn(2, 8, 32, 32)
    assert torch.allclose(block(x), torch.relu(x))


def test_fixup_refuses_batchnorm_and_plain_nets() -> None:
    with pytest.raises(InitlabError, match="bn=false"):
        apply_init(_resnet(bn=True), {"name": "fixup"}, "relu")
    mlp = build_model("mlp", {"name": "mlp", "depth": 2, "width": 8, "act": "relu"}, (8,), 2, False)
    with pytest.raises(InitlabError, match="residual"):
        apply_init(mlp, {"name": "skipinit"}, "relu")


@pytest.mark.parametrize("block", ["basic", "preact"])
def test_skipinit_multiplies_every_branch_by_a_zero_alpha(block: str) -> None:
    model = _resnet(block=block)
    apply_init(model, {"name": "skipinit", "mode": "fan_in"}, "relu")
    blocks = [m for m in model.modules() if hasattr(m, "branch")]
    for b in blocks:
        assert isinstance(b.branch[-1], Scale) and b.branch[-1].scale.item() == 0.0
    first_conv = model.stem[0]
    assert first_conv.weight.std().item() == pytest.approx(math.sqrt(2 / first_conv.weight[0].numel()), rel=0.1)
    x = torch.randn(2, 8, 32, 32)
    expected = torch.relu(x) if block == "basic" else x
    assert torch.allclose(model.stages[0][0](x), expected)


def test_general_relu_is_leaky_minus_sub_clipped() -> None:
    act = GeneralRelu(leak=0.1, sub=0.4, maxv=2.0)
    x = torch.tensor([-2.0, 0.0, 1.0, 5.0])
    assert torch.allclose(act(x), torch.tensor([-0.6, -0.4, 0.6, 2.0]))


def test_kaiming_for_general_relu_uses_the_leak() -> None:
    torch.manual_seed(0)
    model = build_model("mlp", {"name": "mlp", "depth": 3, "width": 400, "act": "general_relu", "act_slope": 0.1},
                        (400,), 10, False)
    report = apply_init(model, {"name": "kaiming", "distribution": "normal", "mode": "fan_in"}, "general_relu", 0.1)
    gain = math.sqrt(2 / (1 + 0.1**2))
    assert model.layers[0].weight.std().item() == pytest.approx(gain / math.sqrt(400), rel=0.03)
    assert "nonlinearity=leaky_relu, a=0.1" in report[0]["init"]


def test_lsuv_run_reports_iterations_and_gives_unit_variance_at_step0(run) -> None:
    summary, run_dir = run("model=mlp", "model.depth=8", "model.width=64", "model.act=tanh", "data.shape=[64]",
                           "init=lsuv", "init.tol=0.05", "train.steps=0", "train.batch_size=32")
    lsuv = [r for r in summary["init"] if "lsuv_iters" in r]
    assert len(lsuv) == 9 and all(r["lsuv_converged"] for r in lsuv)
    s = load_run(run_dir).stats
    lin = s[(s.step == 0) & (s.kind == "act") & (s.module_type == "Linear")]
    assert np.all(np.abs(lin["std"] ** 2 - 1) < 0.05), lin["std"].tolist()  # step 0 is the LSUV batch


@pytest.mark.parametrize("init", ["fixup", "skipinit"])
def test_residual_inits_train_end_to_end(run, init: str) -> None:
    summary, run_dir = run("model=resnet", "model.blocks=[1,1]", "model.width=8", "data.shape=[3,16,16]",
                           f"init={init}", "train.steps=3", "telemetry=full")
    assert summary["status"] == "ok"
    s = load_run(run_dir).stats
    scalars = s[s.module_type.isin(["Scale", "Bias"]) & (s.kind == "weight")]
    assert len(scalars) and s[s.kind == "update"]["ratio"].notna().any()
