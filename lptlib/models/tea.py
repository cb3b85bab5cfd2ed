"""TEA: token embeddings augmentation for PEFT under a long-tailed distribution (Wang et al., Neurocomputing
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

import torch
import torch.nn.functional as F
from torch import nn

from lptlib.config import TEA_VARIANTS


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
