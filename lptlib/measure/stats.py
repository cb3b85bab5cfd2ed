"""Statistics of seeds: a paired Student t interval over the seeds two methods share, its verdict, and the mean /
std of one method's seeds. Below the recipes (which report their own comparisons, e.g. TEA's gains) and the claims
table (`lptlib.report.claims`) that applies them to every claim."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

VERDICTS = ("supported", "contradicted", "inconclusive", "not run")


def check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def diff_interval(diffs: Sequence[float], confidence: float) -> dict:
    """Mean, sample std and Student t interval of paired differences (None where undefined)."""
    check_confidence(confidence)
    d = np.asarray(diffs, dtype=float)
    n = int(d.size)
    out = {"diffs": [float(x) for x in d], "n": n, "mean": None, "std": None, "low": None, "high": None, "width": None}
    if n == 0:
        return out
    mean = float(d.mean())
    out["mean"] = mean
    if n < 2:
        return out
    std = float(d.std(ddof=1))
    half = float(stats.t.ppf((1.0 + confidence) / 2.0, n - 1)) * std / math.sqrt(n)
    out.update(std=std, low=mean - half, high=mean + half, width=2.0 * half)
    return out


def paired_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict:
    """Paired Student t interval of ``a - b`` (same seeds, same order).

    Returns ``diffs``, ``n``, ``mean``, ``std`` (ddof=1), ``low``, ``high`` and ``width`` (= high - low); with
    n < 2 the std and the bounds are None (and the mean too when n == 0).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired values must be two 1-D sequences of one length, got shapes {a.shape} and {b.shape}")
    return diff_interval(a - b, confidence)


def verdict(low: float | None, high: float | None) -> str:
    """ "supported" when the interval lies above 0, "contradicted" below 0, else "inconclusive"."""
    if low is None or high is None:
        return "inconclusive"
    if low > 0:
        return "supported"
    if high < 0:
        return "contradicted"
    return "inconclusive"


def seed_summary(values: Sequence[float]) -> dict:
    """Mean, sample std (ddof=1; 0.0 for one value) and n of per-seed values."""
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or v.size == 0:
        raise ValueError("seed_summary needs a non-empty 1-D sequence of values")
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


def format_mean_std(values: Sequence[float], scale: float = 100, digits: int = 2) -> str:
    """A "mean ± std" table cell (e.g. "62.61 ± 1.23"; just "62.61" for one seed), values multiplied by `scale`."""
    s = seed_summary(values)
    mean = f"{s['mean'] * scale:.{digits}f}"
    return mean if s["n"] == 1 else f"{mean} ± {s['std'] * scale:.{digits}f}"
