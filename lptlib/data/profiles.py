"""Long-tail profiles, and the many / medium / few shot groups a profile's training counts define
(docs/methods.md#metrics):

| convention   | many    | medium          | few     |
|--------------|---------|-----------------|---------|
| `decoupling` | n > 100 | 20 <= n <= 100  | n < 20  |  (classifier-balancing, LIFT; default)
| `oltr`       | n >= 100| 20 < n < 100    | n <= 20 |
| `lpt`        | n > 100 | 20 < n <= 100   | n <= 20 |
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

SHOT_GROUPS = ("many", "medium", "few")
_THRESHOLDS = {  # (is_many, is_few) given the count n
    "decoupling": (lambda n: n > 100, lambda n: n < 20),
    "oltr": (lambda n: n >= 100, lambda n: n <= 20),
    "lpt": (lambda n: n > 100, lambda n: n <= 20),
}
CONVENTIONS = tuple(_THRESHOLDS)


def shot_groups(train_counts: np.ndarray | Sequence[int], convention: str = "decoupling") -> np.ndarray:
    """'many' / 'medium' / 'few' for each class, from its training count."""
    if convention not in _THRESHOLDS:
        raise ValueError(f"unknown shot convention {convention!r}; use one of {', '.join(CONVENTIONS)}")
    counts = np.asarray(train_counts.detach().cpu() if hasattr(train_counts, "detach") else train_counts)
    is_many, is_few = _THRESHOLDS[convention]
    return np.where(is_many(counts), "many", np.where(is_few(counts), "few", "medium"))


def lt_counts(n_max: int, imbalance: float, num_classes: int) -> list[int]:
    """The exponential profile n_i = floor(n_max * (1 / imbalance) ** (i / (C - 1))), class 0 = head.

    The same float arithmetic as LDAM-DRW's `img_max * imb_factor ** (i / (C - 1.0))`, so
    CIFAR-100-LT totals 10,847 / 12,608 / 19,573 for imbalance 100 / 50 / 10.
    """
    if n_max < 1 or imbalance < 1 or num_classes < 1:
        raise ValueError(f"need n_max >= 1, imbalance >= 1, num_classes >= 1; got {n_max}, {imbalance}, {num_classes}")
    if num_classes == 1:
        return [n_max]
    factor = 1.0 / imbalance
    return [int(math.floor(n_max * factor ** (i / (num_classes - 1.0)))) for i in range(num_classes)]
