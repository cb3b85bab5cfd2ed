import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lptlib.measure.analysis import distance_ratio, knn_accuracy, lda_projection
from lptlib.models.heads import CosineHead, build_head


def test_distance_ratio_against_a_direct_computation():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(60, 5)) + np.repeat(np.eye(5)[:3] * 4, 20, axis=0)
    labels = np.repeat(np.arange(3), 20)
    out = distance_ratio(feats, labels)
    f = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    cents = np.stack([f[labels == c].mean(0) for c in range(3)])
    r = [np.linalg.norm(f[labels == c] - cents[c], axis=1).mean() for c in range(3)]
    d = np.mean([np.linalg.norm(cents[i] - cents[j]) for i in range(3) for j in range(i + 1, 3)])
    assert out["R"] == pytest.approx(np.mean(r)) and out["D"] == pytest.approx(d)
    assert out["gamma"] == pytest.approx(np.mean(r) / d)
    tighter = distance_ratio(feats * [1, 1, 1, 1, 1] + np.repeat(np.eye(5)[:3] * 40, 20, axis=0), labels)
    assert tighter["gamma"] < out["gamma"]  # better separated classes: lower gamma


def test_knn_accuracy_against_a_direct_computation():
    rng = np.random.default_rng(1)
    bank, bank_y = rng.normal(size=(50, 4)), rng.integers(0, 3, 50)
    queries, query_y = rng.normal(size=(20, 4)), rng.integers(0, 3, 20)
    k = 5
    b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = q @ b.T
    preds = []
    for row in sims:
        nn_idx = np.argsort(-row)[:k]
        counts = np.bincount(bank_y[nn_idx], minlength=3).astype(float)
        sums = np.bincount(bank_y[nn_idx], weights=row[nn_idx], minlength=3)
        preds.append(np.lexsort((sums, counts))[-1])  # most votes, then largest summed similarity
    assert knn_accuracy(bank, bank_y, queries, query_y, k) == pytest.approx(np.mean(np.array(preds) == query_y))
    assert knn_accuracy(bank, bank_y, bank, bank_y, 1) == 1.0


def test_lda_projects_to_two_dimensions():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(90, 6)) + np.repeat(np.eye(6)[:3] * 3, 30, axis=0)
    y = np.repeat(np.arange(3), 30)
    fitted, other = lda_projection(x, y, x[:10])
    assert fitted.shape == (90, 2) and other.shape == (10, 2)
    np.testing.assert_allclose(fitted[:10], other)


def test_cosine_head_is_scaled_cosine():
    head = CosineHead(4, 3, scale=25.0)
    f = torch.randn(5, 4)
    expected = 25.0 * F.normalize(f, dim=1) @ F.normalize(head.weight, dim=1).T
    torch.testing.assert_close(head(f), expected)
    assert head.cosine(f).abs().max() <= 1.0 + 1e-6
    assert isinstance(build_head("linear", 4, 3), torch.nn.Linear)
