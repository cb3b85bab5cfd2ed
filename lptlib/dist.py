"""Multi-GPU (and multi-process CPU) training with torch DistributedDataParallel under `torchrun`.

Launch a training stage's notebook on N processes with

    torchrun --nproc_per_node N -m lptlib.launch notebooks/02_lpt_stage1.ipynb outputs/nb/02_lpt_stage1.ipynb \\
        -k python3 -y "{overrides: {}}" -p out_dir outputs/lpt/stage1 ...     # the stage's papermill arguments

Every process runs the notebook; `torchrun`'s environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) reaches
its kernel, and the library joins the process group at first use (NCCL on CUDA, gloo on CPU). Then:

- training samplers are sharded per global batch (`ShardedSampler`): step s of a run on N processes trains on
  exactly the images of step s of a one-process run with the same batch size, split N ways, so class-balanced
  and dual sampling keep their per-batch composition;
- `engine.fit` wraps the loss in DistributedDataParallel and weights each rank's mean loss by its share of the
  global batch, so the averaged gradient is the one-process gradient (up to float summation order);
- evaluation shards the sequential loaders and gathers the outputs in order, so every rank computes the same
  metrics; only rank 0 writes files (metrics, figures, checkpoints, weights).

Exactness: random augmentation (RandomResizedCrop, flips), dropout and A-GCL's Gaussian logit noise draw from
each process's own RNG, as in every DDP run, so N-process and one-process runs are statistically equivalent;
without those draws they give the same metrics (`tests/test_dist.py` checks this on two gloo processes). A last global batch smaller than N
images is dropped in distributed runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env() -> bool:
    """Join the process group described by torchrun's environment (once); True when distributed."""
    if not dist.is_available() or env_world_size() <= 1:
        return False
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def is_distributed() -> bool:
    return init_from_env()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True in a one-process run and on rank 0 (with torchrun, before the group exists too: RANK=0)."""
    return int(os.environ.get("RANK", "0")) == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


class ShardedSampler(Sampler[int]):
    """This rank's share of every global batch of `base` (any sampler with `set_epoch`).

    The base sampler's epoch order is cut into global batches of `batch_size`; rank r takes the r-th of N
    near-equal contiguous slices of each (`np.array_split`). Used with a DataLoader of batch size
    `batch_size // N`, the rank's batch s is its slice of global batch s. Requires batch_size % N == 0.
    """

    def __init__(self, base: Sampler[int], batch_size: int, rank_: int, world: int):
        if batch_size % world:
            raise ValueError(
                f"batch size {batch_size} is not divisible by the {world} processes; choose a batch "
                f"size that is a multiple of {world}"
            )
        self.base, self.batch_size, self.rank, self.world = base, batch_size, rank_, world

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def _slices(self, n: int) -> list[tuple[int, int]]:
        out = []
        for start in range(0, n, self.batch_size):
            size = min(self.batch_size, n - start)
            if size < self.world:
                break  # too small to give every rank an image: dropped
            bounds = np.cumsum([0, *[len(a) for a in np.array_split(np.arange(size), self.world)]])
            out.append((start + int(bounds[self.rank]), start + int(bounds[self.rank + 1])))
        return out

    def __iter__(self) -> Iterator[int]:
        order = list(iter(self.base))
        for a, b in self._slices(len(order)):
            yield from order[a:b]

    def __len__(self) -> int:
        return sum(b - a for a, b in self._slices(len(self.base)))

    def local_batch_size(self) -> int:
        return self.batch_size // self.world


def shard_bounds(n: int) -> tuple[int, int]:
    """[start, stop) of this rank's contiguous share of n sequential items (evaluation)."""
    bounds = np.cumsum([0, *[len(a) for a in np.array_split(np.arange(n), world_size())]])
    r = rank()
    return int(bounds[r]), int(bounds[r + 1])


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's CPU tensor along dim 0, in rank order (sizes may differ)."""
    if not is_distributed():
        return tensor
    parts: list = [None] * world_size()
    dist.all_gather_object(parts, tensor.cpu())
    return torch.cat(parts)


def step_weight(local_count: int, loss: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(local_count * N / global count, the loss made non-finite on every rank if it is on any).

    The factor turns a rank's mean loss into its share of the global-batch mean once DDP averages gradients
    over the N ranks; sharing non-finiteness lets every rank stop at the same step instead of waiting forever
    in the gradient all-reduce. One all-reduce of two numbers per step."""
    if not is_distributed():
        return 1.0, loss
    stats = torch.tensor([float(local_count), 0.0 if torch.isfinite(loss).all() else 1.0], device=loss.device)
    dist.all_reduce(stats)
    if stats[1].item() > 0 and torch.isfinite(loss).all():
        loss = loss * float("nan")
    return local_count * world_size() / stats[0].item(), loss


def mean_over_ranks(value: float) -> float:
    """The mean of a Python number over the ranks (the value itself in a one-process run)."""
    if not is_distributed():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device="cuda" if torch.cuda.is_available() else "cpu")
    dist.all_reduce(t)
    return t.item() / world_size()
