"""What every dataset hands the loop: batches on the run's device, the same seed giving the
same batches on every device and in every loader mode."""

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from initlab.errors import InitlabError

Batch = tuple[torch.Tensor, torch.Tensor]


class MissingData(InitlabError):
    """The dataset's files are not on disk (and could not be downloaded): the one case
    `data.fallback=synthetic` stands in for."""


class CorruptData(InitlabError):
    """The dataset's files are there but unreadable or inconsistent: never replaced by a
    fallback, since the user's data is what is wrong."""


def epoch_permutations(n: int, seed: int) -> Iterator[torch.Tensor]:
    """One permutation per epoch from a CPU generator: the same seed gives the same batches
    on every device and in every loader mode."""
    g = torch.Generator().manual_seed(seed)
    while True:
        yield torch.randperm(n, generator=g)


@dataclass
class Normalizer:
    """uint8 pixels -> (x / 255 - mean) / std per channel, in torchvision's order of
    operations (ToTensor then Normalize), so both loader modes give identical floats."""

    mean: torch.Tensor  # (C,)
    std: torch.Tensor  # (C,)
    normalize: bool = True

    def __call__(self, u8: torch.Tensor) -> torch.Tensor:
        x = u8.float().div_(255)  # (B, C, H, W)
        if self.normalize:
            shape = (1, -1, 1, 1)
            x.sub_(self.mean.to(x.device).view(shape)).div_(self.std.to(x.device).view(shape))
        return x


@dataclass
class DeviceDataset:
    """Train and held-out tensors resident on the run's device.

    Image datasets stay uint8 (a quarter of the memory) and are normalised as each batch
    is gathered; the synthetic set is already float.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int
    transform: Normalizer | None = None

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    @property
    def n_train(self) -> int:
        return len(self.y_train)

    @property
    def n_val(self) -> int:
        return len(self.y_val)

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(x) if self.transform is not None else x

    def train_batches(self, batch_size: int, seed: int) -> Iterator[Batch]:
        """Endless shuffled batches, a fresh permutation per epoch, last partial batch dropped."""
        n = len(self.y_train)
        for perm in epoch_permutations(n, seed):
            perm = perm.to(self.x_train.device)
            for i in range(0, n - batch_size + 1, batch_size):
                idx = perm[i : i + batch_size]
                yield self._prep(self.x_train[idx]), self.y_train[idx]

    def val_batches(self, batch_size: int) -> Iterator[Batch]:
        for i in range(0, len(self.y_val), batch_size):
            yield self._prep(self.x_val[i : i + batch_size]), self.y_val[i : i + batch_size]
