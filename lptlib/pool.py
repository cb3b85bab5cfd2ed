"""Training runs of one stage in parallel: `run_tasks(fn, kwargs_list, workers)`.

DVC runs one stage at a time, and one small CPU model does not use two cores well (a second torch thread gains
about 1.3x on the miniature, a second single-thread process about 2x). A stage with several independent runs
(e.g. the rows of Table 1 of one seed) therefore hands them to `workers` spawned single-thread processes. Each
task is a module-level function called with keyword arguments that pickle (config dicts, paths, names); it
rebuilds its data and model from them and returns a picklable result (metrics rows, histories, CPU tensors).
Results come back in the order of `kwargs_list`. With `workers == 1`, one task, or on CUDA the tasks run in this
process, one after the other (same results: every task seeds itself)."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch


def _single_thread() -> None:
    torch.set_num_threads(1)


def run_tasks(fn: Callable[..., Any], kwargs_list: Sequence[dict], workers: int = 1) -> list[Any]:
    """`[fn(**kw) for kw in kwargs_list]`, on up to `workers` single-thread processes when that can help."""
    kwargs_list = list(kwargs_list)
    n = min(workers, len(kwargs_list))
    if n <= 1 or torch.cuda.is_available():
        return [fn(**kw) for kw in kwargs_list]
    with ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("spawn"), initializer=_single_thread) as ex:
        futures = [ex.submit(fn, **kw) for kw in kwargs_list]
        return [f.result() for f in futures]
