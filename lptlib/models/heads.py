"""Classifier heads on the final CLS feature: linear, and cosine z_c = s * cos(f, w_c) (no bias)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lptlib.config import HEADS


class CosineHead(nn.Module):
    """z_c = scale * cos(f, w_c): the cosine classifier of LPT (s = 20) and LIFT / TEA (s = 25)."""

    def __init__(self, dim: int, num_classes: int, scale: float = 20.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.normal_(self.weight, std=dim ** -0.5)
        self.scale = scale

    def cosine(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features, dim=-1) @ F.normalize(self.weight, dim=-1).T

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * self.cosine(features)

    def extra_repr(self) -> str:
        return f"dim={self.weight.shape[1]}, num_classes={self.weight.shape[0]}, scale={self.scale}"


def build_head(kind: str, dim: int, num_classes: int, cosine_scale: float = 20.0) -> nn.Module:
    if kind == "linear":
        head = nn.Linear(dim, num_classes)
        nn.init.zeros_(head.bias)
        return head
    if kind == "cosine":
        return CosineHead(dim, num_classes, cosine_scale)
    raise ValueError(f"unknown head {kind!r}; use one of {', '.join(HEADS)}")
