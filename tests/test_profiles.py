import numpy as np
import pytest

from lptlib.data import lt_counts, lt_subsample


@pytest.mark.parametrize("imbalance,total", [(100, 10_847), (50, 12_608), (10, 19_573)])
def test_cifar100_lt_totals(imbalance, total):
    counts = lt_counts(500, imbalance, 100)
    assert sum(counts) == total
    assert counts[0] == 500 and counts[-1] == 500 // imbalance


def test_miniature_counts():
    assert lt_counts(500, 100, 10) == [500, 299, 179, 107, 64, 38, 23, 13, 8, 5]
    assert sum(lt_counts(500, 100, 10)) == 1_236


def test_profile_formula_matches_a_direct_computation():
    for n_max, imb, c in [(500, 100, 100), (1280, 256, 37), (7, 3, 2)]:
        direct = [int(np.floor(n_max * (1 / imb) ** (i / (c - 1)))) for i in range(c)]
        assert lt_counts(n_max, imb, c) == direct


def test_lt_subsample_is_the_ldam_convention():
    targets = np.repeat(np.arange(100), 500)
    rng = np.random.default_rng(1)
    targets = targets[rng.permutation(len(targets))]
    counts = lt_counts(500, 100, 100)
    ours = lt_subsample(targets, counts, seed=0)
    # LDAM-DRW: np.random.seed(0), then per class np.where + np.random.shuffle, keep the first n_c
    np.random.seed(0)  # noqa: NPY002 (the reference convention itself)
    reference = []
    for c, n in enumerate(counts):
        idx = np.where(targets == c)[0]
        np.random.shuffle(idx)  # noqa: NPY002
        reference.extend(idx[:n])
    np.testing.assert_array_equal(ours, reference)
    assert len(ours) == 10_847
    np.testing.assert_array_equal(np.bincount(targets[ours], minlength=100), counts)
