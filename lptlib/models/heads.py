"""Classifier heads on the final CLS feature: linear, and cosine z_c = s * cos(f, w_c) (no bias); CLIP's
zero-shot classifier and LIFT's text initialisation of a cosine head (docs/methods.md#backbones-and-peft-modules)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lptlib.config import HEADS


class CosineHead(nn.Module):
    """z_c = scale * cos(f, w_c): the cosine classifier of LPT (s = 20) and LIFT / TEA (s = 25)."""

    def __init__(self, dim: int, num_classes: int, scale: float = 20.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.normal_(self.weight, std=dim**-0.5)
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


def zero_shot_weights(
    encode_text: Callable[[list[str]], torch.Tensor], classnames: Sequence[str], templates: Sequence[str]
) -> torch.Tensor:
    """(C, E) zero-shot classifier: the normalised mean of each class's normalised prompt embeddings."""
    rows = []
    for name in classnames:
        emb = F.normalize(encode_text([t.format(name=name) for t in templates]), dim=-1)
        rows.append(F.normalize(emb.mean(0), dim=-1))
    return torch.stack(rows)


def text_head_weights(backbone, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """(C, D) cosine-head weights from the CLIP text tower (LIFT): the zero-shot classifier of the templates,
    mapped into the visual width through the transpose of the visual projection, normalised.

    cos(f, P t) has the zero-shot score (P^T f) . t as its numerator, so the head starts near zero-shot CLIP.
    """
    with torch.no_grad():
        weights = zero_shot_weights(backbone.encode_text, classnames, templates)
        return F.normalize(weights.float() @ backbone.visual.proj.float().T, dim=-1)


class ZeroShotCLIP(nn.Module):
    """Zero-shot CLIP on a frozen open_clip backbone: logits = cos(project(f), t_c) (argmax as CLIP's)."""

    def __init__(self, backbone, classnames: Sequence[str], templates: Sequence[str]):
        super().__init__()
        self.backbone = backbone
        with torch.no_grad():
            self.register_buffer("weights", zero_shot_weights(backbone.encode_text, classnames, templates).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone.project(self.backbone(x)), dim=-1) @ self.weights.to(x.dtype).T
