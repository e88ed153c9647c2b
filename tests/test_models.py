"""The model zoo: every model x bn x position x act x input shape trains; faithful sizes."""

import math
import re

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from initlab.models import MODELS, ShapeError, build_model
from initlab.models.summary import describe

SMALL = {  # CPU-sized knobs so the whole matrix runs in seconds
    "mlp": {"depth": 2, "width": 16},
    "conv4": {"channels": [4, 8, 8]},
    "lenet": {},
    "alexnet": {"width_mult": 0.0625, "dropout": 0.5},
    "vgg": {"cfg": "vgg11", "width_mult": 0.0625, "dropout": 0.5},
    "resnet": {"width": 4, "blocks": [1, 1, 1, 1]},
    "nin": {"width_mult": 0.0625, "dropout": 0.5},
}
ZOO = [name for name in MODELS if name in SMALL]  # external models (torchvision, target): test_external
SHAPES = [(1, 28, 28), (3, 32, 32), (3, 224, 224)]
ACTS = ["relu", "leaky_relu", "tanh", "sigmoid", "gelu", "linear"]
WEIGHTED = (nn.Conv2d, nn.Linear)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def _build(name: str, shape, bn: bool, **cfg) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, {**SMALL[name], **cfg}, shape, 10, bn)


def _forward_order(model: nn.Module, shape) -> list[nn.Module]:
    order: list[nn.Module] = []
    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(lambda m, a, o: order.append(m)) for m in leaves]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(2, *shape))
    for h in handles:
        h.remove()
    return order


def _cases():
    for name in ZOO:
        for shape in SHAPES:
            # The full act x bn x position product at 28/32 px; the 224 px nets with relu only.
            for act in ACTS if shape[1] < 224 else ["relu"]:
                for bn in (False, True):
                    for pos in ("before_act", "after_act") if bn else ("before_act",):
                        yield name, shape, act, bn, pos


@pytest.mark.parametrize("name,shape,act,bn,pos", list(_cases()))
def test_forward_backward_every_combination(name, shape, act, bn, pos) -> None:
    blocks = ["basic", "preact"] if name == "resnet" else [None]
    for block in blocks:
        extra = {"block": block} if block else {}
        model = _build(name, shape, bn, act=act, bn_position=pos, **extra)
        batch = 2 if shape[1] == 224 else 4
        out = model(torch.randn(batch, *shape))
        assert out.shape == (batch, 10)
        loss = F.cross_entropy(out, torch.randint(0, 10, (batch,)))
        loss.backward()
        assert math.isfinite(loss.item())
        for pname, p in model.named_parameters():
            assert p.grad is not None, f"{pname} got no gradient"


def test_mlp_takes_flat_inputs() -> None:
    assert _build("mlp", (256,), True)(torch.randn(3, 256)).shape == (3, 10)


@pytest.mark.parametrize("name", [n for n in ZOO if n != "mlp"])
def test_bn_placement(name: str) -> None:
    shape = (3, 32, 32)
    assert not any(isinstance(m, NORMS) for m in _build(name, shape, False).modules())
    for pos in ("before_act", "after_act"):
        order = _forward_order(_build(name, shape, True, bn_position=pos), shape)
        weighted = [i for i, m in enumerate(order) if isinstance(m, WEIGHTED)]
        classifier = weighted[-1]
        for i in weighted[:-1]:
            # The next norm-or-weighted module after each conv/linear is its BN (an act may sit between).
            nxt = next(m for m in order[i + 1:] if isinstance(m, (*NORMS, *WEIGHTED)))
            assert isinstance(nxt, NORMS), f"{name} {pos}: {order[i]} is followed by {nxt}"
            assert nxt.num_features == order[i].weight.shape[0]
            if pos == "after_act" and i + 1 < len(order) and not isinstance(order[i + 1], NORMS):
                assert isinstance(order[i + 2], NORMS)
        assert not any(isinstance(m, NORMS) for m in order[classifier + 1:])


def test_bias_off_where_bn_follows() -> None:
    model = _build("resnet", (3, 32, 32), True)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.bias is None for c in convs)
    assert all(c.bias is not None for c in _build("resnet", (3, 32, 32), False).modules() if isinstance(c, nn.Conv2d))


def test_preact_resnet_norms_precede_convs() -> None:
    model = _build("resnet", (3, 32, 32), True, block="preact")
    order = _forward_order(model, (3, 32, 32))
    blocks = [m for m in model.modules() if type(m).__name__ == "PreActBlock"]
    assert blocks
    for b in blocks:
        assert isinstance(b.branch[0], nn.BatchNorm2d) and isinstance(b.branch[2], nn.Conv2d)
    assert isinstance(model.post[0], nn.BatchNorm2d)
    assert any(isinstance(m, nn.BatchNorm2d) for m in order)


