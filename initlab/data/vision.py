"""torchvision datasets (MNIST, Fashion-MNIST, CIFAR-10/100) as initlab datasets.

Two loaders, chosen by `data.loader`:
- resident: the whole split as uint8 on the run's device, a per-epoch permutation,
  normalisation fused into batch assembly, no workers (the default while the data fits
  `data.memory_budget_mb`);
- torch: the classic torch DataLoader over the torchvision dataset with per-sample
  ToTensor + Normalize transforms and worker processes.
Both draw batches from the same permutations and do the same float operations, so the
same seed gives identical batches in either mode.
"""

import json
import os
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets, transforms
from torchvision.datasets.utils import check_integrity

from initlab.data.base import (
    Batch,
    CorruptData,
    DeviceDataset,
    MissingData,
    Normalizer,
    epoch_permutations,
)
from initlab.defaults import preset


@dataclass(frozen=True)
class VisionSpec:
    cls: type
    folder: str  # where torchvision looks under root
    files: str  # what a user must put there by hand


SPECS: dict[str, VisionSpec] = {
    "mnist": VisionSpec(datasets.MNIST, "MNIST/raw",
                        "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                        "t10k-labels-idx1-ubyte"),
    "fashion_mnist": VisionSpec(datasets.FashionMNIST, "FashionMNIST/raw",
                                "the four Fashion-MNIST IDX files (train-/t10k- images and labels)"),
    "cifar10": VisionSpec(datasets.CIFAR10, "cifar-10-batches-py",
                          "the extracted cifar-10-python.tar.gz (data_batch_1..5, test_batch, batches.meta)"),
    "cifar100": VisionSpec(datasets.CIFAR100, "cifar-100-python",
                           "the extracted cifar-100-python.tar.gz (train, test, meta)"),
}


def data_root(cfg: Mapping[str, Any]) -> Path:
    """`data.root`, else $INITLAB_DATA, else ~/.cache/initlab/data."""
    root = cfg.get("root")
    if root in (None, "", "null"):
        root = os.environ.get("INITLAB_DATA") or Path.home() / ".cache" / "initlab" / "data"
    return Path(root).expanduser()


def split_files(name: str, train: bool) -> list[tuple[str, str | None]]:
    """(file name, md5 or None) of one split, from torchvision's own class attributes."""
    cls = SPECS[name].cls
    if issubclass(cls, datasets.MNIST):
        prefix = "train" if train else "t10k"
        return [(f"{prefix}-{kind}", None) for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")]
    listed = cls.train_list if train else cls.test_list
    return [(f, md5) for f, md5 in listed] + [(cls.meta["filename"], cls.meta["md5"])]


def _idx_problem(path: Path) -> str | None:
    """What is wrong with an IDX file (MNIST's format), or None: magic, dims and size."""
    with open(path, "rb") as f:
        head = f.read(4)
        if len(head) < 4 or head[:2] != b"\0\0" or head[2] != 0x08 or not 1 <= head[3] <= 3:
            return "not a uint8 IDX file (its first 4 bytes are not 00 00 08 0N)"
        raw = f.read(4 * head[3])
    if len(raw) < 4 * head[3]:
        return "truncated inside its header"
    dims = struct.unpack(f">{head[3]}I", raw)
    expected = 4 + 4 * len(dims) + int(torch.tensor(dims).prod())
    size = path.stat().st_size
    if size != expected:
        return f"{size} bytes where its header ({'x'.join(map(str, dims))}) needs {expected}: truncated or padded"
    return None


def _corrupt(name: str, where: Path, train: bool) -> CorruptData | None:
    """The first file of the split that is present but unreadable, named."""
    for fname, md5 in split_files(name, train):
        path = where / fname
        problem = _idx_problem(path) if md5 is None else (
            None if check_integrity(str(path), md5) else "its md5 is not torchvision's (a partial or altered copy)")
        if problem:
            return CorruptData(f"data={name}: {path} is corrupt: {problem}; replace it with {SPECS[name].files}")
    return None


def open_split(name: str, root: Path, train: bool, download: bool, transform: Any = None) -> Dataset:
    """The torchvision dataset; or one line: files absent (MissingData: where they were
    looked for, how to get them) or present but corrupt (CorruptData naming the file)."""
    spec = SPECS[name]
    where = root / spec.folder
    absent = [f for f, _ in split_files(name, train) if not (where / f).is_file()]
    if not absent:
        problem = _corrupt(name, where, train)
        if problem is not None:
            raise problem
        try:
            ds = spec.cls(str(root), train=train, download=False, transform=transform)
        except Exception as exc:  # torchvision's own checks, past ours
            raise CorruptData(f"data={name}: files under {where} could not be read "
                              f"({type(exc).__name__}: {str(exc).strip()[:160]})") from None
        if len(ds.data) != len(ds.targets):
            raise CorruptData(f"data={name}: the {'train' if train else 'test'} split under {where} has "
                              f"{len(ds.data)} images but {len(ds.targets)} labels")
        labels = torch.as_tensor(ds.targets)
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(ds.classes)):
            raise CorruptData(f"data={name}: the {'train' if train else 'test'} split under {where} has labels "
                              f"{int(labels.min())}..{int(labels.max())}, outside the {len(ds.classes)} classes "
                              f"0..{len(ds.classes) - 1}: a corrupt labels file")
        return ds
    if not download:
        raise MissingData(
            f"data={name}: no dataset files under {where} (missing {', '.join(absent)}); set "
            f"data.download=true to fetch them, or put {spec.files} there (data.root or $INITLAB_DATA "
            "chooses the directory)")
    try:
        return spec.cls(str(root), train=train, download=True, transform=transform)
    except Exception as exc:  # offline: URLError, timeouts, HTTP errors, bad archives
        text = str(exc).splitlines()[0].strip().rstrip(":") if str(exc).strip() else ""
        reason = f"{type(exc).__name__}: {text[:120]}" if text else type(exc).__name__
        raise MissingData(
            f"data={name}: not found under {where} and the download failed ({reason}); "
            f"put {spec.files} there, or run with network access") from None


def file_identity(name: str, root: Path) -> list[list[Any]]:
    """(name, size, mtime) of the training files: what the statistics cache is keyed on."""
    where = root / SPECS[name].folder
    return [[f, (where / f).stat().st_size, (where / f).stat().st_mtime_ns] for f, _ in split_files(name, True)]


def as_uint8(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's in-memory arrays as (N, C, H, W) uint8 and int64 labels."""
    data = ds.data
    x = torch.as_tensor(data)
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)  # MNIST (N,H,W); CIFAR (N,H,W,C)
    return x.contiguous(), torch.as_tensor(ds.targets, dtype=torch.int64)


def channel_stats(name: str, root: Path, x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of the training split in [0, 1], computed once and cached
    next to the data (initlab-stats/NAME.json), keyed on the sample count and the files'
    size and mtime: files replaced in place are measured again."""
    cache = root / "initlab-stats" / f"{name}.json"
    key = {"n": len(x), "files": file_identity(name, root)}
    if cache.exists():
        try:
            saved = json.loads(cache.read_text())
        except ValueError:  # a torn cache is only a recomputation
            saved = {}
        if all(saved.get(k) == v for k, v in key.items()):
            return saved["mean"], saved["std"]
    flat = x.transpose(0, 1).reshape(x.shape[1], -1).double() / 255  # (C, N*H*W)
    mean, std = flat.mean(1).tolist(), flat.std(1, correction=0).tolist()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({**key, "mean": mean, "std": std}))
    except OSError:
        pass  # a read-only data directory only costs recomputation
    return mean, std


class EpochBatchSampler:
    """Endless batches of indices from epoch_permutations: the resident loader's order."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed

    def __iter__(self) -> Iterator[list[int]]:
        for perm in epoch_permutations(self.n, self.seed):
            for i in range(0, self.n - self.batch_size + 1, self.batch_size):
                yield perm[i : i + self.batch_size].tolist()


@dataclass
class LoaderDataset:
    """The classic path: a torch DataLoader with worker processes over torchvision."""

    name: str
    train: Dataset
    val: Dataset
    num_classes: int
    in_shape: tuple[int, ...]
    device: torch.device
    num_workers: int

    @property
    def n_train(self) -> int:
        return len(self.train)

    @property
    def n_val(self) -> int:
        return len(self.val)

    def _loader(self, ds: Dataset, **kw: Any) -> DataLoader:
        return DataLoader(ds, num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
                          persistent_workers=self.num_workers > 0, **kw)

    def train_batches(self, batch_size: int, seed: int) -> Iterator[Batch]:
        sampler = EpochBatchSampler(len(self.train), batch_size, seed)
        for x, y in self._loader(self.train, batch_sampler=sampler):
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def val_batches(self, batch_size: int) -> Iterator[Batch]:
        for x, y in self._loader(self.val, batch_size=batch_size, shuffle=False):
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def _limit(ds: Dataset, n: int | None) -> Dataset:
    """The first n samples (deterministic), keeping torchvision's arrays in place."""
    if n is None or n >= len(ds):
        return ds
    ds.data, ds.targets = ds.data[:n], ds.targets[:n]
    return ds


def load_vision(name: str, cfg: Mapping[str, Any], device: torch.device, seed: int) -> DeviceDataset | LoaderDataset:
    """A torchvision dataset; keys missing from `cfg` take conf/data/NAME.yaml's."""
    cfg = preset("data", name, cfg)
    root = data_root(cfg)
    download = bool(cfg["download"])
    train = _limit(open_split(name, root, True, download), cfg.get("train_size"))
    val = _limit(open_split(name, root, False, download), cfg.get("val_size"))
    x_train, y_train = as_uint8(train)
    mean, std = channel_stats(name, root, x_train)
    normalize = bool(cfg["normalize"])
    num_classes = len(train.classes)
    mode = cfg["loader"]
    if mode == "auto":
        budget = float(cfg["memory_budget_mb"]) * 2**20
        mode = "resident" if x_train.numel() * 2 <= budget else "torch"  # train + a test-sized margin
    if mode == "torch":
        steps = [transforms.ToTensor()] + ([transforms.Normalize(mean, std)] if normalize else [])
        train.transform = val.transform = transforms.Compose(steps)
        return LoaderDataset(name, train, val, num_classes, tuple(x_train.shape[1:]), device,
                             int(cfg["num_workers"]))
    x_val, y_val = as_uint8(val)
    norm = Normalizer(torch.tensor(mean), torch.tensor(std), normalize)
    return DeviceDataset(name, x_train.to(device), y_train.to(device), x_val.to(device), y_val.to(device),
                         num_classes, norm)

