"""Init semantics, exactly as the issue states them."""

import math

import pytest
import torch
from torch import nn

from initlab.errors import InitlabError
from initlab.init import apply_init
from initlab.models import build_model

MLP = {"name": "mlp", "depth": 3, "width": 400, "act": "relu", "act_slope": 0.01, "bn_position": "before_act"}


def _mlp(act: str = "relu", bn: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return build_model("mlp", {**MLP, "act": act}, (300,), 10, bn)


def _linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def test_default_is_reset_parameters_kaiming_uniform_sqrt5() -> None:
    model = _mlp()
    report = apply_init(model, {"name": "default"}, "relu")
    for lin in _linears(model):
        fan_in = lin.in_features
        # kaiming_uniform_(a=sqrt(5)): bound = sqrt(6 / ((1 + 5) * fan_in)) = 1/sqrt(fan_in)
        assert lin.weight.abs().max() <= 1 / math.sqrt(fan_in) + 1e-7
        assert lin.weight.std().item() == pytest.approx(1 / math.sqrt(3 * fan_in), rel=0.05)
        assert lin.bias.abs().max() > 0  # default keeps PyTorch's non-zero bias init
    assert {r["init"] for r in report if r["type"] == "Linear"} == {"kaiming_uniform_(a=sqrt(5))"}


@pytest.mark.parametrize("dist", ["uniform", "normal"])
@pytest.mark.parametrize("gain", [1.0, "auto"])
def test_xavier(dist: str, gain: object) -> None:
    model = _mlp(act="tanh")
    apply_init(model, {"name": "xavier", "distribution": dist, "gain": gain}, "tanh")
    g = 5 / 3 if gain == "auto" else 1.0
    for lin in _linears(model):
        expected = g * math.sqrt(2 / (lin.in_features + lin.out_features))
        assert lin.weight.std().item() == pytest.approx(expected, rel=0.05)
        assert torch.count_nonzero(lin.bias) == 0


@pytest.mark.parametrize("act,gain", [("relu", math.sqrt(2)), ("tanh", 5 / 3), ("linear", 1.0),
                                      ("leaky_relu", math.sqrt(2 / (1 + 0.01**2)))])
@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
def test_kaiming_gain_follows_activation(act: str, gain: float, mode: str) -> None:
    model = _mlp(act=act)
    apply_init(model, {"name": "kaiming", "distribution": "normal", "mode": mode}, act, 0.01)
    for lin in _linears(model):
        fan = lin.in_features if mode == "fan_in" else lin.out_features
        assert lin.weight.std().item() == pytest.approx(gain / math.sqrt(fan), rel=0.06)
        assert torch.count_nonzero(lin.bias) == 0


def test_kaiming_uniform_bound() -> None:
    model = _mlp()
    apply_init(model, {"name": "kaiming", "distribution": "uniform", "mode": "fan_in"}, "relu")
    lin = _linears(model)[1]
    assert lin.weight.abs().max() <= math.sqrt(2) * math.sqrt(3 / lin.in_features) + 1e-6


def test_normal_std_and_bn_identity() -> None:
    model = _mlp(bn=True)
    for m in model.modules():  # scramble so the test sees the init's effect
        if isinstance(m, nn.BatchNorm1d):
            nn.init.constant_(m.weight, 3.0)
            nn.init.constant_(m.bias, -1.0)
    report = apply_init(model, {"name": "normal", "std": 0.05}, "relu")
    for lin in _linears(model):
        assert lin.weight.std().item() == pytest.approx(0.05, rel=0.05)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert bns and all(torch.all(b.weight == 1) and torch.all(b.bias == 0) for b in bns)
    assert any(r["type"] == "BatchNorm1d" for r in report)


def test_scheme_touching_nothing_is_an_error() -> None:
    with pytest.raises(InitlabError, match="touched no parameter"):
        apply_init(nn.Sequential(nn.ReLU()), {"name": "kaiming"}, "relu")


def test_unknown_scheme_lists_choices() -> None:
    with pytest.raises(InitlabError, match="choose from default, fixup, kaiming, lsuv, normal, orthogonal, skipinit, xavier"):
        apply_init(_mlp(), {"name": "magic"}, "relu")


@pytest.mark.parametrize("gain,act", [(1.0, "relu"), ("auto", "tanh")])
def test_orthogonal(gain: object, act: str) -> None:
    model = build_model("mlp", {**MLP, "width": 64, "act": act}, (64,), 10, False)
    apply_init(model, {"name": "orthogonal", "gain": gain}, act)
    g = 5 / 3 if gain == "auto" else 1.0
    w = model.layers[2].weight.detach()  # 64 x 64 hidden layer
    torch.testing.assert_close(w @ w.T, g**2 * torch.eye(64), atol=1e-4, rtol=0)
    assert torch.count_nonzero(model.layers[2].bias) == 0


def test_zero_last_bn_makes_every_block_its_shortcut() -> None:
    torch.manual_seed(0)
    model = build_model("resnet", {"width": 8, "blocks": [1, 1, 1, 1]}, (3, 32, 32), 10, True)
    report = apply_init(model, {"name": "kaiming", "zero_last_bn": True}, "relu")
    zeroed = [r for r in report if "last norm" in r["init"]]
    assert len(zeroed) == 4  # one per block
    block = model.stages[1][0]
    assert torch.all(block.branch[-1].weight == 0)
    model.eval()
    x = torch.randn(2, 8, 16, 16)
    torch.testing.assert_close(block(x), torch.relu(block.shortcut(x)))
    with pytest.raises(InitlabError, match="needs residual blocks with a norm layer"):
        apply_init(_mlp(), {"name": "kaiming", "zero_last_bn": True}, "relu")
