"""Typed, validated parameters: one dataclass per `params.yaml` section.

Every notebook turns its papermill parameters into a `Config` with `parse(...)` before it reads
any data. An unknown key, a wrong type, a value out of range or an unknown dataset/backbone name
raises `ConfigError` naming the key (as a dotted path) and what is allowed.
The resolved config is written next to each stage's outputs with `save_resolved`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from lptlib.utils import atomic_write_bytes, git_revision


class ConfigError(ValueError):
    """A parameter is wrong; the message names the dotted key and the fix."""


def _opt(default: Any = None, *, help: str = "", min: float | None = None, max: float | None = None,
         choices: tuple | None = None, default_factory: Any = None) -> Any:
    meta = {"help": help, "min": min, "max": max, "choices": choices}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


# ----------------------------------------------------------------------------------------- data
MINIATURE_DATASET = "fashion_mnist_lt"
DATASETS = (MINIATURE_DATASET, "cifar100_lt", "places_lt", "imagenet_lt", "inat2018")
SHOT_CONVENTIONS = ("decoupling", "oltr", "lpt")


@dataclass(frozen=True)
class DataConfig:
    name: str = _opt(MINIATURE_DATASET, choices=DATASETS, help="dataset")
    root: str | None = _opt(None, help="image folder (paper scale) or a folder with the Fashion-MNIST idx "
                                       "files; null: the default places")
    split_dir: str | None = _opt(None, help="folder with the OLTR split files (places_lt, imagenet_lt, inat2018)")
    classnames_file: str | None = _opt(None, help="one class name per line, in label order (overrides the "
                                                  "names the dataset provides)")
    download: bool = _opt(False, help="let torchvision download Fashion-MNIST / CIFAR-100 (needs a network)")
    imbalance: float = _opt(100.0, min=1.0, help="imbalance factor n_max / n_min (fashion_mnist_lt, cifar100_lt)")
    n_max: int = _opt(500, min=1, help="images of the head class (fashion_mnist_lt, cifar100_lt)")
    val_per_class: int = _opt(20, min=0, help="balanced val images per class (fashion_mnist_lt)")
    split_seed: int = _opt(0, min=0, help="seed of the pool / long-tail subsampling")
    image_size: int = _opt(28, min=1, help="network input side in pixels")
    crop_scale: tuple[float, float] = _opt((0.7, 1.0), help="RandomResizedCrop scale range for training")
    test_resize_ratio: float = _opt(1.0, min=1.0, help="test: resize to image_size * ratio, then centre-crop")
    shot_convention: str = _opt("decoupling", choices=SHOT_CONVENTIONS, help="many/medium/few thresholds")
    max_test_per_class: int | None = _opt(None, min=1, help="smoke tests only: cap the test set per class")
    num_workers: int = _opt(0, min=0, help="DataLoader worker processes")

    def check(self, path: str) -> None:
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ConfigError(f"{path}.crop_scale: need 0 < min <= max <= 1, got {list(self.crop_scale)}")
        if self.name != MINIATURE_DATASET and self.root is None and not (
                self.name == "cifar100_lt" and self.download):
            raise ConfigError(f"{path}.root: {self.name} needs the folder holding its images; set it "
                              f"(e.g. `make preset PRESET={self.name} SET=\"data.root=/path\"`)")
        if self.name in ("places_lt", "imagenet_lt", "inat2018") and self.split_dir is None:
            raise ConfigError(f"{path}.split_dir: {self.name} needs the folder with its OLTR split files")


# ------------------------------------------------------------------------------------ backbones
MINIATURE_BACKBONES = {"vit-mini": "timm", "clip-mini": "open_clip"}
BACKBONE_FAMILIES = ("timm", "open_clip")


def backbone_family(name: str) -> str:
    """'timm' or 'open_clip' for a backbone name: a miniature name or '<family>:<model>'."""
    if name in MINIATURE_BACKBONES:
        return MINIATURE_BACKBONES[name]
    family = name.split(":", 1)[0]
    if ":" not in name or family not in BACKBONE_FAMILIES:
        raise ConfigError(f"backbone name {name!r}: use a miniature ({', '.join(MINIATURE_BACKBONES)}) "
                          "or 'timm:<model>.<tag>' (e.g. timm:vit_base_patch16_224.augreg_in21k) "
                          "or 'open_clip:<model>' (e.g. open_clip:ViT-B-16)")
    return family


@dataclass(frozen=True)
class BackboneConfig:
    name: str = _opt("vit-mini", help="vit-mini | clip-mini | timm:<model>.<tag> | open_clip:<model>")
    weights: str = _opt("random", help="a local weight file | 'hub' (download by tag) | 'random'")
    tag: str | None = _opt(None, help="open_clip pretrained tag (e.g. openai), used with weights: hub")

    def check(self, path: str) -> None:
        try:
            family = backbone_family(self.name)
        except ConfigError as e:
            raise ConfigError(f"{path}.name: {e}") from None
        if self.name in MINIATURE_BACKBONES and self.weights == "hub":
            raise ConfigError(f"{path}.weights: {self.name} is pretrained by this pipeline (00_pretrain), "
                              "not downloadable; give its weight file")
        if family == "open_clip" and self.weights == "hub" and not self.tag:
            raise ConfigError(f"{path}.tag: open_clip weights from the hub need a pretrained tag (e.g. openai)")
        if self.name in MINIATURE_BACKBONES:
            return
        model = self.name.split(":", 1)[1]
        if family == "timm":
            import timm

            arch = model.split(".", 1)[0]
            if not timm.is_model(arch):
                close = difflib.get_close_matches(arch, timm.list_models(), n=5)
                raise ConfigError(f"{path}.name: timm has no model {arch!r}; close names: {', '.join(close) or '-'} "
                                  "(timm.list_models() lists all)")
            if self.weights == "hub":
                if "." not in model:
                    raise ConfigError(f"{path}.name: give the full timm tag, e.g. "
                                      "timm:vit_base_patch16_224.augreg_in21k (an untagged name resolves to "
                                      "different weights across timm versions)")
                if model not in timm.list_pretrained(model):
                    tags = timm.list_pretrained(arch + ".*")
                    raise ConfigError(f"{path}.name: timm has no pretrained tag {model!r}; "
                                      f"tags of {arch}: {', '.join(tags) or 'none'}")
        else:
            import open_clip

            if model not in open_clip.list_models():
                close = difflib.get_close_matches(model, open_clip.list_models(), n=5)
                raise ConfigError(f"{path}.name: open_clip has no model {model!r}; close names: "
                                  f"{', '.join(close) or '-'} (open_clip.list_models() lists all)")
            if self.weights == "hub" and self.tag not in open_clip.list_pretrained_tags_by_model(model):
                raise ConfigError(f"{path}.tag: open_clip has no tag {self.tag!r} for {model}; tags: "
                                  f"{', '.join(open_clip.list_pretrained_tags_by_model(model)) or 'none'}")


@dataclass(frozen=True)
class BackbonesConfig:
    visual: BackboneConfig = _opt(default_factory=lambda: BackboneConfig(
        "vit-mini", "outputs/pretrain/vit-mini.safetensors"), help="visual-only backbone")
    vision_language: BackboneConfig = _opt(default_factory=lambda: BackboneConfig(
        "clip-mini", "outputs/pretrain/clip-mini.safetensors"), help="vision-language backbone")


# ------------------------------------------------------------------------------------- pretrain
@dataclass(frozen=True)
class PretrainRunConfig:
    epochs: int = _opt(2, min=0, help="passes over the source pool")
    batch_size: int = _opt(256, min=1, help="images per step")
    lr: float = _opt(1e-3, min=0.0, help="AdamW peak learning rate")
    weight_decay: float = _opt(0.05, min=0.0, help="AdamW weight decay")
    warmup_steps: int = _opt(50, min=0, help="linear warm-up steps, then cosine decay to 0")
    max_images: int | None = _opt(None, min=1, help="smoke tests only: cap the source pool")


DEFAULT_TEMPLATES = ("a photo of a {name}.", "a picture of a {name}.", "a black and white photo of a {name}.",
                     "a product photo of a {name}.", "an image of a {name}.")


@dataclass(frozen=True)
class PretrainConfig:
    vit_mini: PretrainRunConfig = _opt(default_factory=PretrainRunConfig, help="vit-mini, 4 coarse labels")
    clip_mini: PretrainRunConfig = _opt(default_factory=PretrainRunConfig, help="clip-mini, contrastive")
    caption_templates: tuple[str, ...] = _opt(DEFAULT_TEMPLATES, help="captions of the contrastive pretraining")
    zero_shot_templates: tuple[str, ...] = _opt(("a photo of a {name}.",), help="prompts of the zero-shot classifier")

    def check(self, path: str) -> None:
        for key in ("caption_templates", "zero_shot_templates"):
            templates = getattr(self, key)
            if not templates:
                raise ConfigError(f"{path}.{key}: give at least one template")
            for t in templates:
                if "{name}" not in t:
                    raise ConfigError(f"{path}.{key}: template {t!r} has no '{{name}}' placeholder")


# ---------------------------------------------------------------------------------- PEFT training
SAMPLING_MODES = ("instance_balanced", "class_balanced")
PROMPT_FORMS = ("kv", "concat")
HEADS = ("linear", "cosine")
BACKBONE_ROLES = ("visual", "vision_language")
RESUME_HELP = "'auto' (continue a matching checkpoint of this stage), 'never', or a checkpoint path"


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _opt(20, min=1, help="training epochs (an epoch = as many images as the train set holds)")
    batch_size: int = _opt(64, min=1, help="images per step")
    lr: float = _opt(0.05, min=0.0, help="SGD peak learning rate (warm-up, then cosine decay per step)")
    weight_decay: float = _opt(1e-4, min=0.0, help="SGD weight decay")
    momentum: float = _opt(0.9, min=0.0, max=1.0, help="SGD momentum")
    warmup_epochs: float = _opt(1.0, min=0.0, help="linear warm-up length in epochs")
    eval_batch_size: int = _opt(512, min=1, help="images per evaluation batch")


@dataclass(frozen=True)
class VPTStudyConfig:
    backbone: str = _opt("visual", choices=BACKBONE_ROLES, help="which `backbones` entry is studied")
    prompt_length: int = _opt(10, min=0, help="VPT-deep prompt tokens per block (l_p)")
    prompt_form: str = _opt("kv", choices=PROMPT_FORMS, help="kv: prompts in keys/values only (LPT eq. 1); "
                                                          "concat: concatenate and strip (same outputs)")
    head: str = _opt("linear", choices=HEADS, help="classifier on the final CLS feature")
    cosine_scale: float = _opt(20.0, min=0.0, help="scale s of a cosine head")
    samplings: tuple[str, ...] = _opt(SAMPLING_MODES, help="Table 1 columns: instance_balanced, class_balanced")
    linear_probe: TrainConfig = _opt(default_factory=lambda: TrainConfig(lr=2.0), help="linear probing")
    vpt_deep: TrainConfig = _opt(default_factory=lambda: TrainConfig(lr=1.0), help="VPT-deep prompt tuning")
    knn_k: int = _opt(10, min=1, help="k of the cosine k-NN accuracy (Table 2)")
    feature_images_per_class: int = _opt(100, min=2, help="images per class whose features LDA and Table 2 use")
    resume: str = _opt("auto", help=RESUME_HELP)

    def check(self, path: str) -> None:
        for mode in self.samplings:
            if mode not in SAMPLING_MODES:
                raise ConfigError(f"{path}.samplings: {mode!r} is not one of: {', '.join(SAMPLING_MODES)}")
        if not self.samplings:
            raise ConfigError(f"{path}.samplings: give at least one sampling mode")


# ------------------------------------------------------------------------------------------- LPT
@dataclass(frozen=True)
class AGCLConfig:
    alpha: float = _opt(0.5, min=0.0, help="Gaussian cloud size (noise_mul)")
    margin: float = _opt(0.1, help="additive margin on the target cosine")
    scale: float = _opt(20.0, min=0.0, help="logit scale s")
    smoothing: float = _opt(0.1, min=0.0, max=1.0, help="label smoothing")
    class_balanced: tuple[float, float] = _opt((0.0, 4.0), help="(lambda+, lambda-) of the class-balanced branch")
    instance_balanced: tuple[float, float] = _opt((0.5, 8.0), help="(lambda+, lambda-) of the instance branch")


@dataclass(frozen=True)
class LPTConfig:
    backbone: str = _opt("visual", choices=BACKBONE_ROLES, help="which `backbones` entry LPT tunes")
    prompt_length: int = _opt(10, min=0, help="l_p: shared prompts per block, and group prompts per block")
    prompt_form: str = _opt("kv", choices=PROMPT_FORMS, help="kv (LPT eq. 1) | concat")
    cosine_scale: float = _opt(20.0, min=0.0, help="s of the cosine head at prediction (A-GCL has its own)")
    head_dropout: float = _opt(0.1, min=0.0, max=1.0, help="dropout before the cosine head")
    num_samples_cls: int = _opt(4, min=1, help="class-aware sampler: images per visited class")
    eta: float = _opt(0.5, min=0.0, help="dual sampling: beta_e = eta (E - e) / E weights the instance branch")
    agcl: AGCLConfig = _opt(default_factory=AGCLConfig, help="A-GCL loss")
    pool_size: int = _opt(20, min=1, help="m: entries of the group prompt pool")
    top_k: int = _opt(2, min=1, help="k: keys picked per image")
    share_blocks: int = _opt(6, min=0, help="K: blocks 1..K use the shared prompts only")
    match_weight: float = _opt(0.5, min=0.0, help="weight of the key-query matching term")
    stage1: TrainConfig = _opt(default_factory=lambda: TrainConfig(lr=0.5, weight_decay=0.01), help="stage 1")
    stage2: TrainConfig = _opt(default_factory=lambda: TrainConfig(lr=0.05, weight_decay=0.01), help="stage 2")
    resume: str = _opt("auto", help=RESUME_HELP)

    def check(self, path: str) -> None:
        if self.top_k > self.pool_size:
            raise ConfigError(f"{path}.top_k: {self.top_k} keys cannot be picked from a pool of {self.pool_size}")


# ------------------------------------------------------------------------------------------- TEA
PEFT_METHODS = ("vpt_deep", "adaptformer", "lora")
TEA_LOSSES = ("ce", "la", "bs", "agcl")
TEA_VARIANTS = ("none", "pea", "pea_pg", "pea_pg_tec")


@dataclass(frozen=True)
class TEAMatrixConfig:
    peft: tuple[str, ...] = _opt(PEFT_METHODS, help="PEFT methods of the DVC matrix stage `tea`")
    loss: tuple[str, ...] = _opt(("ce", "la"), help="losses of the matrix (all: ce, la, bs, agcl)")
    tea: tuple[str, ...] = _opt(("none", "pea_pg_tec"), help="TEA variants of the matrix (all: none, pea, pea_pg, "
                                                          "pea_pg_tec)")

    def check(self, path: str) -> None:
        for key, allowed in (("peft", PEFT_METHODS), ("loss", TEA_LOSSES), ("tea", TEA_VARIANTS)):
            values = getattr(self, key)
            if not values:
                raise ConfigError(f"{path}.{key}: give at least one value ({', '.join(allowed)})")
            for v in values:
                if v not in allowed:
                    raise ConfigError(f"{path}.{key}: {v!r} is not one of: {', '.join(allowed)}")
            if len(set(values)) != len(values):
                raise ConfigError(f"{path}.{key}: {list(values)} repeats a value")


@dataclass(frozen=True)
class TEAConfig:
    backbone: str = _opt("vision_language", choices=BACKBONE_ROLES, help="which `backbones` entry is tuned")
    templates: tuple[str, ...] = _opt(("a photo of a {name}.",), help="prompts of the text-initialised head and "
                                                                       "of the zero-shot classifier")
    cosine_scale: float = _opt(25.0, min=0.0, help="s of the cosine head (LIFT / TEA: 25)")
    head_init: str = _opt("text", choices=("text", "class_mean", "random"), help="cosine head init: text (LIFT, CLIP only), class_mean (LIFT for visual-only ViTs) or random")
    sampling: str = _opt("instance_balanced", choices=SAMPLING_MODES, help="training sampler (LIFT: instance)")
    prompt_length: int = _opt(10, min=1, help="vpt_deep: prompt tokens per block")
    prompt_form: str = _opt("kv", choices=PROMPT_FORMS, help="vpt_deep: kv | concat")
    bottleneck: int | None = _opt(None, min=1, help="adaptformer: bottleneck width; null: "
                                                    "max(1, 2^floor(log2(C / 24)))")
    lora_rank: int = _opt(4, min=1, help="lora: rank r of the q and v updates")
    la_tau: float = _opt(1.0, min=0.0, help="la: tau of the logit adjustment")
    agcl: AGCLConfig = _opt(default_factory=lambda: AGCLConfig(scale=25.0),
                            help="agcl: A-GCL; the (lambda+, lambda-) pair of the branch matching `sampling`")
    temperature: float = _opt(0.1, min=1e-6, help="PEA: tau of the patch attention softmax_n(cos(h_n, w_y) / tau)")
    mix: float = _opt(0.5, min=0.0, max=1.0, help="PEA: lambda of e^ = norm((1 - lambda) e_cls + lambda u)")
    gate_max: float = _opt(0.5, help="PG: g_max, the augmentation probability of the rarest class ([0, 1])")
    tec_weight: float = _opt(1.0, min=0.0, help="TEC: weight lambda_tec of the consistency loss")
    vpt_deep: TrainConfig = _opt(default_factory=lambda: TrainConfig(epochs=5, lr=0.1), help="vpt_deep schedule")
    adaptformer: TrainConfig = _opt(default_factory=lambda: TrainConfig(epochs=5, lr=0.01),
                                    help="adaptformer schedule")
    lora: TrainConfig = _opt(default_factory=lambda: TrainConfig(epochs=5, lr=0.05), help="lora schedule")
    latency_batches: int = _opt(20, min=1, help="batches of the inference-latency measurement")
    matrix: TEAMatrixConfig = _opt(default_factory=TEAMatrixConfig, help="the members of the DVC matrix stage")
    resume: str = _opt("auto", help=RESUME_HELP)

    def check(self, path: str) -> None:
        if not 0.0 <= self.gate_max <= 1.0:
            raise ConfigError(f"{path}.gate_max: a probability, must be in [0, 1], got {self.gate_max}")
        if not self.templates:
            raise ConfigError(f"{path}.templates: give at least one template")
        for t in self.templates:
            if "{name}" not in t:
                raise ConfigError(f"{path}.templates: template {t!r} has no '{{name}}' placeholder")


# ----------------------------------------------------------------------------------------- LPT++
@dataclass(frozen=True)
class ScorerConfig:
    hidden: int = _opt(64, min=1, help="hidden width of the MoE scorer's MLP")
    epochs: int = _opt(30, min=0, help="passes over the cached train features")
    batch_size: int = _opt(128, min=1, help="cached samples per step (class-balanced sampling)")
    lr: float = _opt(1e-3, min=0.0, help="AdamW learning rate")
    weight_decay: float = _opt(1e-4, min=0.0, help="AdamW weight decay")


@dataclass(frozen=True)
class LPTPPConfig:
    experts: tuple[str, ...] = _opt(BACKBONE_ROLES, help="`backbones` entries used as experts: visual, "
                                                        "vision_language")
    bottleneck: int | None = _opt(None, min=1, help="adapter bottleneck; null: max(1, 2^floor(log2(C / 24)))")
    templates: tuple[str, ...] = _opt(("a photo of a {name}.",), help="text-initialised head of the "
                                                                       "vision-language expert")
    phase1: TrainConfig = _opt(default_factory=lambda: TrainConfig(epochs=10, lr=0.1, weight_decay=0.01),
                               help="phase 1: shared prompts + adapters + head")
    phase2: TrainConfig = _opt(default_factory=lambda: TrainConfig(epochs=10, lr=0.05, weight_decay=0.01),
                               help="phase 2: group prompts + keys + head")
    scorer: ScorerConfig = _opt(default_factory=ScorerConfig, help="phase 3: the MoE scorer")
    resume: str = _opt("auto", help=RESUME_HELP)

    def check(self, path: str) -> None:
        if not self.experts:
            raise ConfigError(f"{path}.experts: give at least one expert ({', '.join(BACKBONE_ROLES)})")
        for e in self.experts:
            if e not in BACKBONE_ROLES:
                raise ConfigError(f"{path}.experts: {e!r} is not one of: {', '.join(BACKBONE_ROLES)}")
        if len(set(self.experts)) != len(self.experts):
            raise ConfigError(f"{path}.experts: {list(self.experts)} repeats an expert")
        for t in self.templates:
            if "{name}" not in t:
                raise ConfigError(f"{path}.templates: template {t!r} has no '{{name}}' placeholder")


# --------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class Config:
    """All sections of params.yaml. Sections a notebook does not pass keep their defaults."""

    seed: int = _opt(0, min=0, help="seed of training randomness")
    preset: str = _opt("miniature", help="name of the preset params.yaml was made from (lptlib.presets)")
    data: DataConfig = _opt(default_factory=DataConfig)
    backbones: BackbonesConfig = _opt(default_factory=BackbonesConfig)
    pretrain: PretrainConfig = _opt(default_factory=PretrainConfig)
    vpt_study: VPTStudyConfig = _opt(default_factory=VPTStudyConfig)
    lpt: LPTConfig = _opt(default_factory=LPTConfig)
    tea: TEAConfig = _opt(default_factory=TEAConfig)
    lptpp: LPTPPConfig = _opt(default_factory=LPTPPConfig)


SECTIONS = tuple(f.name for f in dataclasses.fields(Config))


# ------------------------------------------------------------------------------------ validator
def _type_name(tp: Any) -> str:
    if dataclasses.is_dataclass(tp):
        return "mapping"
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        return "list"
    if origin is Literal:
        return " | ".join(map(repr, get_args(tp)))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, path: str) -> Any:
    """Check `value` against the annotation `tp`; return it in the dataclass's representation."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: expected {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{path}: expected a list of {len(args)} values, got {len(value)}")
        return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {type(value).__name__} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {type(value).__name__} {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {value}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {path}")  # a bug in this module, not user input


def _check_resume(value: str, path: str) -> None:
    """'auto', 'never' or the path of an existing checkpoint (relative to the repository root)."""
    if value in ("auto", "never"):
        return
    from lptlib.paths import resolve

    if not resolve(value).is_file():
        close = difflib.get_close_matches(value, ("auto", "never"), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{path}: {value!r} is neither 'auto', 'never' nor an existing checkpoint file{hint}")


def _field_default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _build(cls: type, values: Any, path: str, base: Any = None) -> Any:
    """Build `cls` from a mapping; keys not given keep `base`'s values (or the field defaults)."""
    if dataclasses.is_dataclass(values) and isinstance(values, cls):
        return values
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of keys, got {type(values).__name__} {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in values if k not in fields]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(str(k), fields, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{path}.{k}: unknown key{hint}; allowed keys: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name not in values:
            continue
        sub = f"{path}.{name}" if path else name
        if dataclasses.is_dataclass(hints[name]):
            nested_base = getattr(base, name) if base is not None else _field_default(f)
            value = _build(hints[name], values[name], sub, base=nested_base)
        else:
            value = _convert(hints[name], values[name], sub)
        meta = f.metadata
        if name == "resume":
            _check_resume(value, sub)
        if meta.get("choices") and value not in meta["choices"]:
            raise ConfigError(f"{sub}: {value!r} is not one of: {', '.join(map(str, meta['choices']))}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if meta.get("min") is not None and value < meta["min"]:
                raise ConfigError(f"{sub}: must be >= {meta['min']}, got {value}")
            if meta.get("max") is not None and value > meta["max"]:
                raise ConfigError(f"{sub}: must be <= {meta['max']}, got {value}")
        kwargs[name] = value
    obj = dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    if hasattr(obj, "check"):
        obj.check(path)
    return obj


def parse(**sections: Any) -> Config:
    """Validate the given params.yaml sections (papermill parameters) into a `Config`.

    Example: `cfg = parse(seed=seed, data=data, backbones=backbones)`.
    """
    unknown = [k for k in sections if k not in SECTIONS]
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown params.yaml section; allowed: {', '.join(SECTIONS)}")
    return _build(Config, {k: v for k, v in sections.items() if v is not None}, "")


def load(path: str | Path) -> Config:
    """Read and validate a whole params file."""
    values = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return parse(**values)


def to_dict(obj: Any) -> Any:
    """A dataclass config as plain YAML-able data (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def save_resolved(cfg: Config, path: str | Path, **extra: Any) -> Path:
    """Write the resolved config (plus the git revision and `extra`) as YAML next to a stage's outputs."""
    doc = {"git_revision": git_revision(Path(path).resolve().parent), **extra, **to_dict(cfg)}
    return atomic_write_bytes(path, yaml.safe_dump(doc, sort_keys=False).encode())


def describe(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) rows of every parameter: the reference table of the README."""
    rows = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        default = _field_default(f)
        if dataclasses.is_dataclass(default):
            rows += describe(type(default), key + ".")
        else:
            rows.append((key, repr(to_dict(default)), f.metadata.get("help", "")))
    return rows
