"""Shared helpers: environment header, synthetic device datasets, table output."""

import os
import platform
import statistics
from pathlib import Path

import torch

from initlab.data import DeviceDataset

RESULTS = Path(__file__).parent / "results"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return (f"{cpu}; {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; GPU: {gpu}; "
            f"torch {torch.__version__}; python {platform.python_version()}")


def random_dataset(shape: tuple[int, ...], n: int, device: torch.device, classes: int = 10) -> DeviceDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn((n, *shape), generator=g).to(device)
    y = torch.randint(0, classes, (n,), generator=g).to(device)
    return DeviceDataset("bench", x, y, x[:0], y[:0], classes)


def kaiming_case(name: str, cfg: dict, shape: tuple[int, ...], batch: int, device: torch.device, norm: str = "none"
                 ) -> tuple[torch.nn.Module, DeviceDataset, torch.optim.Optimizer]:
    """A benchmark's model (Kaiming-initialised, on `device`), 8 batches of random data and SGD."""
    from initlab.init import apply_init
    from initlab.models import build_model

    torch.manual_seed(0)
    model = build_model(name, {"act": "relu", **cfg}, shape, 10, norm=norm)
    apply_init(model, {"name": "kaiming"}, "relu")
    model.to(device)
    data = random_dataset(shape, batch * 8, device)
    data.batch = batch
    return model, data, torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)


def readme_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
                ) -> torch.Tensor:
    """One step of the README's plain loop (forward, zero_grad, backward, step); the loss."""
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def write_table(name: str, title: str, header: list[str], rows: list[list[str]], notes: list[str]) -> Path:
    """A markdown table with the machine it ran on; printed and written to results/."""
    RESULTS.mkdir(exist_ok=True)
    lines = [f"### {title}", "", f"Machine: {machine()}", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += [""] + [f"- {n}" for n in notes] + [""]
    text = "\n".join(lines)
    print(text)
    path = RESULTS / f"{name}.md"
    path.write_text(text)
    return path