def test_resnet_without_bn_is_still_residual() -> None:
    model = _build("resnet", (3, 32, 32), False, blocks=[2, 1, 1, 1])
    block = model.stages[0][1]  # same shape in and out: identity shortcut
    assert block.shortcut is None
    x = torch.randn(2, 4, 8, 8)
    for p in block.branch.parameters():
        nn.init.zeros_(p)
    torch.testing.assert_close(block(x), torch.relu(x))  # zero branch -> act(x)


def test_d2l_resnet_walk_reaches_512_channels_at_7x7() -> None:
    model = build_model("resnet", {"width": 64, "blocks": [2, 2, 2, 2]}, (1, 224, 224), 10, True)
    model.eval()
    with torch.no_grad():
        feats = model.stages(model.stem(torch.zeros(1, 1, 224, 224)))
    assert feats.shape == (1, 512, 7, 7)


def _n(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_faithful_sizes_match_torchvision() -> None:
    r18 = build_model("resnet", {"width": 64, "blocks": [2, 2, 2, 2]}, (3, 224, 224), 1000, True)
    assert _n(r18) == _n(torchvision.models.resnet18()) == 11_689_512
    r34 = build_model("resnet", {"width": 64, "blocks": [3, 4, 6, 3]}, (3, 224, 224), 1000, True)
    assert _n(r34) == _n(torchvision.models.resnet34())
    vgg = build_model("vgg", {"cfg": "vgg11", "width_mult": 1.0, "torchvision_compat": True},
                      (3, 224, 224), 1000, True)
    assert _n(vgg) == _n(torchvision.models.vgg11_bn())
    alex = build_model("alexnet", {"width_mult": 1.0}, (3, 224, 224), 1000, False)
    assert _n(alex) == _n(torchvision.models.alexnet())


@pytest.mark.parametrize("name,shape,needs", [
    ("conv4", (256,), "it needs images [C,H,W]"),
    ("resnet", (784,), "it needs images [C,H,W]"),
    ("lenet", (1, 11, 11), "the smallest input it accepts is 12x12"),
    ("alexnet", (3, 62, 62), "the smallest input it accepts is 63x63"),
])
def test_impossible_shapes_are_named(name: str, shape, needs: str) -> None:
    cfg = {"variant": "classic"} if name == "alexnet" else {}
    with pytest.raises(ShapeError, match=rf"model={name}.*cannot take input shape {re.escape(str(list(shape)))}.*{re.escape(needs)}"):
        build_model(name, {**SMALL[name], **cfg}, shape, 10, False)


def test_smallest_accepted_sizes_work() -> None:
    outs = [_build("lenet", (1, 12, 12), False)(torch.randn(2, 1, 12, 12)),
            build_model("alexnet", {"width_mult": 0.0625, "variant": "classic"}, (3, 63, 63), 10, False).eval()(
                torch.randn(2, 3, 63, 63))]
    for out in outs:
        assert out.shape == (2, 10) and torch.isfinite(out).all()


def _flop_counter_macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    """torch's own count; train mode and the math attention kernel, whose matmuls it sees (the
    fused eval-mode attention and the CPU flash kernel it does not count)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(torch.zeros((2, *shape)))
    return counter.get_total_flops() // 2 // 2  # FLOPs -> MACs, per sample


def _external(name: str) -> nn.Module:
    import torchvision

    if name == "torchvision_vit":
        return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                    hidden_dim=16, mlp_dim=32, num_classes=10)
    if name == "resnet18":
        return torchvision.models.resnet18(num_classes=10)
    return nn.Sequential(nn.ConvTranspose2d(3, 4, 3, stride=2), nn.Flatten())


@pytest.mark.parametrize("name,shape", [("mlp", (256,)), ("conv4", (1, 28, 28)), ("lenet", (1, 28, 28)),
                                        ("alexnet", (3, 32, 32)), ("vgg", (3, 32, 32)), ("resnet", (3, 32, 32)),
                                        ("nin", (3, 32, 32)), ("vit", (3, 32, 32)), ("torchvision_vit", (3, 32, 32)),
                                        ("resnet18", (3, 64, 64)),
                                        ("conv_transpose", (3, 8, 8))])
def test_macs_from_hooks_equal_torchs_flop_counter(name: str, shape: tuple[int, ...]) -> None:
    pytest.importorskip("torch.nn.attention", reason="the reference counter's attention kernel choice: torch >= 2.3")
    model = build_model(name, {}, shape, 10, bn=name != "vit") if name in MODELS.choices() else _external(name)
    assert describe(model, shape).macs == _flop_counter_macs(model, shape) > 0
