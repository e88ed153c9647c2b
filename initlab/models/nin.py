"""Network in Network (Lin et al. 2014) as in d2l: blocks of a kxk conv and two 1x1 convs,
max-pools between them, no fully-connected layer; the last block has one channel per
class and a global average pool makes the logits."""

import torch
from torch import nn

from initlab.models.base import ModelRequest, register, require_image
from initlab.models.blocks import conv_block
from initlab.models.cnn import check_alexnet


def _scaled(c: int, mult: float) -> int:
    return max(1, round(c * mult))


class NiN(nn.Module):
    """classic: d2l's layout at 224 px (11x11 stride 4 first); small: a 3x3 first block and
    ceil-mode 2x2 pools for 28/32 px. `width_mult` scales the hidden blocks."""

    CLASSIC_MIN_HW = 67  # 11x11/4 then three 3/2 pools leave at least one pixel

    def __init__(self, req: ModelRequest) -> None:
        super().__init__()
        w = float(req.cfg["width_mult"])
        c = [_scaled(x, w) for x in (96, 256, 384)]
        norm, act, pos = req.norm_layer(2), req.act_layer, req.norm_position

        def block(ni: int, nf: int, k: int, stride: int, padding: int, last: bool = False) -> list[nn.Module]:
            kw = dict(norm_layer=norm, act_layer=act, norm_position=pos)
            # the classifier (the last 1x1 conv) keeps d2l's ReLU but, as in every zoo model, no norm
            end = conv_block(nf, nf, 1, padding=0, **{**kw, "norm_layer": None} if last else kw)
            return [*conv_block(ni, nf, k, stride=stride, padding=padding, **kw),
                    *conv_block(nf, nf, 1, padding=0, **kw), *end]

        if _variant(req) == "classic":
            first, pool = block(req.in_shape[0], c[0], 11, 4, 0), (lambda: nn.MaxPool2d(3, 2))
        else:
            first, pool = block(req.in_shape[0], c[0], 3, 1, 1), (lambda: nn.MaxPool2d(2, 2, ceil_mode=True))
        self.features = nn.Sequential(
            *first, pool(),
            *block(c[0], c[1], 5, 1, 2), pool(),
            *block(c[1], c[2], 3, 1, 1), pool(),
            nn.Dropout(float(req.cfg["dropout"])),
            *block(c[2], req.num_classes, 3, 1, 1, last=True),  # one channel per class
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flatten(self.pool(self.features(x)))  # (B, classes, h, w) -> (B, classes)


def _variant(req: ModelRequest) -> str:
    v = req.cfg["variant"]
    return ("classic" if min(req.in_shape[1:]) >= 64 else "small") if v == "auto" else v


@register("nin", width="width_mult", check=check_alexnet)  # the same keys: variant, width_mult, dropout
def build_nin(req: ModelRequest) -> nn.Module:
    require_image("nin", req.in_shape, 1)
    if _variant(req) == "classic":
        require_image("nin (variant=classic)", req.in_shape, NiN.CLASSIC_MIN_HW)
    return NiN(req)
