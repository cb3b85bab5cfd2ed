"""The door of every run: `setup(cfg)` seeds and builds the data of the run's seed, in a notebook (through
`lptlib.stage.start`) and in a worker process alike; `run_tasks(fn, tasks, workers)` runs one stage's tasks through
it, in parallel.

DVC runs one stage at a time, and one small CPU model does not use two cores well (a second torch thread gains
about 1.3x on the miniature, a second single-thread process about 2x). A stage with several independent runs
(e.g. the rows of Table 1 of one seed) therefore hands them to `workers` spawned single-thread processes. A task is
a module-level function `fn(cfg, data, **kwargs)`: it receives a ready, validated `Config` (`task["cfg"]`, pickled
as it is, never parsed again) and the data `setup(cfg)` built, and returns a picklable result (metrics rows,
histories, CPU tensors). Results come back in the order of `tasks`. With `workers == 1`, one task, or on CUDA the
tasks run in this process, one after the other, through the same door (same results: every task is seeded by it).
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch

from lptlib.data import LTData, build_data
from lptlib.schema import Section
from lptlib.utils import exit_with_parent, seed_everything


def setup(cfg: Section) -> LTData:
    """What every run does first, after its config is composed: seed everything with `cfg.seed`, then build the
    data of that seed (`cfg` is a resolved `lptlib.config.Config`)."""
    seed_everything(cfg.seed)
    return build_data(cfg.data, cfg.seed)


def _worker_init() -> None:
    """A worker: one torch thread, and it stops when the process that owns the pool dies (a SIGKILLed kernel leaves
    no worker training and overwriting checkpoints)."""
    torch.set_num_threads(1)
    exit_with_parent()


def _door(fn: Callable[..., Any], task: dict) -> Any:
    """Run one task: `fn(cfg, setup(cfg), **rest)`."""
    task = dict(task)
    cfg = task.pop("cfg")
    return fn(cfg, setup(cfg), **task)


def run_tasks(fn: Callable[..., Any], tasks: Sequence[dict], workers: int = 1) -> list[Any]:
    """`[fn(t["cfg"], setup(t["cfg"]), **rest_of_t) for t in tasks]`, on up to `workers` single-thread processes
    when that can help."""
    tasks = list(tasks)
    for i, task in enumerate(tasks):
        if not isinstance(task.get("cfg"), Section):
            raise TypeError(f"task {i} of {fn.__name__}: needs its resolved Config under 'cfg'")  # a recipe bug
    n = min(workers, len(tasks))
    if n <= 1 or torch.cuda.is_available():
        return [_door(fn, t) for t in tasks]
    with ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("spawn"), initializer=_worker_init) as ex:
        futures = [ex.submit(_door, fn, t) for t in tasks]
        return [f.result() for f in futures]
