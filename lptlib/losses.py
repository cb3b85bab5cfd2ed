"""Classification losses (one registry) and LPT's key-query matching term (docs/methods.md#losses).

Every loss is an `nn.Module` called as `loss(outputs, targets)`. CE, LA, BS and focal take logits;
A-GCL takes the cosines c_ij in [-1, 1] of a cosine classifier and applies its scale itself
(`AGCL.takes_cosine` is True), as LPT's code does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _log_counts(class_counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
    counts = torch.as_tensor(class_counts, dtype=torch.float32)
    if (counts <= 0).any():
        raise ValueError("every class needs at least one training image for a frequency-aware loss")
    return counts.log()


class CrossEntropy(nn.Module):
    """CE on logits."""

    takes_cosine = False

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets)


class LogitAdjusted(nn.Module):
    """LA (Menon et al. 2021): CE(z + tau * log pi, y), pi the training class prior; training only."""

    takes_cosine = False

    def __init__(self, class_counts: Sequence[int], tau: float = 1.0):
        super().__init__()
        log_counts = _log_counts(class_counts)
        self.register_buffer("adjustment", tau * (log_counts - log_counts.logsumexp(0)))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits + self.adjustment.to(logits.dtype), targets)


class BalancedSoftmax(nn.Module):
    """BS (Ren et al. 2020): softmax over z_j + log n_j (equal to LA with tau = 1)."""

    takes_cosine = False

    def __init__(self, class_counts: Sequence[int]):
        super().__init__()
        self.register_buffer("log_counts", _log_counts(class_counts))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits + self.log_counts.to(logits.dtype), targets)


class Focal(nn.Module):
    """Focal loss (Lin et al. 2017): -(1 - p_y)^gamma log p_y, batch mean."""

    takes_cosine = False

    def __init__(self, gamma: float = 2.0):
        super().__init__()
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)
        return (-(1 - log_p.exp()).pow(self.gamma) * log_p).mean()


class AGCL(nn.Module):
    """A-GCL, LPT's asymmetric Gaussian-clouded logit loss, exactly as its code (docs/methods.md#losses):

    mu_j = (log n_max - log n_j) / max_j'(log n_max - log n_j');  eps_ij ~ N(0, (1/3)^2) clipped to [-1, 1];
    c~_ij = c_ij - alpha |eps_ij| mu_j (all classes);  c^_iy = c~_iy - m;  z = s c^;  p = softmax(z);
    loss = -sum_j y~_j w_j log p_j with y~ = (1 - ls) onehot + ls / C, w_y = (1 - p_y)^lambda+,
    w_j = p_j^lambda- (not detached); batch mean. LPT: alpha 0.5, m 0.1, s 20, ls 0.1;
    lambda+/lambda- = 0/4 (class-balanced branch) and 0.5/8 (instance-balanced branch).
    """

    takes_cosine = True

    def __init__(
        self,
        class_counts: Sequence[int],
        alpha: float = 0.5,
        margin: float = 0.1,
        scale: float = 20.0,
        gamma_pos: float = 0.0,
        gamma_neg: float = 4.0,
        smoothing: float = 0.1,
    ):
        super().__init__()
        log_counts = _log_counts(class_counts)
        gap = log_counts.max() - log_counts
        self.register_buffer("mu", gap / gap.max() if gap.max() > 0 else gap)
        self.alpha, self.margin, self.scale = alpha, margin, scale
        self.gamma_pos, self.gamma_neg, self.smoothing = gamma_pos, gamma_neg, smoothing

    def perturb(self, cosines: torch.Tensor) -> torch.Tensor:
        """The Gaussian cloud: c - alpha |eps| mu, eps ~ N(0, 1/9) clipped to [-1, 1] (fresh every call)."""
        eps = (torch.randn_like(cosines) / 3.0).clamp(-1.0, 1.0)
        return cosines - self.alpha * eps.abs() * self.mu.to(cosines.dtype)

    def forward(self, cosines: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(targets, cosines.shape[1]).to(cosines.dtype)
        logits = self.scale * (self.perturb(cosines) - self.margin * onehot)
        log_p = F.log_softmax(logits, dim=1)
        # 1 - p, kept above 0: when p_y rounds to 1, (1 - p_y)^0.5 (the instance branch) would otherwise
        # have an infinite derivative and turn the gradient into NaN while the loss stays finite
        one_minus_p = (-torch.expm1(log_p)).clamp_min(torch.finfo(log_p.dtype).tiny)
        weight = torch.where(onehot.bool(), one_minus_p.pow(self.gamma_pos), log_p.exp().pow(self.gamma_neg))
        target = onehot * (1 - self.smoothing) + self.smoothing / cosines.shape[1]
        return -(target * weight * log_p).sum(1).mean()


LOSSES = ("ce", "la", "bs", "focal", "agcl")


def build_loss(name: str, class_counts: Sequence[int] | None = None, **kwargs) -> nn.Module:
    """The loss named `name` (one of LOSSES); frequency-aware losses need the training class counts."""
    if name == "ce":
        return CrossEntropy(**kwargs)
    if name == "focal":
        return Focal(**kwargs)
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; use one of {', '.join(LOSSES)}")
    if class_counts is None:
        raise ValueError(f"loss {name!r} needs the training class counts")
    return {"la": LogitAdjusted, "bs": BalancedSoftmax, "agcl": AGCL}[name](class_counts, **kwargs)


def matching_loss(query: torch.Tensor, keys: torch.Tensor, topk_idx: torch.Tensor) -> torch.Tensor:
    """LPT's key-query matching term: -(1/B) sum_x sum_{j in topk(x)} cos(q(x), k_j)."""
    cos = F.normalize(query, dim=-1) @ F.normalize(keys, dim=-1).T
    return -cos.gather(1, topk_idx).sum(1).mean()
