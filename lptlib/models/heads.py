"""Classifier heads on the final CLS feature: linear, and cosine z_c = s * cos(f, w_c) (no bias); CLIP's
zero-shot classifier and LIFT's text initialisation of a cosine head (docs/methods.md#backbones-and-peft-modules)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lptlib.schema import ConfigError

HEADS = ("linear", "cosine")


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


#: a class "name" that is an identifier: a WordNet id (ImageNet folders) or a number (iNaturalist folders)
_ID_NAME = re.compile(r"n\d{8}|\d+")


def check_classnames(classnames: list[str] | None, num_classes: int) -> None:
    """The text-initialised head needs one real name per class, in label order (not empty, not a 'class N'
    placeholder, not an id such as the WordNet ids ImageNet's folders are named by)."""
    fix = "give them with data.classnames_file (one name per line, in label order)"
    if not classnames:
        raise ConfigError(f"the text-initialised head needs the class names and the dataset has none; {fix}")
    if len(classnames) != num_classes:
        raise ConfigError(f"{len(classnames)} class names for {num_classes} classes; {fix}")
    blank = [i for i, n in enumerate(classnames) if not str(n).strip() or str(n).strip() == f"class {i}"]
    if blank:
        raise ConfigError(
            f"class names missing for labels {blank[:5]}{' ...' if len(blank) > 5 else ''} "
            f"(empty or a 'class N' placeholder); {fix}"
        )
    ids = [i for i, n in enumerate(classnames) if _ID_NAME.fullmatch(str(n).strip())]
    if ids:  # the image-folder names of ImageNet (WordNet ids) and iNaturalist (category ids) are not names
        raise ConfigError(
            f"class names for labels {ids[:5]}{' ...' if len(ids) > 5 else ''} are ids, not names "
            f"(e.g. {str(classnames[ids[0]]).strip()!r}: a WordNet or numeric category id, as the image "
            f"folders are named); {fix}"
        )
