import numpy as np
import pytest
import torch

from lptlib.data import lt_counts
from lptlib.measure.metrics import POSTHOC_TAUS, confusion_matrix, prior_corrected, shot_accuracy, shot_groups


@pytest.mark.parametrize(
    "convention,expected", [("decoupling", (35, 35, 30)), ("oltr", (35, 34, 31)), ("lpt", (35, 34, 31))]
)
def test_cifar100_if100_groups(convention, expected):
    g = shot_groups(lt_counts(500, 100, 100), convention)
    assert tuple(int((g == k).sum()) for k in ("many", "medium", "few")) == expected


def test_thresholds_at_the_boundaries():
    counts = [101, 100, 99, 21, 20, 19]
    assert shot_groups(counts, "decoupling").tolist() == ["many", "medium", "medium", "medium", "medium", "few"]
    assert shot_groups(counts, "oltr").tolist() == ["many", "many", "medium", "medium", "few", "few"]
    assert shot_groups(counts, "lpt").tolist() == ["many", "medium", "medium", "medium", "few", "few"]


def test_shot_accuracy_against_a_direct_computation():
    rng = np.random.default_rng(0)
    counts = np.array([500, 200, 90, 50, 15, 5])
    labels = np.repeat(np.arange(6), 30)
    preds = np.where(rng.random(len(labels)) < 0.7, labels, rng.integers(0, 6, len(labels)))
    out = shot_accuracy(torch.as_tensor(preds), torch.as_tensor(labels), counts)
    per_class = np.array([(preds[labels == c] == c).mean() for c in range(6)])
    np.testing.assert_allclose(out["per_class"], per_class)
    assert out["overall"] == pytest.approx((preds == labels).mean())
    assert out["class_mean"] == pytest.approx(per_class.mean())
    assert out["many"] == pytest.approx(per_class[:2].mean())
    assert out["medium"] == pytest.approx(per_class[2:4].mean())
    assert out["few"] == pytest.approx(per_class[4:].mean())
    assert (out["n_many"], out["n_medium"], out["n_few"]) == (2, 2, 2)


def test_empty_group_is_nan_and_missing_class_is_ignored():
    out = shot_accuracy([0, 1, 1], [0, 1, 0], [500, 300, 200])
    assert np.isnan(out["medium"]) and np.isnan(out["few"])
    assert np.isnan(out["per_class"][2])
    assert out["many"] == pytest.approx(0.75)


def test_confusion_matrix_rows_sum_to_one():
    cm = confusion_matrix([0, 1, 1, 2], [0, 0, 1, 2], 3)
    np.testing.assert_allclose(cm.sum(1), 1.0)
    assert cm[0, 1] == 0.5 and cm[1, 1] == 1.0
    raw = confusion_matrix([0, 1, 1, 2], [0, 0, 1, 2], 3, normalize=False)
    assert raw.sum() == 4


def test_prior_correction_picks_tau_on_val_and_scores_test_once():
    """A model biased towards the head class by log-prior: the correction finds tau = 1 on val and undoes it on test,
    against a direct computation; an unbiased model keeps tau = 0 (the tie-break towards 0)."""
    rng = np.random.default_rng(0)
    counts = np.array([400, 100, 25, 5])
    groups = np.array(["many", "many", "medium", "few"])
    log_prior = torch.tensor(np.log(counts / counts.sum()), dtype=torch.float32)

    def split(n):
        y = torch.as_tensor(rng.integers(0, 4, n))
        clean = torch.nn.functional.one_hot(y, 4).float() * 2.0 + torch.as_tensor(rng.normal(0, 0.8, (n, 4))).float()
        return clean, y

    (val, val_y), (test, test_y) = split(800), split(800)
    out = prior_corrected(val + log_prior, val_y, test + log_prior, test_y, counts, groups)
    accs = {t: float(((val + log_prior - t * log_prior).argmax(1) == val_y).float().mean()) for t in POSTHOC_TAUS}
    best = max(POSTHOC_TAUS, key=lambda t: (accs[t], -abs(t)))
    assert out["tau"] == best and 0.5 <= best <= 1.5 and out["val_overall"] == accs[best]
    want = shot_accuracy((test + log_prior - best * log_prior).argmax(1), test_y, counts, groups=groups)
    assert out["overall"] == want["overall"] and out["few"] == want["few"] and "per_class" not in out
    assert out["overall"] > float(((test + log_prior).argmax(1) == test_y).float().mean())
    tied = prior_corrected(
        torch.zeros(8, 4),
        torch.zeros(8, dtype=torch.long),
        torch.zeros(8, 4),
        torch.zeros(8, dtype=torch.long),
        counts,
        groups,
    )
    assert tied["tau"] == 0.0  # no tau helps: the nearest to 0 wins the tie
