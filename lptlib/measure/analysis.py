"""Feature analysis of the preliminary VPT study (LPT Sec. 3; docs/methods.md#the-preliminary-vpt-study): LDA projection, the
intra/inter-class distance ratio gamma, and cosine k-NN accuracy, all on final CLS features.

Distances are Euclidean between L2-normalised features (the geometry the cosine k-NN and the cosine
heads use), so features of different backbones are compared on one scale.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis


def _normalized(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    return F.normalize(torch.as_tensor(np.asarray(x), dtype=torch.float64), dim=1)


def lda_projection(
    fit_features: np.ndarray, fit_labels: np.ndarray, *others: np.ndarray, n_components: int = 2
) -> list[np.ndarray]:
    """Fit LDA on (fit_features, fit_labels) and project them and every array in `others` to 2-D."""
    lda = LinearDiscriminantAnalysis(n_components=n_components)
    lda.fit(np.asarray(fit_features, dtype=np.float64), np.asarray(fit_labels))
    return [lda.transform(np.asarray(a, dtype=np.float64)) for a in (fit_features, *others)]


def distance_ratio(features: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> dict:
    """LPT Table 2: R_i = mean distance of class i's samples to its centroid, D = mean pairwise distance
    between class centroids, gamma = mean_i(R_i) / D (lower = more separable)."""
    f, y = _normalized(features), torch.as_tensor(np.asarray(labels))
    classes = torch.unique(y)
    centroids = torch.stack([f[y == c].mean(0) for c in classes])
    r = torch.stack([(f[y == c] - centroids[i]).norm(dim=1).mean() for i, c in enumerate(classes)])
    d = torch.pdist(centroids).mean() if len(classes) > 1 else torch.tensor(float("nan"))
    return {"R": r.mean().item(), "D": d.item(), "gamma": (r.mean() / d).item(), "R_per_class": r.tolist()}


def knn_accuracy(
    bank: np.ndarray | torch.Tensor,
    bank_labels: np.ndarray | torch.Tensor,
    queries: np.ndarray | torch.Tensor,
    query_labels: np.ndarray | torch.Tensor,
    k: int = 10,
) -> float:
    """Accuracy of a cosine k-NN classifier: majority vote of the k most similar bank features
    (ties broken by the larger summed similarity)."""
    bank_f, query_f = _normalized(bank), _normalized(queries)
    bank_y = torch.as_tensor(np.asarray(bank_labels)).long()
    query_y = torch.as_tensor(np.asarray(query_labels)).long()
    k = min(k, len(bank_y))
    num_classes = int(max(bank_y.max(), query_y.max())) + 1
    correct = 0
    for start in range(0, len(query_f), 1024):
        sim, idx = (query_f[start : start + 1024] @ bank_f.T).topk(k, dim=1)
        votes = torch.zeros(len(idx), num_classes, dtype=torch.float64)
        votes.scatter_add_(1, bank_y[idx], torch.ones_like(sim) + 1e-6 * sim)  # count, then similarity
        correct += (votes.argmax(1) == query_y[start : start + 1024]).sum().item()
    return correct / len(query_y)
