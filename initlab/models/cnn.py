"""Plain convolutional nets: the fast.ai 4-conv net (lesson 9's vanishing activations)."""

import torch
from torch import nn

from initlab.models import ModelRequest, register, require_image
from initlab.models.blocks import conv_block


class Conv4(nn.Module):
    """1->8 k5 s2, 8->16 k3 s2, 16->32 k3 s2, 32->classes k3 s2, average pool, flatten."""

    def __init__(self, req: ModelRequest) -> None:
        super().__init__()
        c1, c2, c3 = (int(c) for c in req.cfg.get("channels", (8, 16, 32)))
        norm, act, pos = req.norm_layer(2), req.act_layer, req.bn_position
        self.features = nn.Sequential(
            *conv_block(req.in_shape[0], c1, 5, stride=2, norm_layer=norm, act_layer=act, bn_position=pos),
            *conv_block(c1, c2, 3, stride=2, norm_layer=norm, act_layer=act, bn_position=pos),
            *conv_block(c2, c3, 3, stride=2, norm_layer=norm, act_layer=act, bn_position=pos),
            nn.Conv2d(c3, req.num_classes, 3, stride=2, padding=1),  # the classifier: no norm, no act
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, classes, H/16, W/16)
        return self.flatten(self.pool(x))  # (B, classes)


@register("conv4")
def build_conv4(req: ModelRequest) -> nn.Module:
    require_image("conv4", req.in_shape, 1)
    return Conv4(req)
