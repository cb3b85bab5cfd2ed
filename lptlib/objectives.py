"""Every training-only equation, in one place (docs/methods.md#losses):

- the classification losses (one registry, `build_loss`): CE, LA, BS and focal take logits; A-GCL takes the
  cosines c_ij in [-1, 1] of a cosine classifier and applies its scale itself (`AGCL.takes_cosine` is True), as
  LPT's code does;
- LPT's key-query matching term (`matching_loss`) and the dual-sampling objective
  L = L_AGCL(B_cb) + beta_e L'_AGCL(B_ib), beta_e = eta (E - e) / E (`dual_sampling_objective`);
- TEA's training-only parts (PEA, probability gate, TEC: `TEA`, `tea_objective`).

TEA: token embeddings augmentation for PEFT under a long-tailed distribution (Wang et al., Neurocomputing
2024), **our reading** of its abstract (docs/methods.md#tea; the full text is not public). Training only: `TEA` has
no parameters and the model predicts exactly as the plain PEFT model.

Each component and the abstract sentence it implements:

- **PEA**, patch-based embeddings augmentation: "based on patch token semantic mining, TEA uncovers
  category-specific semantic details within patch tokens to enhance token embeddings". For an image of
  class y with final patch tokens h_1..h_N (after the same final norm as the CLS embedding e_cls) and the
  class anchor w_y (the cosine head's weight, detached): alpha = softmax_n(cos(h_n, w_y) / tau),
  u = sum_n alpha_n h_n, e^ = normalize((1 - lambda) normalize(e_cls) + lambda normalize(u)).
- **PG**, probability gate: "designed to effectively enrich semantic information of tail categories using
  enhanced embeddings". The classifier sees e^ with probability
  g_y = g_max (log n_max - log n_y) / (log n_max - log n_min), else e_cls (PEA without PG: always e^).
- **TEC**, token embeddings consistency loss: "to prioritize category semantic information within tokens".
  L_tec = lambda_tec mean(1 - cos(e_cls, stopgrad(u))).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from lptlib.schema import Field, Section

#: a focusing exponent lambda of the asymmetric focusing (0: none)
Focusing = Annotated[float, Field(ge=0.0, le=100.0)]


class AGCLConfig(Section):
    alpha: float = Field(0.5, ge=0.0, le=10.0, description="Gaussian cloud size (noise_mul)")
    margin: float = Field(
        0.1, ge=0.0, le=1.0, description="additive margin on the target cosine (cosines lie in [-1, 1])"
    )
    scale: float = Field(20.0, gt=0.0, le=1000.0, description="logit scale s")
    smoothing: float = Field(0.1, ge=0.0, le=1.0, description="label smoothing")
    class_balanced: tuple[Focusing, Focusing] = Field(
        (0.0, 4.0), description="(lambda+, lambda-) of the class-balanced branch"
    )
    instance_balanced: tuple[Focusing, Focusing] = Field(
        (0.5, 8.0), description="(lambda+, lambda-) of the instance branch"
    )


TEA_VARIANTS = ("none", "pea", "pea_pg", "pea_pg_tec")


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


# ------------------------------------------------------------------------------------------- LPT
def dual_sampling_objective(cb_loss: AGCL, ib_loss: AGCL, epochs: int, eta: float, match_weight: float):
    """LPT's objective on a (class-balanced, instance-balanced) batch pair, one forward of both batches:
    L = L(B_cb) + beta_e L'(B_ib), beta_e = max(0, eta (E - e) / E), plus `match_weight` x the key-query matching
    term on each branch when the model has a group prompt pool (stage 2)."""

    def objective(model: nn.Module, batch, epoch: int) -> torch.Tensor:
        (xb, yb), (xi, yi) = batch
        out = model.forward_train(torch.cat([xb, xi]))
        n = len(xb)
        beta = max(0.0, eta * (epochs - epoch) / epochs)
        losses = [cb_loss(out["cosine"][:n], yb), ib_loss(out["cosine"][n:], yi)]
        if "query" in out:
            keys = model.tuner["group_pool"].keys
            losses[0] = losses[0] + match_weight * matching_loss(out["query"][:n], keys, out["topk"][:n])
            losses[1] = losses[1] + match_weight * matching_loss(out["query"][n:], keys, out["topk"][n:])
        return losses[0] + beta * losses[1]

    return objective


# ------------------------------------------------------------------------------------------- TEA
def variant_parts(variant: str) -> tuple[bool, bool, bool]:
    """(PEA, PG, TEC) switched on by a TEA variant name: none | pea | pea_pg | pea_pg_tec."""
    if variant not in TEA_VARIANTS:
        raise ValueError(f"unknown TEA variant {variant!r}; use one of {', '.join(TEA_VARIANTS)}")
    parts = set(variant.split("_"))
    return "pea" in parts, "pg" in parts, "tec" in parts


def gate_probabilities(class_counts: Sequence[int], gate_max: float) -> torch.Tensor:
    """PG: g_y = g_max (log n_max - log n_y) / (log n_max - log n_min); 0 for every class when all counts are equal."""
    if not 0.0 <= gate_max <= 1.0:
        raise ValueError(f"the gate maximum is a probability and must be in [0, 1], got {gate_max}")
    log_n = torch.as_tensor(class_counts, dtype=torch.float32).clamp_min(1).log()
    span = log_n.max() - log_n.min()
    if span == 0:
        return torch.zeros_like(log_n)
    return gate_max * (log_n.max() - log_n) / span


def patch_semantics(patch: torch.Tensor, anchors: torch.Tensor, temperature: float) -> torch.Tensor:
    """PEA's category semantics u (B, D) = sum_n softmax_n(cos(h_n, a) / tau) h_n, for patches (B, N, D) and one
    anchor per sample (B, D)."""
    cos = torch.einsum("bnd,bd->bn", F.normalize(patch, dim=-1), F.normalize(anchors, dim=-1))
    alpha = torch.softmax(cos / temperature, dim=1)
    return torch.einsum("bn,bnd->bd", alpha, patch)


class TEA(nn.Module):
    """PEA + probability gate + TEC as switched by `variant` (training only, no parameters).

    `forward(cls, patch, targets, anchors)` returns the classifier input (B, D) and the TEC loss (0 when off).
    """

    def __init__(
        self,
        class_counts: Sequence[int],
        variant: str = "pea_pg_tec",
        temperature: float = 0.1,
        mix: float = 0.5,
        gate_max: float = 0.5,
        tec_weight: float = 1.0,
    ):
        super().__init__()
        self.variant = variant
        self.pea, self.pg, self.tec = variant_parts(variant)
        if (self.pg or self.tec) and not self.pea:  # cannot happen with TEA_VARIANTS; kept for subclasses
            raise ValueError("the probability gate and TEC build on PEA")
        self.temperature, self.mix, self.tec_weight = temperature, mix, tec_weight
        gate = gate_probabilities(class_counts, gate_max) if self.pg else torch.ones(len(class_counts))
        self.register_buffer("gate", gate, persistent=False)

    def forward(
        self, cls: torch.Tensor, patch: torch.Tensor, targets: torch.Tensor, anchors: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        zero = cls.new_zeros(())
        if not self.pea:
            return cls, zero
        u = patch_semantics(patch, anchors.detach()[targets], self.temperature)
        enhanced = F.normalize((1 - self.mix) * F.normalize(cls, dim=-1) + self.mix * F.normalize(u, dim=-1), dim=-1)
        use = torch.rand(len(targets), device=cls.device) < self.gate.to(cls.device)[targets]
        features = torch.where(use[:, None], enhanced.to(cls.dtype), cls)
        tec = self.tec_weight * (1 - F.cosine_similarity(cls, u.detach(), dim=-1)).mean() if self.tec else zero
        return features, tec

    def extra_repr(self) -> str:
        return f"variant={self.variant}, temperature={self.temperature}, mix={self.mix}, tec_weight={self.tec_weight}"


def tea_objective(loss: nn.Module, tea: TEA):
    """loss_fn(model, (x, y), epoch): the classification loss on TEA's classifier input, plus TEC."""

    def loss_fn(model: nn.Module, batch, epoch: int) -> torch.Tensor:
        x, y = batch
        out = model.forward_features(x)
        head = model.tuner["head"]
        features, tec = tea(out["cls"], out["patch"], y, head.weight)
        cosine = head.cosine(model.dropout(features))
        return loss(cosine if loss.takes_cosine else head.scale * cosine, y) + tec

    return loss_fn
