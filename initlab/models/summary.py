"""Know the model: per-layer output shapes, parameters, and multiply-accumulates.

MACs are counted from forward hooks on the layers that multiply (linear, convolution,
attention), with the formulas torch's FlopCounterMode uses; the tests hold the two equal.
FlopCounterMode itself is not used here: entering any dispatch mode imports torch._dynamo,
about 2 s of every run's start-up on a 2-core CPU.
"""

import math
from dataclasses import dataclass

import torch
from rich.table import Table
from torch import nn

from initlab.nn.hooks import hooked
from initlab.nn.kinds import CONVS


@dataclass
class ModelInfo:
    rows: list[tuple[str, str, str, int]]  # (layer, type, output shape, params)
    params: int
    macs: int  # multiply-accumulates per sample, forward

    def table(self, title: str) -> Table:
        t = Table(title=title, show_lines=False)
        for col, just in (("layer", "left"), ("type", "left"), ("output", "left"), ("params", "right")):
            t.add_column(col, justify=just)
        for layer, kind, shape, n in folded(self.rows):
            t.add_row(layer, kind, shape, f"{n:,}" if n else "")
        t.add_section()
        t.add_row("total", "", f"{self.macs:,} MACs/sample", f"{self.params:,}")
        return t


def folded(rows: list[tuple[str, str, str, int]], longest: int = 4) -> list[tuple[str, str, str, int]]:
    """The table's rows with each run of three or more identical blocks (a period of up to
    `longest` rows alike in type, output and parameters) folded into one row per block member:
    a 100-layer MLP reads as its first layer, `layers.1 … layers.98 (×49)` and its head."""
    def same(a: int, b: int) -> bool:
        return rows[a][1:] == rows[b][1:]

    out, i = [], 0
    while i < len(rows):
        period, times = 1, 1
        for p in range(1, longest + 1):
            k = 1
            while i + (k + 1) * p <= len(rows) and all(same(i + k * p + j, i + j) for j in range(p)):
                k += 1
            if k >= 3 and k * p > period * times:
                period, times = p, k
        if times < 3:
            out.append(rows[i])
            i += 1
            continue
        for j in range(period):
            first, last = rows[i + j], rows[i + (times - 1) * period + j]
            out.append((f"{first[0]} … {last[0]} (×{times})", *first[1:]))
        i += period * times
    return out


def _macs(m: nn.Module, args: tuple, out: object) -> int:
    """Multiply-accumulates of one call of `m` on the batch (0 for layers that do not multiply)."""
    if isinstance(m, nn.Linear) and isinstance(out, torch.Tensor):
        return out.numel() * m.in_features
    if isinstance(m, CONVS) and isinstance(out, torch.Tensor):
        k = math.prod(m.kernel_size)
        if m.transposed:  # every input element meets out_channels/groups * k weights
            return args[0].numel() * (m.out_channels // m.groups) * k
        return out.numel() * (m.in_channels // m.groups) * k
    if isinstance(m, nn.MultiheadAttention):
        q, kv = args[0], args[1]
        lq, lk = (q.shape[1], kv.shape[1]) if m.batch_first else (q.shape[0], kv.shape[0])
        batch = q.numel() // (lq * q.shape[-1])
        e, kdim, vdim = m.embed_dim, m.kdim, m.vdim
        proj = lq * e * e + lk * kdim * e + lk * vdim * e + lq * e * e  # q, k, v and out projections
        return batch * (proj + 2 * lq * lk * e)  # plus q @ k^T and attn @ v
    if callable(getattr(m, "attention_macs", None)):  # initlab's ViT attention: its projections count themselves
        return m.attention_macs(args[0])
    return 0


@torch.no_grad()
def describe(model: nn.Module, in_shape: tuple[int, ...]) -> ModelInfo:
    """One forward of a 2-sample batch on the CPU in eval mode; the model is left unchanged."""
    rows: list[tuple[str, str, str, int]] = []
    total = [0]

    def row(name: str):
        def fn(m: nn.Module, args: object, out: object) -> None:
            shape = list(out.shape[1:]) if isinstance(out, torch.Tensor) else "-"
            n = sum(p.numel() for p in m.parameters(recurse=False))
            rows.append((name, type(m).__name__, str(shape), n))

        return fn

    def count(m: nn.Module, args: tuple, out: object) -> None:
        total[0] += _macs(m, args, out)

    leaves = [(n, m) for n, m in model.named_modules() if n and not any(True for _ in m.children())]
    # attention modules multiply through their own weights, not by calling their out_proj child
    counted = [m for m in model.modules()
               if (isinstance(m, (nn.Linear, CONVS, nn.MultiheadAttention)) or callable(getattr(m, "attention_macs", None)))
               and not any(isinstance(p, nn.MultiheadAttention) and m is p.out_proj for p in model.modules())]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with hooked([*(m.register_forward_hook(row(n)) for n, m in leaves),
                     *(m.register_forward_hook(count) for m in counted)]):
            model(torch.zeros((2, *in_shape), device=device))
    finally:
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return ModelInfo(rows, params, total[0] // 2)  # per sample
