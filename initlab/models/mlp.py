"""Multilayer perceptron: the 100-layer lesson and the Glorot/He deep-net studies."""

import math

import torch
from torch import nn

from initlab.checks import check_int
from initlab.models.base import ModelRequest, register
from initlab.models.blocks import check_zoo_model, linear_block


class MLP(nn.Module):
    """flatten -> `depth` x (Linear [BN] act) -> Linear classifier."""

    def __init__(self, req: ModelRequest) -> None:
        super().__init__()
        depth, width = int(req.cfg["depth"]), int(req.cfg["width"])
        n_in = math.prod(req.in_shape)
        self.flatten = nn.Flatten()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += linear_block(
                n_in if i == 0 else width, width, req.norm_layer(1), req.act_layer, req.norm_position
            )
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(width, req.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)  # (B, N)
        return self.head(self.layers(x))  # (B, classes)


def check_mlp(cfg: object) -> None:
    check_zoo_model(cfg)
    check_int(cfg, "model.depth", 1)
    check_int(cfg, "model.width", 1)


@register("mlp", width="width", check=check_mlp)
def build_mlp(req: ModelRequest) -> nn.Module:
    return MLP(req)
