"""Plain convolutional nets: the fast.ai 4-conv net, LeNet-5, AlexNet and VGG."""

import torch
from torch import nn

from initlab.checks import check_bool, check_choice, check_int_list, check_num
from initlab.models.base import ModelRequest, register, require_image
from initlab.models.blocks import check_zoo_model, conv_block, linear_block
from initlab.nn.norms import NormSpec


class Conv4(nn.Module):
    """1->8 k5 s2, 8->16 k3 s2, 16->32 k3 s2, 32->classes k3 s2, average pool, flatten."""

    def __init__(self, req: ModelRequest) -> None:
        super().__init__()
        c1, c2, c3 = (int(c) for c in req.cfg["channels"])
        norm, act, pos = req.norm_layer(2), req.act_layer, req.norm_position
        self.features = nn.Sequential(
            *conv_block(req.in_shape[0], c1, 5, stride=2, norm_layer=norm, act_layer=act, norm_position=pos),
            *conv_block(c1, c2, 3, stride=2, norm_layer=norm, act_layer=act, norm_position=pos),
            *conv_block(c2, c3, 3, stride=2, norm_layer=norm, act_layer=act, norm_position=pos),
            nn.Conv2d(c3, req.num_classes, 3, stride=2, padding=1),  # the classifier: no norm, no act
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, classes, H/16, W/16)
        return self.flatten(self.pool(x))  # (B, classes)


def check_conv4(cfg: object) -> None:
    check_zoo_model(cfg)
    check_int_list(cfg, "model.channels", (3,), "expected three positive integers, e.g. [8,16,32]")


@register("conv4", width="channels", check=check_conv4)
def build_conv4(req: ModelRequest) -> nn.Module:
    require_image("conv4", req.in_shape, 1)
    return Conv4(req)


def _flat_features(features: nn.Module, in_shape: tuple[int, ...]) -> int:
    """Size of `features`' flattened output for one sample (eval mode: BN needs no batch)."""
    was_training = features.training
    features.eval()
    with torch.no_grad():
        n = features(torch.zeros(1, *in_shape)).numel()
    features.train(was_training)
    return n


def _mlp_head(n_in: int, hidden: list[int], classes: int, req: ModelRequest, dropout: float,
              dropout_first: bool) -> nn.Sequential:
    """Hidden Linear blocks then the classifier (no norm, no act). torchvision's AlexNet puts
    dropout before each hidden Linear, VGG after; `dropout_first` picks which."""
    layers: list[nn.Module] = []
    for h in hidden:
        block = linear_block(n_in, h, req.norm_layer(1, optional=True), req.act_layer, req.norm_position)
        drop = [nn.Dropout(dropout)] if dropout > 0 else []
        layers += drop + block if dropout_first else block + drop
        n_in = h
    return nn.Sequential(*layers, nn.Linear(n_in, classes))


