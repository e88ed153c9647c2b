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
