"""Long-tail profiles."""

from __future__ import annotations

import math


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
