"""Image transforms per backbone: normalisation and interpolation come from the backbone
(IN21k ViT: mean = std = 0.5; CLIP: CLIP mean/std, bicubic); sizes and crops from `DataConfig`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torchvision import transforms as T

from lptlib.data.config import DataConfig

_INTERPOLATION = {
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
    "nearest": T.InterpolationMode.NEAREST,
}


@dataclass(frozen=True)
class Normalization:
    """What a backbone expects of its input pixels."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    image_size: int | None = None  # the input side it was built for (None: any)

    def __post_init__(self):
        if self.interpolation not in _INTERPOLATION:
            raise ValueError(f"interpolation {self.interpolation!r}: use one of {', '.join(_INTERPOLATION)}")


def build_transforms(cfg: DataConfig, norm: Normalization) -> tuple[Callable, Callable]:
    """(train, test) transforms: RandomResizedCrop + flip for training; resize + centre crop for testing.

    Raises ConfigError when `data.image_size` is not the side the backbone takes (it failed at the first forward)."""
    if norm.image_size is not None and cfg.image_size != norm.image_size:
        from lptlib.schema import ConfigError

        raise ConfigError(
            f"data.image_size: {cfg.image_size}, but the backbone takes {norm.image_size}-pixel images; "
            f"set data.image_size: {norm.image_size}"
        )
    interp = _INTERPOLATION[norm.interpolation]
    tail = [T.ToTensor(), T.Normalize(norm.mean, norm.std)]
    train = T.Compose(
        [
            T.RandomResizedCrop(cfg.image_size, scale=tuple(cfg.crop_scale), interpolation=interp),
            T.RandomHorizontalFlip(),
            *tail,
        ]
    )
    resize = round(cfg.image_size * cfg.test_resize_ratio)
    test = T.Compose([T.Resize(resize, interpolation=interp), T.CenterCrop(cfg.image_size), *tail])
    return train, test
