"""Models: frozen backbones (timm / open_clip, hub tags, local files, the miniatures)."""

from lptlib.models import miniature  # noqa: F401  (registers vit-mini with timm, clip-mini with open_clip)
from lptlib.models.backbones import (
    Backbone,
    WeightsError,
    build_open_clip,
    build_timm,
    create_backbone,
    load_strict,
    load_weight_file,
    save_weights,
)

__all__ = [
    "Backbone",
    "WeightsError",
    "build_open_clip",
    "build_timm",
    "create_backbone",
    "load_strict",
    "load_weight_file",
    "save_weights",
]
