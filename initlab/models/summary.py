"""Know the model: per-layer output shapes, parameters, and multiply-accumulates."""

from dataclasses import dataclass

import torch
from rich.table import Table
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass
class ModelInfo:
    rows: list[tuple[str, str, str, int]]  # (layer, type, output shape, params)
    params: int
    macs: int  # multiply-accumulates per sample, forward

    def table(self, title: str) -> Table:
        t = Table(title=title, show_lines=False)
        for col, just in (("layer", "left"), ("type", "left"), ("output", "left"), ("params", "right")):
            t.add_column(col, justify=just)
        for layer, kind, shape, n in self.rows:
            t.add_row(layer, kind, shape, f"{n:,}" if n else "")
        t.add_section()
        t.add_row("total", "", f"{self.macs:,} MACs/sample", f"{self.params:,}")
        return t


@torch.no_grad()
def describe(model: nn.Module, in_shape: tuple[int, ...]) -> ModelInfo:
    """One forward of a 2-sample batch on the CPU in eval mode; the model is left unchanged."""
    rows: list[tuple[str, str, str, int]] = []

    def hook(name: str):
        def fn(m: nn.Module, args: object, out: object) -> None:
            shape = list(out.shape[1:]) if isinstance(out, torch.Tensor) else "-"
            n = sum(p.numel() for p in m.parameters(recurse=False))
            rows.append((name, type(m).__name__, str(shape), n))

        return fn

    leaves = [(n, m) for n, m in model.named_modules() if n and not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook(n)) for n, m in leaves]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros((2, *in_shape), device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return ModelInfo(rows, params, counter.get_total_flops() // 2 // 2)  # FLOPs -> MACs, per sample
