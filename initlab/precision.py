"""The run's arithmetic: `precision=fp32` (as is), `bf16` or `fp16` (the forward under
`torch.autocast`), and loss scaling through `torch.amp.GradScaler` (`dynamic`), a fixed scale (a
number: GradScaler held at it, so a step whose gradients overflow is still skipped), or none.

What the recorder sees under it: activations as autocast leaves them (bf16 or fp16 where the op
runs in the low format), `grad` rows of the *scaled* loss (what the low format holds: the scale
is what keeps them out of its subnormals), and `weight_grad` rows after unscaling (what the
optimizer steps with).
"""

import math
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from initlab.errors import ConfigError

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
FORMAT = {"bf16": "bf16", "fp16": "fp16"}  # the telemetry format each precision's values are held in


@dataclass
class Precision:
    """Autocast and loss scaling for one run's training steps."""

    name: str
    dtype: torch.dtype | None
    device: torch.device
    scaler: Any = None  # torch.amp.GradScaler, or None
    static: float | None = None  # a fixed loss scale
    skipped: int = 0  # optimizer steps skipped for non-finite gradients

    @contextmanager
    def autocast(self) -> Iterator[None]:
        """The forward pass (and the loss) in the run's precision."""
        with torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else nullcontext():
            yield

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """The optimizer's step through the scaler; True if the scaler skipped it (inf or NaN
        gradients: GradScaler then calls no `optimizer.step`, which a step hook sees)."""
        if self.scaler is None:
            optimizer.step()
            return False
        ran: list[bool] = []
        handle = optimizer.register_step_post_hook(lambda *_: ran.append(True))
        try:
            self.scaler.step(optimizer)
        finally:
            handle.remove()
        if self.static is not None:
            self.scaler.update(self.static)  # held at the fixed scale
        else:
            self.scaler.update()  # halved after a skipped step, grown after growth_interval good ones
        self.skipped += not ran
        return not ran

    @property
    def scale(self) -> float | None:
        return float(self.scaler.get_scale()) if self.scaler is not None else None

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "loss_scale": "static" if self.static is not None else
                "dynamic" if self.scaler is not None else "none", "final_scale": self.scale,
                "skipped_steps": self.skipped}


def _scaler(device: torch.device, cfg: Mapping[str, Any], init_scale: float) -> Any:
    kwargs = {"init_scale": init_scale, "growth_factor": float(cfg["growth_factor"]),
              "backoff_factor": float(cfg["backoff_factor"]), "growth_interval": int(cfg["growth_interval"])}
    if hasattr(torch.amp, "GradScaler"):  # torch >= 2.3: every device
        return torch.amp.GradScaler(device.type, **kwargs)
    if device.type == "cuda":
        return torch.cuda.amp.GradScaler(**kwargs)
    raise ConfigError("precision.loss_scale", cfg["loss_scale"],
                      f"loss scaling on {device.type} needs torch >= 2.3 (torch.amp.GradScaler); use loss_scale=none")


def precision_of(cfg: Mapping[str, Any], device: torch.device) -> Precision:
    """The `precision` config on `device`; one line where the device cannot run it."""
    name = cfg.get("name", "fp32")
    if name not in DTYPES:
        raise ConfigError("precision", name, f"expected one of {', '.join(DTYPES)}")
    dtype = DTYPES[name]
    if dtype is not None:
        probe = torch.ones(2, 2, device=device)
        with warnings.catch_warnings(), torch.autocast(device.type, dtype=dtype):
            warnings.simplefilter("ignore")  # unsupported: torch warns, and computes in float32
            got = (probe @ probe).dtype
        if got != dtype:
            raise ConfigError("precision", name, f"{device.type} autocast does not compute in {dtype} with torch "
                              f"{torch.__version__}; use precision=fp32 or another device")
    scale = cfg.get("loss_scale", "none")
    scale = "none" if scale is None else scale
    if scale == "none":
        return Precision(name, dtype, device)
    if scale == "dynamic":
        return Precision(name, dtype, device, _scaler(device, cfg, float(cfg["init_scale"])))
    if isinstance(scale, (int, float)) and not isinstance(scale, bool) and math.isfinite(scale) and scale > 0:
        return Precision(name, dtype, device, _scaler(device, cfg, float(scale)), static=float(scale))
    raise ConfigError("precision.loss_scale", scale, "expected none, dynamic or a number > 0 (a fixed scale)")
