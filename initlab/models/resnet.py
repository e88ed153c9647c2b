"""ResNet (He et al. 2015) with basic or pre-activation (He et al. 2016) blocks.

norm=none (bn=false) leaves a valid residual network (the Fixup/SkipInit studies need one); the
1x1 projection shortcut appears only where the shape changes, as in d2l's `Residual`.
"""

from collections.abc import Callable

import torch
from torch import nn

from initlab.checks import check_choice, check_int, check_int_list
from initlab.models.base import ModelRequest, register, require_image
from initlab.models.blocks import check_zoo_model, conv_block


def _projection(ni: int, nf: int, stride: int, norm: Callable[[int], nn.Module] | None) -> nn.Module | None:
    if ni == nf and stride == 1:
        return None
    conv = nn.Conv2d(ni, nf, 1, stride=stride, bias=norm is None)
    return nn.Sequential(conv, norm(nf)) if norm is not None else nn.Sequential(conv)


class BasicBlock(nn.Module):
    """act(branch(x) + shortcut(x)); branch = conv3x3(stride)-BN-act-conv3x3-BN."""

    def __init__(self, ni: int, nf: int, stride: int, req: ModelRequest) -> None:
        super().__init__()
        norm, act = req.norm_layer(2), req.act_layer
        second = conv_block(nf, nf, 3, norm_layer=norm, act_layer=None)  # no act before the add
        self.branch = nn.Sequential(
            *conv_block(ni, nf, 3, stride=stride, norm_layer=norm, act_layer=act, norm_position=req.norm_position),
            *second,
        )
        self.shortcut = _projection(ni, nf, stride, norm)
        self.branch_mult = 1.0  # depth-μP / CompleteP (initlab.width) set 1/√L or 1/L
        self.act = act() if act is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)  # (B, nf, H/s, W/s)
        branch = self.branch(x)
        out = (branch if self.branch_mult == 1.0 else branch * self.branch_mult) + identity
        return self.act(out) if self.act is not None else out


class PreActBlock(nn.Module):
    """branch(x) + shortcut(x); branch = BN-act-conv3x3(stride)-BN-act-conv3x3 (He et al. 2016)."""

    def __init__(self, ni: int, nf: int, stride: int, req: ModelRequest) -> None:
        super().__init__()
        norm, act, pos = req.norm_layer(2), req.act_layer, req.norm_position

        def norm_act(c: int) -> list[nn.Module]:
            n = [norm(c)] if norm is not None else []
            a = [act()] if act is not None else []
            return n + a if pos == "before_act" else a + n

        bias = norm is None
        self.branch = nn.Sequential(
            *norm_act(ni), nn.Conv2d(ni, nf, 3, stride=stride, padding=1, bias=bias),
            *norm_act(nf), nn.Conv2d(nf, nf, 3, padding=1, bias=bias),
        )
        # The projection sees the raw input; no norm of its own (the next block normalises).
        self.shortcut = None if ni == nf and stride == 1 else nn.Conv2d(ni, nf, 1, stride=stride, bias=bias)
        self.branch_mult = 1.0  # depth-μP / CompleteP (initlab.width) set 1/√L or 1/L

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        branch = self.branch(x)
        return (branch if self.branch_mult == 1.0 else branch * self.branch_mult) + identity  # (B, nf, H/s, W/s)


BLOCKS = {"basic": BasicBlock, "preact": PreActBlock}


class ResNet(nn.Module):
    """stem -> 4 stages of blocks (channels width x 1, 2, 4, 8) -> global pool -> classifier."""

    def __init__(self, req: ModelRequest) -> None:
        super().__init__()
        width, blocks = int(req.cfg["width"]), [int(b) for b in req.cfg["blocks"]]
        kind = req.cfg["block"]
        norm, act, pos = req.norm_layer(2), req.act_layer, req.norm_position
        stem = req.cfg["stem"]
        large = min(req.in_shape[1:]) >= 64 if stem == "auto" else stem == "large"
        if large:  # ImageNet: 7x7 stride 2 + max-pool, /4 before the first stage
            self.stem = nn.Sequential(
                *conv_block(req.in_shape[0], width, 7, stride=2, padding=3, norm_layer=norm,
                            act_layer=act, norm_position=pos),
                nn.MaxPool2d(3, 2, padding=1),
            )
        else:  # CIFAR/MNIST: one 3x3 conv, full resolution
            self.stem = nn.Sequential(*conv_block(req.in_shape[0], width, 3, norm_layer=norm,
                                                  act_layer=act, norm_position=pos))
        stages, ni = [], width
        for i, n in enumerate(blocks):
            nf = width * 2**i
            stage = [BLOCKS[kind](ni if j == 0 else nf, nf, (1 if i == 0 else 2) if j == 0 else 1, req)
                     for j in range(n)]
            stages.append(nn.Sequential(*stage))
            ni = nf
        self.stages = nn.Sequential(*stages)
        # Pre-activation nets end un-normalised: one last BN-act before pooling.
        post: list[nn.Module] = []
        if kind == "preact":
            post = ([norm(ni)] if norm is not None else []) + ([act()] if act is not None else [])
        self.post = nn.Sequential(*post)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(ni, req.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))  # (B, 8*width, H/32, W/32) with the large stem
        return self.fc(self.flatten(self.pool(self.post(x))))  # (B, classes)


def check_resnet(cfg: object) -> None:
    check_zoo_model(cfg)
    check_int(cfg, "model.width", 1)
    check_int_list(cfg, "model.blocks", (1, 2, 3, 4, 5, 6),
                   "expected 1 to 6 positive integers, e.g. [2,2,2,2] (ResNet-18) or [3,4,6,3]")
    check_choice(cfg, "model.block", ["basic", "preact"])
    check_choice(cfg, "model.stem", ["auto", "small", "large"])


@register("resnet", width="width", check=check_resnet)
def build_resnet(req: ModelRequest) -> nn.Module:
    require_image("resnet", req.in_shape, 1)
    return ResNet(req)
