"""Accuracy by shot group (docs/methods.md#metrics): overall, many / medium / few and per class.

Groups are defined by *training* counts under a convention (`lptlib.data.profiles.shot_groups`, its table);
an `LTData` carries its convention and groups from the moment it is built.

Group accuracy is the mean of the per-class accuracies in the group (NaN for an empty group).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lptlib.data.profiles import CONVENTIONS, SHOT_GROUPS, shot_groups

__all__ = [
    "CONVENTIONS",
    "POSTHOC_TAUS",
    "SHOT_GROUPS",
    "confusion_matrix",
    "per_class_accuracy",
    "prior_corrected",
    "shot_accuracy",
    "shot_groups",
]

CONFUSION_MAX_CLASSES = 100  # shot_accuracy stores the confusion counts up to this many classes (report figure)

ArrayLike = np.ndarray | torch.Tensor | Sequence[int]


def _np(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def per_class_accuracy(preds: ArrayLike, labels: ArrayLike, num_classes: int) -> np.ndarray:
    """Accuracy of each class on the evaluated samples (NaN for a class with no sample)."""
    preds, labels = _np(preds).astype(np.int64), _np(labels).astype(np.int64)
    if preds.shape != labels.shape:
        raise ValueError(f"preds {preds.shape} and labels {labels.shape} differ in shape")
    total = np.bincount(labels, minlength=num_classes).astype(float)
    correct = np.bincount(labels[preds == labels], minlength=num_classes).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, correct / np.maximum(total, 1), np.nan)


def shot_accuracy(
    preds: ArrayLike,
    labels: ArrayLike,
    train_counts: ArrayLike,
    convention: str = "decoupling",
    groups: np.ndarray | None = None,
) -> dict:
    """Top-1 accuracy overall and per shot group, in [0, 1].

    Returns `overall` (fraction of correct samples; equal to the class mean on the balanced test sets
    of every benchmark here), `class_mean`, `many`, `medium`, `few` (class means within each
    group), the group sizes `n_many` / `n_medium` / `n_few`, `per_class` (a list) and, for up to
    `CONFUSION_MAX_CLASSES` classes, `confusion` (counts; rows = true class, columns = predicted class).
    `groups` (per class, e.g. `LTData.groups`) replaces the groups `train_counts` and `convention` define.
    """
    counts = _np(train_counts)
    acc = per_class_accuracy(preds, labels, len(counts))
    groups = shot_groups(counts, convention) if groups is None else np.asarray(groups)
    p, y = _np(preds), _np(labels)
    out: dict = {
        "overall": float((p == y).mean()) if len(y) else float("nan"),
        "class_mean": float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan"),
    }
    for g in SHOT_GROUPS:
        sel = (groups == g) & np.isfinite(acc)
        out[g] = float(acc[sel].mean()) if sel.any() else float("nan")
    for g in SHOT_GROUPS:
        out[f"n_{g}"] = int((groups == g).sum())
    out["per_class"] = acc.tolist()
    if len(counts) <= CONFUSION_MAX_CLASSES:
        out["confusion"] = confusion_matrix(p, y, len(counts), normalize=False).astype(np.int64).tolist()
    return out


def confusion_matrix(preds: ArrayLike, labels: ArrayLike, num_classes: int, normalize: bool = True) -> np.ndarray:
    """Rows = true class, columns = predicted class; rows sum to 1 when `normalize`."""
    p, y = _np(preds).astype(np.int64), _np(labels).astype(np.int64)
    cm = np.bincount(y * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes).astype(float)
    if normalize:
        cm /= np.maximum(cm.sum(axis=1, keepdims=True), 1)
    return cm


#: the grid of post-hoc prior-correction strengths tau (`prior_corrected`), chosen on val
POSTHOC_TAUS = tuple(round(-1.0 + 0.25 * i, 2) for i in range(13))  # -1, -0.75, ..., 2


def prior_corrected(
    val_logits: torch.Tensor,
    val_labels: ArrayLike,
    test_logits: torch.Tensor,
    test_labels: ArrayLike,
    train_counts: ArrayLike,
    groups: np.ndarray,
    taus: Sequence[float] = POSTHOC_TAUS,
) -> dict:
    """Post-hoc logit adjustment (Menon et al. 2021, eq. 10): predict argmax_y z_y - tau log pi_y, pi the training
    prior, with tau in `taus` chosen by val `overall` accuracy (ties: the tau nearest 0), then the test split
    scored once with it. tau > 0 moves predictions towards rarer classes, tau < 0 back towards frequent ones, so
    a gap between two models that this correction closes is a shift of their priors, and a gap that survives it is
    one of representation. A class without training images counts as one (smoke tests only).
    Returns {'tau', 'val_overall', **shot_accuracy of the corrected test predictions}."""
    counts = torch.as_tensor(_np(train_counts), dtype=torch.float32).clamp_min(1.0)
    log_prior = counts.log() - counts.log().logsumexp(0)
    val_y = torch.as_tensor(_np(val_labels))

    def val_acc(tau: float) -> float:
        return float(((val_logits.float() - tau * log_prior).argmax(1) == val_y).float().mean())

    scores = {tau: val_acc(tau) for tau in taus}
    tau = max(taus, key=lambda t: (scores[t], -abs(t)))
    preds = (test_logits.float() - tau * log_prior).argmax(1)
    out = shot_accuracy(preds, test_labels, _np(train_counts), groups=groups)
    return {
        "tau": tau,
        "val_overall": scores[tau],
        **{k: v for k, v in out.items() if k not in ("per_class", "confusion")},
    }
