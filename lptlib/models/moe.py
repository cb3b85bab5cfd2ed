"""LPT++'s mixture-of-experts scorer (our reading of its abstract; docs/methods.md#lpt-mixture-of-experts)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MoEScorer(nn.Module):
    """a(x) = softmax(MLP([f_1; ...; f_E])) over E experts; p(y|x) = sum_e a_e softmax(z_e / T_e), T_e learnable
    (log-parametrised, initialised to 1). Features are L2-normalised per expert before concatenation."""

    def __init__(self, feature_dims: list[int], hidden: int = 64):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(sum(feature_dims), hidden), nn.ReLU(), nn.Linear(hidden, len(feature_dims)))
        self.log_temperature = nn.Parameter(torch.zeros(len(feature_dims)))

    def gates(self, features: list[torch.Tensor]) -> torch.Tensor:
        return torch.softmax(self.mlp(torch.cat([F.normalize(f, dim=-1) for f in features], 1)), dim=1)

    def forward(self, features: list[torch.Tensor], logits: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(class probabilities (B, C), gate weights (B, E))."""
        a = self.gates(features)
        temps = self.log_temperature.exp()
        probs = torch.stack([torch.softmax(z / temps[e], dim=1) for e, z in enumerate(logits)], 1)
        return (a[:, :, None] * probs).sum(1), a
