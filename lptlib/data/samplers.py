"""Samplers: instance-balanced shuffling, class-aware (class-balanced) sampling and LPT's dual sampling.

All are deterministic functions of (seed, epoch): `set_epoch(e)` before iterating, as with
`DistributedSampler`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lptlib.dist import ShardedSampler, rank, world_size

SAMPLING_MODES = ("instance_balanced", "class_balanced")
Sampling = Literal["instance_balanced", "class_balanced"]


class ShuffleSampler(Sampler[int]):
    """Instance-balanced sampling: a fresh permutation of all indices every epoch."""

    def __init__(self, num_items: int, seed: int = 0):
        self.num_items, self.seed, self.epoch = num_items, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        return iter(rng.permutation(self.num_items).tolist())

    def __len__(self) -> int:
        return self.num_items


class ClassAwareSampler(Sampler[int]):
    """Class-balanced sampling (classifier-balancing's class-aware sampler, as LPT uses it).

    Classes are visited in a random cycle (reshuffled after every full pass over the classes); each
    visit yields `num_samples_cls` consecutive items of that class's own random cycle over its
    images. An epoch is `num_samples` indices (default: the dataset size), an explicit length
    rather than the reference code's max_count x C.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        num_samples_cls: int = 4,
        num_samples: int | None = None,
        seed: int = 0,
    ):
        labels = np.asarray(labels)
        if num_samples_cls < 1:
            raise ValueError(f"num_samples_cls must be >= 1, got {num_samples_cls}")
        self.class_indices = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        self.num_samples_cls = num_samples_cls
        self.num_samples = len(labels) if num_samples is None else num_samples
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        cursors = [len(ix) for ix in self.class_indices]  # force a shuffle at first use
        orders = [ix for ix in self.class_indices]
        class_cycle: list[int] = []
        out: list[int] = []
        while len(out) < self.num_samples:
            if not class_cycle:
                class_cycle = rng.permutation(len(self.class_indices)).tolist()
            c = class_cycle.pop()
            for _ in range(self.num_samples_cls):
                if cursors[c] == len(orders[c]):
                    orders[c], cursors[c] = rng.permutation(self.class_indices[c]), 0
                out.append(int(orders[c][cursors[c]]))
                cursors[c] += 1
        return iter(out[: self.num_samples])

    def __len__(self) -> int:
        return self.num_samples


def make_sampler(mode: str, labels: np.ndarray, seed: int = 0, num_samples_cls: int = 4) -> Sampler[int]:
    """The sampler for a sampling mode: 'instance_balanced' or 'class_balanced'."""
    if mode == "instance_balanced":
        return ShuffleSampler(len(labels), seed)
    if mode == "class_balanced":
        return ClassAwareSampler(labels, num_samples_cls=num_samples_cls, seed=seed)
    raise ValueError(f"unknown sampling mode {mode!r}; use one of {', '.join(SAMPLING_MODES)}")


def make_loader(
    dataset: Dataset,
    batch_size: int,
    sampler: Sampler[int] | None = None,
    num_workers: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader with a given sampler (None: sequential order, for evaluation).

    In a distributed run a training sampler is sharded per global batch (`lptlib.dist.ShardedSampler`) and the
    loader yields this rank's `batch_size / world` share of each global batch.
    """
    if sampler is not None and world_size() > 1:
        sampler = ShardedSampler(sampler, batch_size, rank(), world_size())
        batch_size = sampler.local_batch_size()
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )


class InfiniteLoader:
    """A persistent iterator over a DataLoader: when it runs out, the sampler moves to its next
    epoch and iteration continues, so a step never creates a fresh iterator (LPT's reference code
    did, which re-drew the same first batch from a new shuffle every step)."""

    def __init__(self, loader: DataLoader, start_epoch: int = 0):
        self.loader = loader
        self.epoch = start_epoch
        self._it: Iterator | None = None

    def __iter__(self) -> "InfiniteLoader":
        return self

    def __next__(self):
        while True:
            if self._it is None:
                if hasattr(self.loader.sampler, "set_epoch"):
                    self.loader.sampler.set_epoch(self.epoch)
                self._it = iter(self.loader)
            try:
                return next(self._it)
            except StopIteration:
                self._it = None
                self.epoch += 1


def dual_sampling(class_balanced: InfiniteLoader, instance_balanced: InfiniteLoader, steps: int) -> Iterator[tuple]:
    """LPT's dual sampling: `steps` pairs (class-balanced batch, instance-balanced batch)."""
    for _ in range(steps):
        yield next(class_balanced), next(instance_balanced)


class SingleSampling:
    """Training batches of one loader, epoch by epoch: `batches(epoch)` iterates the loader once."""

    def __init__(self, loader: DataLoader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __call__(self, epoch: int) -> Iterator:
        if hasattr(self.loader.sampler, "set_epoch"):
            self.loader.sampler.set_epoch(epoch)
        return iter(self.loader)


class IndexBatches:
    """Training batches of data held in tensors (e.g. cached features), epoch by epoch: the sampler's indices
    (`set_epoch(epoch)` first) in chunks of `batch_size`, each turned into a batch by `take(indices)`."""

    def __init__(self, sampler: Sampler[int], batch_size: int, take: Callable[[torch.Tensor], object]):
        self.sampler, self.batch_size, self.take = sampler, batch_size, take

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __call__(self, epoch: int) -> Iterator:
        self.sampler.set_epoch(epoch)
        order = torch.as_tensor(list(self.sampler))
        return (self.take(order[i : i + self.batch_size]) for i in range(0, len(order), self.batch_size))


class DualSampling:
    """(class-balanced batch, instance-balanced batch) pairs from two persistent iterators, epoch by epoch.

    An epoch has as many steps as the class-balanced loader has batches. The iterators start at the
    first epoch asked for (a resumed run starts at its resume epoch); with loaders of equal length, as
    built by `make_dual_sampling`, training epoch e reads sampler epoch e of both, so a resumed run
    draws exactly the batches of an uninterrupted one.
    """

    def __init__(self, class_balanced: DataLoader, instance_balanced: DataLoader):
        self.loaders = (class_balanced, instance_balanced)
        self._iters: tuple[InfiniteLoader, InfiniteLoader] | None = None

    def __len__(self) -> int:
        return len(self.loaders[0])

    def __call__(self, epoch: int) -> Iterator[tuple]:
        if self._iters is None:
            self._iters = (InfiniteLoader(self.loaders[0], epoch), InfiniteLoader(self.loaders[1], epoch))
        return dual_sampling(*self._iters, len(self))


def make_dual_sampling(
    dataset: Dataset, labels: np.ndarray, batch_size: int, seed: int = 0, num_samples_cls: int = 4, num_workers: int = 0
) -> DualSampling:
    """LPT's dual sampling over `dataset`: a class-aware loader (4 images per visited class) and a
    shuffled loader, both of len(dataset) samples per epoch and the same batch size."""
    cb = make_loader(dataset, batch_size, ClassAwareSampler(labels, num_samples_cls, seed=seed), num_workers)
    ib = make_loader(dataset, batch_size, ShuffleSampler(len(labels), seed=seed + 1), num_workers)
    return DualSampling(cb, ib)
