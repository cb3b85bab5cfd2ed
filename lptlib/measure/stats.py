"""Statistics of seeds: a paired Student t interval over the seeds two methods share, its verdict, the paired
t-test's p-value, Holm's adjustment over a family of claims, the minimum detectable effect at a given power, and the
mean / std of one method's seeds. Below the recipes (which report their own comparisons, e.g. TEA's gains) and the claims
table (`lptlib.report.claims`) that applies them to every claim."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from scipy import optimize, stats

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


def paired_p_value(mean: float | None, std: float | None, n: int) -> float | None:
    """Two-sided p-value of the paired t-test of "mean difference = 0" (Student t, n - 1 degrees of freedom), from
    the mean and sample std of n paired differences; None below 2 differences. A zero spread gives 0 (a nonzero
    mean) or 1 (a zero mean)."""
    if mean is None or std is None or n < 2:
        return None
    if std == 0.0:
        return 1.0 if mean == 0.0 else 0.0
    t = mean / (std / math.sqrt(n))
    return float(2.0 * stats.t.sf(abs(t), n - 1))


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (Holm 1979) over one family; None entries (no test) stay None and do not
    count towards the family size. Rejecting where the adjusted p is below alpha controls the family-wise error
    rate at alpha: with the m tests sorted by p, p_(i) is adjusted to max_{j <= i} min(1, (m - j + 1) p_(j))."""
    tested = [(p, i) for i, p in enumerate(p_values) if p is not None]
    for p, _ in tested:
        if not (0.0 <= p <= 1.0):
            raise ValueError(f"a p-value must be in [0, 1], got {p!r}")
    out: list[float | None] = [None] * len(p_values)
    m = len(tested)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(tested)):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def adjusted_verdict(mean: float | None, p_adjusted: float | None, alpha: float) -> str:
    """ "supported" / "contradicted" where the adjusted p-value is below `alpha` (by the sign of the mean
    difference), else "inconclusive"."""
    if mean is None or p_adjusted is None or p_adjusted >= alpha:
        return "inconclusive"
    return "supported" if mean > 0 else "contradicted"


def min_detectable_effect(std: float | None, n: int, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """The smallest true mean difference the two-sided paired t-test at level `alpha` detects with probability
    `power`, for n paired differences whose spread is `std` (the observed sample std taken as the true one). Exact
    power from the noncentral t distribution: P(|T| > t_crit) with T ~ t(n - 1, delta sqrt(n) / std). Same units
    as `std`; None below 2 differences."""
    if std is None or n < 2:
        return None
    if not (0.0 < alpha < 1.0 and 0.0 < power < 1.0):
        raise ValueError(f"alpha and power must be in (0, 1), got alpha={alpha!r}, power={power!r}")
    return _mde_in_stds(n, alpha, power) * std


@functools.cache
def _mde_in_stds(n: int, alpha: float, power: float) -> float:
    """The minimum detectable effect in units of the differences' std (power depends on effect / std only, so the
    solve never sees a tiny or huge std)."""
    df = n - 1
    crit = float(stats.t.ppf(1.0 - alpha / 2.0, df))

    def shortfall(effect: float) -> float:
        nc = effect * math.sqrt(n)
        # P(T < -crit) = P(T' > crit) for T' ~ t(df, -nc): scipy's nct.cdf returns NaN in that far tail
        return float(stats.nct.sf(crit, df, nc) + stats.nct.sf(crit, df, -nc)) - power

    high = 1.0
    while shortfall(high) < 0:
        high *= 2.0
    return float(optimize.brentq(shortfall, 0.0, high, xtol=1e-12))