class LeNet(nn.Module):
    """LeNet-5 as in d2l: conv5(pad 2) -> pool -> conv5 -> pool -> fc120 -> fc84 -> classes."""

    MIN_HW = 12

    def __init__(self, req: ModelRequest) -> None:
        super().__init__()
        norm, act, pos = req.norm_layer(2), req.act_layer, req.norm_position
        pool = nn.AvgPool2d if req.cfg["pool"] == "avg" else nn.MaxPool2d
        self.features = nn.Sequential(
            *conv_block(req.in_shape[0], 6, 5, padding=2, norm_layer=norm, act_layer=act, norm_position=pos),
            pool(2, 2),
            *conv_block(6, 16, 5, padding=0, norm_layer=norm, act_layer=act, norm_position=pos),
            pool(2, 2),
            nn.Flatten(),
        )
        self.classifier = _mlp_head(_flat_features(self.features, req.in_shape), [120, 84],
                                    req.num_classes, req, 0.0, False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # (B, C, H, W) -> (B, classes)


def _scaled(c: int, mult: float) -> int:
    return max(1, round(c * mult))


def _variant(req: ModelRequest) -> str:
    """`auto`: the ImageNet layout from 64 px up, the small-image layout below."""
    v = req.cfg["variant"]
    return ("classic" if min(req.in_shape[1:]) >= 64 else "small") if v == "auto" else v


class AlexNet(nn.Module):
    """torchvision's AlexNet (5 conv + 3 fc, dropout) at 224 px; a 3x3-stem variant with
    ceil-mode pools for 28/32 px. `width_mult` scales every conv and hidden fc."""

    def __init__(self, req: ModelRequest) -> None:
        super().__init__()
        w = float(req.cfg["width_mult"])
        c = [_scaled(x, w) for x in (64, 192, 384, 256, 256)]
        norm, act, pos = req.norm_layer(2), req.act_layer, req.norm_position
        kw = dict(norm_layer=norm, act_layer=act, norm_position=pos)
        if _variant(req) == "classic":
            stem, pool, out_hw = conv_block(req.in_shape[0], c[0], 11, stride=4, padding=2, **kw), \
                (lambda: nn.MaxPool2d(3, 2)), 6
        else:
            stem, pool, out_hw = conv_block(req.in_shape[0], c[0], 3, **kw), \
                (lambda: nn.MaxPool2d(2, 2, ceil_mode=True)), 2
        self.features = nn.Sequential(
            *stem, pool(),
            *conv_block(c[0], c[1], 5, **kw), pool(),
            *conv_block(c[1], c[2], 3, **kw),
            *conv_block(c[2], c[3], 3, **kw),
            *conv_block(c[3], c[4], 3, **kw), pool(),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(out_hw)
        self.flatten = nn.Flatten()
        hidden = _scaled(4096, w)
        self.classifier = _mlp_head(c[4] * out_hw * out_hw, [hidden, hidden], req.num_classes, req,
                                    float(req.cfg["dropout"]), True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))  # (B, C, 6, 6) classic, (B, C, 2, 2) small
        return self.classifier(self.flatten(x))  # (B, classes)


VGG_PLANS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """VGG plans of 3x3 convs and max-pools. Classic: 7x7 average pool and 4096-wide fc
    (torchvision's layout); small: ceil-mode pools, global pool and a 512-wide classifier."""

    def __init__(self, req: ModelRequest) -> None:
        super().__init__()
        w = float(req.cfg["width_mult"])
        classic = _variant(req) == "classic"
        compat = bool(req.cfg["torchvision_compat"])
        norm, act, pos = req.norm_layer(2), req.act_layer, req.norm_position
        layers: list[nn.Module] = []
        c_in = req.in_shape[0]
        for v in VGG_PLANS[req.cfg["cfg"]]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=not classic))
                continue
            c_out = _scaled(int(v), w)
            block = conv_block(c_in, c_out, 3, norm_layer=norm, act_layer=act, norm_position=pos)
            if compat and norm is not None:
                conv = block[0]  # torchvision's vgg*_bn keeps the bias before BN
                block[0] = nn.Conv2d(conv.in_channels, conv.out_channels, 3, padding=1, bias=True)
            layers += block
            c_in = c_out
        self.features = nn.Sequential(*layers)
        out_hw = 7 if classic else 1
        self.avgpool = nn.AdaptiveAvgPool2d(out_hw)
        self.flatten = nn.Flatten()
        hidden = _scaled(4096 if classic else 512, w)
        head_req = ModelRequest(req.cfg, req.in_shape, req.num_classes, NormSpec() if compat else req.norm)
        self.classifier = _mlp_head(c_in * out_hw * out_hw, [hidden, hidden], req.num_classes, head_req,
                                    float(req.cfg["dropout"]), False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))  # (B, C, 7, 7) classic, (B, C, 1, 1) small
        return self.classifier(self.flatten(x))  # (B, classes)


def check_lenet(cfg: object) -> None:
    check_zoo_model(cfg)
    check_choice(cfg, "model.pool", ["avg", "max"])


@register("lenet", check=check_lenet)
def build_lenet(req: ModelRequest) -> nn.Module:
    require_image("lenet", req.in_shape, LeNet.MIN_HW)
    return LeNet(req)


def _require_variant(name: str, req: ModelRequest, classic_min_hw: int) -> None:
    """The small layout takes any image; the classic one needs its downsampling's minimum."""
    require_image(name, req.in_shape, 1)
    if _variant(req) == "classic":
        require_image(f"{name} (variant=classic)", req.in_shape, classic_min_hw)


def check_alexnet(cfg: object) -> None:
    check_zoo_model(cfg)
    check_choice(cfg, "model.variant", ["auto", "classic", "small"])
    check_num(cfg, "model.width_mult", 0.0, strict=True)
    check_num(cfg, "model.dropout", 0.0, strict=False, hi=1.0)


@register("alexnet", width="width_mult", check=check_alexnet)
def build_alexnet(req: ModelRequest) -> nn.Module:
    _require_variant("alexnet", req, 63)
    return AlexNet(req)


def check_vgg(cfg: object) -> None:
    check_alexnet(cfg)
    check_choice(cfg, "model.cfg", VGG_PLANS)
    check_bool(cfg, "model.torchvision_compat")


@register("vgg", width="width_mult", check=check_vgg)
def build_vgg(req: ModelRequest) -> nn.Module:
    _require_variant("vgg", req, 32)
    return VGG(req)
