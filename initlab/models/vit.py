"""A small Vision Transformer (Dosovitskiy et al. 2021) for 28-32 px images, with the norm
before each sub-layer (pre-LN: x + f(LN(x))) or after each residual add (post-LN:
LN(x + f(x)), the original Transformer's; Xiong et al. 2020 compare the two at init).

Patches of `patch` px become `dim`-wide tokens (a strided conv), a learned positional
embedding is added, `depth` blocks of multi-head self-attention and a GELU MLP follow, and
the mean token goes to a Linear classifier (no class token). Every block ends in a `Stream`
module, so telemetry sees the residual stream after each block beside the attention output
(`attn.proj`) and the MLP output (`mlp.fc2`).
"""

from collections.abc import Callable

import torch
from torch import nn

from initlab.checks import check_int, check_num, get_value, is_int
from initlab.errors import ConfigError, InitlabError
from initlab.models.base import ModelRequest, register, require_image
from initlab.models.blocks import check_zoo_model


class Stream(nn.Module):
    """The residual stream at this point: the identity, as a module telemetry records."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class PosEmbed(nn.Module):
    """Adds a learned positional embedding, N(0, 0.02^2) truncated at 2 std as in ViT/timm."""

    def __init__(self, tokens: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(1, tokens, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.weight, std=0.02, a=-0.04, b=0.04)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.weight


class Attention(nn.Module):
    """Multi-head self-attention: one qkv Linear, scaled dot-product attention, an output Linear."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.logit_scale = self.head_dim ** -0.5  # μP (initlab.width) sets √d₀/d
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def attention_macs(self, x: torch.Tensor) -> int:
        """q @ k^T and attn @ v on input x (B, T, D): the MACs no Linear child counts."""
        b, t, d = x.shape
        return 2 * b * t * t * d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape  # (B, T, D)
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        # written out, not F.scaled_dot_product_attention: vmap (the stacked probe) has no
        # batching rule for its CPU kernel, and at 49-64 tokens the two are equally fast
        attn = (q @ k.transpose(-2, -1) * self.logit_scale).softmax(-1)  # (B, heads, T, T)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, act: Callable[[], nn.Module] | None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act() if act is not None else nn.Identity()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, req: ModelRequest) -> None:
        super().__init__()
        norm = req.norm_layer(3) or (lambda c: nn.Identity())
        self.pre = req.norm_position == "pre"
        self.norm1 = norm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = norm(dim)
        self.mlp = FeedForward(dim, hidden, req.act_layer)
        self.out = Stream()
        self.branch_mult = 1.0  # depth-μP / CompleteP (initlab.width) set 1/√L or 1/L

    def _branch(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.branch_mult == 1.0 else y * self.branch_mult

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre:
            x = x + self._branch(self.attn(self.norm1(x)))
            x = x + self._branch(self.mlp(self.norm2(x)))
        else:
            x = self.norm1(x + self._branch(self.attn(x)))
            x = self.norm2(x + self._branch(self.mlp(x)))
        return self.out(x)


class ViT(nn.Module):
    def __init__(self, req: ModelRequest) -> None:
        super().__init__()
        c, h, w = req.in_shape
        p, dim, heads = int(req.cfg["patch"]), int(req.cfg["dim"]), int(req.cfg["heads"])
        if dim % heads:
            raise InitlabError(f"model.dim={dim} is invalid: it must be a multiple of model.heads={heads}")
        self.patch_embed = nn.Conv2d(c, dim, p, stride=p)
        self.pos_embed = PosEmbed((h // p) * (w // p), dim)
        hidden = int(round(dim * float(req.cfg["mlp_ratio"])))
        self.blocks = nn.Sequential(*[Block(dim, heads, hidden, req) for _ in range(int(req.cfg["depth"]))])
        # pre-LN leaves the stream un-normalised: one last norm before the head (post-LN ends normalised)
        final = req.norm_layer(3) if req.norm_position == "pre" else None
        self.norm = final(dim) if final is not None else nn.Identity()
        self.head = nn.Linear(dim, req.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, tokens, dim)
        x = self.norm(self.blocks(self.pos_embed(x)))
        return self.head(x.mean(1))  # (B, classes)


def check_vit(cfg: object) -> None:
    check_zoo_model(cfg, positions=("pre", "post"))
    for key in ("model.depth", "model.patch", "model.dim", "model.heads"):
        check_int(cfg, key, 1)
    check_num(cfg, "model.mlp_ratio", 0.0, strict=True)
    dim, heads = get_value(cfg, "model.dim"), get_value(cfg, "model.heads")
    if is_int(dim) and is_int(heads) and heads >= 1 and dim % heads:
        raise ConfigError("model.dim", dim, f"expected a multiple of model.heads={heads}")


@register("vit", default_norm="layer", width="dim", check=check_vit)
def build_vit(req: ModelRequest) -> nn.Module:
    require_image("vit", req.in_shape, int(req.cfg["patch"]))
    return ViT(req)
