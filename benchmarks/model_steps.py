"""Training-step time of every zoo model at batch 64 on 3x32x32, shipped configs, without a norm
and with the norm it takes (batch; the ViT: layer)."""

import argparse
import time

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from benchmarks.common import median, write_table
from initlab.devices import resolve_device, synchronize
from initlab.init import apply_init
from initlab.models import MODELS, build_model
from initlab.models.base import DEFAULT_NORMS
from initlab.models.external import EXTERNAL
from initlab.models.summary import describe


def step_time(name: str, norm: str, device: torch.device, steps: int) -> tuple[float, int, int]:
    with initialize_config_module(config_module="initlab.conf", version_base="1.3"):
        cfg = OmegaConf.to_container(compose(config_name="config", overrides=[f"model={name}"]).model)
    torch.manual_seed(0)
    model = build_model(name, cfg, (3, 32, 32), 10, norm=norm)
    apply_init(model, {"name": "kaiming"}, cfg["act"])
    info = describe(model, (3, 32, 32))
    model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(64, 3, 32, 32, device=device), torch.randint(0, 10, (64,), device=device)
    times = []
    for i in range(steps + 2):
        synchronize(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        synchronize(device)
        if i >= 2:  # two warm-up steps
            times.append(time.perf_counter() - t0)
    return median(times), info.params, info.macs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    device = resolve_device(args.device)
    rows = []
    for name in sorted(set(MODELS) - set(EXTERNAL)):  # the zoo's shipped configs
        for norm in ("none", DEFAULT_NORMS[name] if DEFAULT_NORMS[name] != "none" else "batch"):
            t, params, macs = step_time(name, norm, device, 3 if args.quick else 10)
            rows.append([name, norm, f"{params:,}", f"{macs / 1e6:,.1f}", f"{t * 1e3:,.1f}",
                         f"{64 / t:,.0f}"])
            print(rows[-1], flush=True)
    write_table(f"model_steps_{device.type}" + ("_quick" if args.quick else ""), f"Training step at batch 64, 3x32x32, shipped model configs ({device.type})",
                ["model", "norm", "params", "MMACs/sample", "step (ms, median)", "samples/s"], rows,
                ["Shipped configs: mlp 4x256, conv4 [8,16,32], lenet (sigmoid), alexnet/vgg11 width_mult 0.25, "
                 "resnet-18 layout at width 16, nin width_mult 0.25, vit dim 64 depth 6; kaiming init, SGD; median of 10 "
                 "steps after 2 warm-up steps."])


if __name__ == "__main__":
    main()
