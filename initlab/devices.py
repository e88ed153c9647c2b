"""Turn the `device` setting into a torch.device, or a clear error."""

import re

import torch

from initlab.errors import ConfigError, InitlabError

ACCEPTED = "auto, cpu, cuda, cuda:N, mps"


def _cuda_choices() -> str:
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n == 0:
        return "this machine has no CUDA device; use device=cpu or device=auto"
    return f"this machine has {n} CUDA device(s): cuda:0..cuda:{n - 1}"


def resolve_device(spec: object) -> torch.device:
    """'auto' picks cuda, then mps, then cpu; anything asked for must be present."""
    if not isinstance(spec, str) or not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", spec):
        raise ConfigError("device", spec, f"expected one of {ACCEPTED}")
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("device", spec, "MPS is not available on this machine; use device=cpu")
        return torch.device("mps")
    index = int(spec.split(":")[1]) if ":" in spec else 0
    if not torch.cuda.is_available() or index >= torch.cuda.device_count():
        raise ConfigError("device", spec, _cuda_choices())
    return torch.device("cuda", index)


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels so wall-clock timings mean what they say."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def free_bytes(device: torch.device) -> int | None:
    """Memory a run on `device` can still take (CUDA: free on the card; CPU: the kernel's
    MemAvailable), or None where it cannot be told."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_fits(model: torch.nn.Module, device: torch.device) -> None:
    """Refuse, before any allocation, a model whose weights, gradients and two optimizer buffers
    per weight cannot fit in what `device` has free (`model`: built on the meta device)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    need, free = 4 * weights, free_bytes(device)
    if free is not None and need > free:
        n = sum(p.numel() for p in model.parameters())
        raise InitlabError(f"the model has {n:,} parameters: with gradients and optimizer state it needs about "
                           f"{need / 2**30:.1f} GiB, and {device} has {free / 2**30:.1f} GiB free; choose a smaller "
                           "width or depth")
