"""The `data` section of params.yaml: which benchmark, where its files are, its long-tail profile and split seed,
the image sizes and crops of its transforms, and the shot-group convention (docs/parameters.md)."""

from __future__ import annotations

from typing import Literal

from lptlib.schema import PROCESSES_MAX, Field, RuleError, Section, Seed, StrictBool, model_validator

MINIATURE_DATASET = "fashion_mnist_lt"
Dataset = Literal["fashion_mnist_lt", "cifar100_lt", "places_lt", "imagenet_lt", "inat2018"]


class DataConfig(Section):
    """The `data` section."""

    name: Dataset = Field(MINIATURE_DATASET, description="dataset")
    root: str | None = Field(
        None,
        description="image folder (paper scale) or a folder with the Fashion-MNIST idx files; null: the default places",
    )
    split_dir: str | None = Field(
        None, description="folder with the OLTR split files (places_lt, imagenet_lt, inat2018)"
    )
    classnames_file: str | None = Field(
        None, description="one class name per line, in label order (overrides the names the dataset provides)"
    )
    download: StrictBool = Field(
        False, description="let torchvision download Fashion-MNIST / CIFAR-100 (needs a network)"
    )
    imbalance: float = Field(
        100.0, ge=1.0, le=100_000.0, description="imbalance factor n_max / n_min (fashion_mnist_lt, cifar100_lt)"
    )
    n_max: int = Field(500, ge=1, le=10_000_000, description="images of the head class (fashion_mnist_lt, cifar100_lt)")
    val_per_class: int = Field(
        100,
        ge=0,
        le=1_000_000,
        description="balanced val images per class, drawn from the spare target pool (fashion_mnist_lt)",
    )
    split_seed: Seed | None = Field(
        None,
        description="seed of the long-tail subsampling and the val draw; null: the run's `seed` (a seed is a new split)",
    )
    image_size: int = Field(28, ge=8, le=1024, description="network input side in pixels (the backbone's)")
    crop_scale: tuple[float, float] = Field((0.7, 1.0), description="RandomResizedCrop scale range for training")
    test_resize_ratio: float = Field(
        1.0, ge=1.0, le=2.0, description="test: resize to image_size * ratio, then centre-crop"
    )
    shot_convention: Literal["decoupling", "oltr", "lpt"] = Field(
        "decoupling", description="many/medium/few thresholds"
    )
    max_test_per_class: int | None = Field(
        None,
        ge=1,
        le=10_000_000,
        description="test images per class, the first in file order (a fixed set for every seed; smoke tests); "
        "null: the whole test set (the miniature's 1,000 per class, and the paper presets)",
    )
    num_workers: int = Field(0, ge=0, le=PROCESSES_MAX, description="DataLoader worker processes")

    @model_validator(mode="after")
    def _rules(self) -> DataConfig:
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise RuleError("crop_scale", f"need 0 < min <= max <= 1, got {list(self.crop_scale)}")
        if self.name != MINIATURE_DATASET and self.root is None and not (self.name == "cifar100_lt" and self.download):
            raise RuleError(
                "root",
                f"{self.name} needs the folder holding its images; set it in params.yaml (data: {{root: /path}})",
            )
        if self.name in ("places_lt", "imagenet_lt", "inat2018") and self.split_dir is None:
            raise RuleError("split_dir", f"{self.name} needs the folder with its OLTR split files")
        return self
