"""Batches per second: resident (uint8 on the device, fused normalisation, no workers)
against torch (DataLoader over torchvision's MNIST, per-sample ToTensor + Normalize,
2 workers), on the same fabricated MNIST-sized set, side by side in one process."""

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import median, write_table
from initlab.data import load_dataset
from initlab.devices import resolve_device
from initlab.testing import write_mnist


def batches_per_second(data, batch_size: int, n_batches: int, seed: int) -> float:
    it = data.train_batches(batch_size, seed)
    x, _ = next(it)  # start-up (workers, first permutation) is not counted
    t0 = time.perf_counter()
    for _ in range(n_batches):
        x, _ = next(it)
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return n_batches / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    device = resolve_device(args.device)
    n_train = 6000 if args.quick else 60000
    n = 20 if args.quick else 200
    rates: dict[str, list[float]] = {"resident": [], "torch": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_mnist(root, n_train=n_train, n_test=1000)
        base = {"name": "mnist", "root": str(root), "download": False, "normalize": True,
                "memory_budget_mb": 2048, "train_size": None, "val_size": None}
        resident = load_dataset({**base, "loader": "resident"}, device, 0)
        classic = load_dataset({**base, "loader": "torch", "num_workers": 2}, device, 0)
        for r in range(args.rounds):
            rates["resident"].append(batches_per_second(resident, args.batch_size, n, seed=r))
            rates["torch"].append(batches_per_second(classic, args.batch_size, n, seed=r))
    res, tor = median(rates["resident"]), median(rates["torch"])
    write_table(
        f"loader_{device.type}" + ("_quick" if args.quick else ""),
        f"Data loading on {device.type}: MNIST-sized set ({n_train:,} x 28x28), batch {args.batch_size}",
        ["loader", "batches/s (median)", "samples/s", "vs torch"],
        [["resident", f"{res:,.0f}", f"{res * args.batch_size:,.0f}", f"{res / tor:.1f}x"],
         ["torch (DataLoader, 2 workers)", f"{tor:,.0f}", f"{tor * args.batch_size:,.0f}", "1.0x"]],
        [f"{n} batches per round, {args.rounds} rounds alternating the two loaders; worker start-up excluded.",
         "Both yield normalised float batches on the run's device in the same order (same seed, same batches)."],
    )


if __name__ == "__main__":
    main()
