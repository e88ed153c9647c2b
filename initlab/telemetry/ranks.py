"""Statistics that are right under data parallelism (DDP): every rank reduces its own tensors as
always, then the ranks' rows of a logged step are merged in one collective (the step's rows,
histogram counts and format counts packed into one float64 vector, `all_gather`ed).

How each statistic merges, for the rows of per-sample tensors (`act`, `grad`, `norm_mean`,
`norm_var`): counts and sums add (`numel`, `nonfinite`, the fractions as counts, histogram and
format counts), the mean weighted by each rank's count, the variance by Chan et al.'s pairwise
formula, min of mins, max of maxes, amax of amaxes, amin of amins. `dead_units` (a unit dead on
every sample of the *global* batch) cannot merge from per-rank fractions: it is rank 0's. Rows of
replicated tensors (`weight`, `weight_grad` after DDP's all-reduce, `update`) are the same on
every rank and are rank 0's, unless the parameter is sharded (FSDP2): then each rank holds a
disjoint piece of it and its rows merge like a batch's (the norm from the sum of squares over
the shards, never one shard's, which under-reports by about sqrt(shards)); BatchNorm's running and batch statistics are rank 0's (each rank
normalises its own shard, unless SyncBatchNorm). The `ranks` column says which: the world size
where a row is merged, 1 where it is rank 0's.

`grad` rows are of the global mean loss, the one DDP's averaged weight gradients are the
gradient of: each rank's dLoss/d output is of its own mean loss, world times larger per sample,
so merged gradient moments (and amax, amin) are divided by the world size. Their format
fractions are of the gradient as each rank holds it, which is what a low format would hold.
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # torch < 2.5: no public DTensor, so no FSDP2 (`fully_shard`) to meet
    DTensor = None

from initlab.errors import InitlabError
from initlab.telemetry.stats import STATS

MERGED_KINDS = frozenset({"act", "grad", "norm_mean", "norm_var"})
_I = {name: i for i, name in enumerate(STATS)}


def sharded(t: torch.Tensor) -> bool:
    """A parameter split over the ranks (FSDP2's `fully_shard`, a DTensor with a Shard placement):
    each rank holds a disjoint piece, so its statistics merge like a batch's."""
    return DTensor is not None and isinstance(t, DTensor) and any(p.is_shard() for p in t.placements)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's own piece of a DTensor, as a plain tensor; any other tensor as it is."""
    return t.to_local() if DTensor is not None and isinstance(t, DTensor) else t


def world() -> tuple[int, int] | None:
    """(rank, world size) inside an initialised process group of more than one process, else None."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    size = dist.get_world_size()
    return (dist.get_rank(), size) if size > 1 else None


@dataclass
class Merged:
    """A logged step after the merge: the merged rows, and every rank's own (for telemetry.ranks: each)."""

    stats: np.ndarray  # (rows, STATS)
    counts: np.ndarray | None  # histogram counts, added
    fmt: np.ndarray | None  # format values
    ranks: np.ndarray  # the `ranks` column: the world size where merged, 1 where rank 0's
    merged: np.ndarray  # which rows are merged (bool)
    each_stats: np.ndarray  # (world, rows, STATS): every rank's own rows, as it reduced them
    each_fmt: np.ndarray | None  # (world, rows, K)


def merge(kinds: list[str], stats: np.ndarray, counts: np.ndarray | None, fmt: np.ndarray | None,
          shards: np.ndarray | None = None) -> Merged:
    """The step's (stats, histogram counts, format values) merged over the ranks. Every rank must
    call it at the same logged steps with the same rows. `shards` marks the rows of sharded
    parameters (their weight, gradient and update), which merge like a batch's rows."""
    rank, size = world() or (0, 1)
    parts = [stats.reshape(-1), *([counts.astype(np.float64).reshape(-1)] if counts is not None else []),
             *([fmt.reshape(-1)] if fmt is not None else [])]
    mine = torch.from_numpy(np.concatenate([[float(len(kinds))], *parts]))
    if dist.get_backend() == "nccl":  # NCCL moves device tensors only
        mine = mine.to(torch.device("cuda", torch.cuda.current_device()))
    gathered = [torch.empty_like(mine) for _ in range(size)]
    try:
        dist.all_gather(gathered, mine)
    except RuntimeError as exc:  # sizes differ: the ranks recorded different rows
        raise InitlabError(f"rank {rank}: the ranks' telemetry rows differ ({exc}); every rank must run the "
                           "same model and log the same steps") from exc
    everyone = torch.stack(gathered).cpu().numpy()[:, 1:]
    n_stats = stats.size
    n_counts = counts.size if counts is not None else 0
    all_stats = everyone[:, :n_stats].reshape(size, *stats.shape)
    merged_kind = np.array([k in MERGED_KINDS for k in kinds], dtype=bool)
    if shards is not None:
        merged_kind |= shards
    out = _merge_stats(all_stats, merged_kind, np.array([k == "grad" for k in kinds]), size)
    new_counts = everyone[:, n_stats:n_stats + n_counts].sum(0).reshape(counts.shape).astype(counts.dtype) \
        if counts is not None else None
    new_fmt = all_fmt = None
    if fmt is not None:
        all_fmt = everyone[:, n_stats + n_counts:].reshape(size, *fmt.shape)
        new_fmt = _merge_formats(all_fmt, merged_kind, np.array([k == "grad" for k in kinds]), size)
    return Merged(out, new_counts, new_fmt, np.where(merged_kind, size, 1).astype(np.int64), merged_kind,
                  all_stats, all_fmt)


def _merge_stats(s: np.ndarray, merged: np.ndarray, grad: np.ndarray, size: int) -> np.ndarray:
    """(ranks, rows, STATS) -> (rows, STATS): merged rows as the module docstring says, the rest rank 0's."""
    out = s[0].copy()
    n_r = s[:, :, _I["numel"]]
    n = n_r.sum(0)
    have = n_r > 0  # a rank's shard of an unevenly split parameter may be empty (its mean NaN)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(have, n_r * s[:, :, _I["mean"]], 0.0).sum(0) / n
        within = np.where(n_r > 1, (n_r - 1) * s[:, :, _I["std"]] ** 2, 0.0).sum(0)
        between = np.where(have, n_r * (s[:, :, _I["mean"]] - mean) ** 2, 0.0).sum(0)
        std = np.sqrt((within + between) / (n - 1))
        fractions = {k: np.where(have, n_r * s[:, :, _I[k]], 0.0).sum(0) / n for k in ("zero_frac", "dead_frac")}
    scale = np.where(grad, 1.0 / size, 1.0)  # the global mean loss's gradient
    rows = merged
    out[rows, _I["mean"]] = (mean * scale)[rows]
    out[rows, _I["std"]] = (std * scale)[rows]
    out[rows, _I["min"]] = (s[:, :, _I["min"]].min(0) * scale)[rows]
    out[rows, _I["max"]] = (s[:, :, _I["max"]].max(0) * scale)[rows]
    for k, v in fractions.items():
        out[rows, _I[k]] = v[rows]
    out[rows, _I["nonfinite"]] = s[:, :, _I["nonfinite"]].sum(0)[rows]
    out[rows, _I["numel"]] = n[rows]
    return out


def _merge_formats(f: np.ndarray, merged: np.ndarray, grad: np.ndarray, size: int) -> np.ndarray:
    """(ranks, rows, 3 + 3F) format values: [finite non-zero count, amax, amin, counts...]; amax
    and amin of `grad` rows scaled as their moments are, the counts as each rank held them."""
    out = f[0].copy()
    summed = f.sum(0)
    scale = np.where(grad, 1.0 / size, 1.0)
    out[merged, 0] = summed[merged, 0]
    out[merged, 1] = (f[:, :, 1].max(0) * scale)[merged]
    out[merged, 2] = (f[:, :, 2].min(0) * scale)[merged]
    out[merged, 3:] = summed[merged, 3:]
    return out
