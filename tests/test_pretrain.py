import math

import pytest
import torch
import torch.nn.functional as F

from lptlib.engine import cosine_lr
from lptlib.models.heads import zero_shot_weights
from lptlib.recipes.pretrain import unicl_loss


def test_unicl_equals_clip_loss_when_labels_are_distinct():
    torch.manual_seed(0)
    img, txt = torch.randn(6, 8), torch.randn(6, 8)
    scale = torch.tensor(10.0)
    logits = scale * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
    target = torch.arange(6)
    clip = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    torch.testing.assert_close(unicl_loss(img, txt, torch.arange(6), scale), clip)


def test_unicl_treats_same_class_pairs_as_positives():
    torch.manual_seed(1)
    img, txt = torch.randn(4, 5), torch.randn(4, 5)
    labels = torch.tensor([0, 1, 0, 2])
    scale = torch.tensor(3.0)
    logits = scale * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
    expected_rows, expected_cols = [], []
    for i in range(4):
        pos = (labels == labels[i]).nonzero().flatten()
        expected_rows.append(-F.log_softmax(logits[i], 0)[pos].mean())
        expected_cols.append(-F.log_softmax(logits[:, i], 0)[pos].mean())
    expected = 0.5 * (torch.stack(expected_rows).mean() + torch.stack(expected_cols).mean())
    torch.testing.assert_close(unicl_loss(img, txt, labels, scale), expected)


def test_zero_shot_weights_average_normalised_prompts():
    table = {
        "a x.": torch.tensor([1.0, 0.0]),
        "b x.": torch.tensor([0.0, 2.0]),
        "a y.": torch.tensor([0.0, -1.0]),
        "b y.": torch.tensor([0.0, -3.0]),
    }
    w = zero_shot_weights(lambda texts: torch.stack([table[t] for t in texts]), ["x", "y"], ("a {name}.", "b {name}."))
    torch.testing.assert_close(w[0], torch.tensor([1.0, 1.0]) / math.sqrt(2))
    torch.testing.assert_close(w[1], torch.tensor([0.0, -1.0]))


def test_cosine_lr_schedule():
    assert cosine_lr(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert cosine_lr(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert cosine_lr(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert cosine_lr(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert cosine_lr(100, 100, 10, 1.0, min_lr=0.1) == pytest.approx(0.1)
    values = [cosine_lr(s, 100, 10, 1.0) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(values, values[1:]))
