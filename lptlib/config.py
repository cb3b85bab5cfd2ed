"""Typed, validated parameters: one pydantic model per `params.yaml` section.

The configuration of a run is composed in one place, `compose`:

    code defaults  <-  presets/<preset>.yaml (an overlay)  <-  the keys in params.yaml  <-  per-run overrides

Defaults are the offline miniature. A preset names only what differs from the defaults, and is merged at load
time; nothing rewrites `params.yaml`. `params.yaml` holds `preset: <name>` and the user's own keys. Overrides
are a mapping (nested or dotted keys: papermill `-y`) or `key=value` strings (`--set`); `dvc exp run -S`
edits `params.yaml` itself. An unknown key (with a "did you mean"), a wrong type, a value out of range or a
broken cross-field rule raises `ConfigError` naming the dotted key, before any data is read.

    python -m lptlib.config show [--preset NAME] [--set key=value ...]   # the resolved configuration
    python -m lptlib.config check                                        # validate params.yaml
    python -m lptlib.config docs                                         # regenerate docs/parameters.md
"""

from __future__ import annotations

import argparse
import copy
import difflib
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator, model_validator

from lptlib.utils import atomic_write_bytes, git_revision


class ConfigError(ValueError):
    """A parameter is wrong; the message names the dotted key and the fix."""


class Section(BaseModel):
    """A params.yaml section: unknown keys refused, immutable, finite numbers only."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _templates_ok(templates: Sequence[str]) -> Sequence[str]:
    if not templates:
        raise ValueError("give at least one template")
    for t in templates:
        if "{name}" not in t:
            raise ValueError(f"template {t!r} has no '{{name}}' placeholder")
    return templates


def _distinct(values: Sequence[str], what: str) -> Sequence[str]:
    if not values:
        raise ValueError(f"give at least one {what}")
    if len(set(values)) != len(values):
        raise ValueError(f"{list(values)} repeats a{'n' if what[0] in 'aeiou' else ''} {what}")
    return values


# ----------------------------------------------------------------------------------------- data
MINIATURE_DATASET = "fashion_mnist_lt"
DATASETS = (MINIATURE_DATASET, "cifar100_lt", "places_lt", "imagenet_lt", "inat2018")
SHOT_CONVENTIONS = ("decoupling", "oltr", "lpt")
Dataset = Literal["fashion_mnist_lt", "cifar100_lt", "places_lt", "imagenet_lt", "inat2018"]


class DataConfig(Section):
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
        100.0, ge=1.0, description="imbalance factor n_max / n_min (fashion_mnist_lt, cifar100_lt)"
    )
    n_max: int = Field(500, ge=1, description="images of the head class (fashion_mnist_lt, cifar100_lt)")
    val_per_class: int = Field(20, ge=0, description="balanced val images per class (fashion_mnist_lt)")
    split_seed: int = Field(0, ge=0, description="seed of the pool / long-tail subsampling")
    image_size: int = Field(28, ge=1, description="network input side in pixels")
    crop_scale: tuple[float, float] = Field((0.7, 1.0), description="RandomResizedCrop scale range for training")
    test_resize_ratio: float = Field(1.0, ge=1.0, description="test: resize to image_size * ratio, then centre-crop")
    shot_convention: Literal["decoupling", "oltr", "lpt"] = Field(
        "decoupling", description="many/medium/few thresholds"
    )
    max_test_per_class: int | None = Field(None, ge=1, description="smoke tests only: cap the test set per class")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")

    @model_validator(mode="after")
    def _rules(self) -> DataConfig:
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise _KeyError("crop_scale", f"need 0 < min <= max <= 1, got {list(self.crop_scale)}")
        if self.name != MINIATURE_DATASET and self.root is None and not (self.name == "cifar100_lt" and self.download):
            raise _KeyError(
                "root",
                f"{self.name} needs the folder holding its images; set it in params.yaml (data: {{root: /path}})",
            )
        if self.name in ("places_lt", "imagenet_lt", "inat2018") and self.split_dir is None:
            raise _KeyError("split_dir", f"{self.name} needs the folder with its OLTR split files")
        return self


# ------------------------------------------------------------------------------------ backbones
MINIATURE_BACKBONES = {"vit-mini": "timm", "clip-mini": "open_clip"}
BACKBONE_FAMILIES = ("timm", "open_clip")


def backbone_family(name: str) -> str:
    """'timm' or 'open_clip' for a backbone name: a miniature name or '<family>:<model>'."""
    if name in MINIATURE_BACKBONES:
        return MINIATURE_BACKBONES[name]
    family = name.split(":", 1)[0]
    if ":" not in name or family not in BACKBONE_FAMILIES:
        raise ConfigError(
            f"backbone name {name!r}: use a miniature ({', '.join(MINIATURE_BACKBONES)}) "
            "or 'timm:<model>.<tag>' (e.g. timm:vit_base_patch16_224.augreg_in21k) "
            "or 'open_clip:<model>' (e.g. open_clip:ViT-B-16)"
        )
    return family


class BackboneConfig(Section):
    name: str = Field("vit-mini", description="vit-mini | clip-mini | timm:<model>.<tag> | open_clip:<model>")
    weights: str = Field("random", description="a local weight file | 'hub' (download by tag) | 'random'")
    tag: str | None = Field(None, description="open_clip pretrained tag (e.g. openai), used with weights: hub")

    def __init__(self, name: str = "vit-mini", weights: str = "random", tag: str | None = None, **kw: Any):
        super().__init__(name=name, weights=weights, tag=tag, **kw)

    @model_validator(mode="after")
    def _rules(self) -> BackboneConfig:
        try:
            family = backbone_family(self.name)
        except ConfigError as e:
            raise _KeyError("name", str(e)) from None
        if self.name in MINIATURE_BACKBONES and self.weights == "hub":
            raise _KeyError(
                "weights",
                f"{self.name} is pretrained by this pipeline (00_pretrain), not downloadable; give its weight file",
            )
        if family == "open_clip" and self.weights == "hub" and not self.tag:
            raise _KeyError("tag", "open_clip weights from the hub need a pretrained tag (e.g. openai)")
        if self.name not in MINIATURE_BACKBONES:
            _check_hub_name(self, family)
        return self


def _check_hub_name(b: BackboneConfig, family: str) -> None:
    model = b.name.split(":", 1)[1]
    if family == "timm":
        import timm

        arch = model.split(".", 1)[0]
        if not timm.is_model(arch):
            close = difflib.get_close_matches(arch, timm.list_models(), n=5)
            raise _KeyError(
                "name",
                f"timm has no model {arch!r}; close names: {', '.join(close) or '-'} (timm.list_models() lists all)",
            )
        if b.weights == "hub":
            if "." not in model:
                raise _KeyError(
                    "name",
                    "give the full timm tag, e.g. timm:vit_base_patch16_224.augreg_in21k (an "
                    "untagged name resolves to different weights across timm versions)",
                )
            if model not in timm.list_pretrained(model):
                tags = timm.list_pretrained(arch + ".*")
                raise _KeyError(
                    "name", f"timm has no pretrained tag {model!r}; tags of {arch}: {', '.join(tags) or 'none'}"
                )
    else:
        import open_clip

        if model not in open_clip.list_models():
            close = difflib.get_close_matches(model, open_clip.list_models(), n=5)
            raise _KeyError(
                "name",
                f"open_clip has no model {model!r}; close names: {', '.join(close) or '-'} "
                "(open_clip.list_models() lists all)",
            )
        if b.weights == "hub" and b.tag not in open_clip.list_pretrained_tags_by_model(model):
            raise _KeyError(
                "tag",
                f"open_clip has no tag {b.tag!r} for {model}; tags: "
                f"{', '.join(open_clip.list_pretrained_tags_by_model(model)) or 'none'}",
            )


class BackbonesConfig(Section):
    visual: BackboneConfig = Field(
        BackboneConfig("vit-mini", "outputs/pretrain/vit-mini.safetensors"), description="visual-only backbone"
    )
    vision_language: BackboneConfig = Field(
        BackboneConfig("clip-mini", "outputs/pretrain/clip-mini.safetensors"), description="vision-language backbone"
    )


# ------------------------------------------------------------------------------------- pretrain
class PretrainRunConfig(Section):
    epochs: int = Field(2, ge=0, description="passes over the source pool")
    batch_size: int = Field(256, ge=1, description="images per step")
    lr: float = Field(1e-3, ge=0.0, description="AdamW peak learning rate")
    weight_decay: float = Field(0.05, ge=0.0, description="AdamW weight decay")
    warmup_steps: int = Field(50, ge=0, description="linear warm-up steps, then cosine decay to 0")
    max_images: int | None = Field(None, ge=1, description="smoke tests only: cap the source pool")


DEFAULT_TEMPLATES = (
    "a photo of a {name}.",
    "a picture of a {name}.",
    "a black and white photo of a {name}.",
    "a product photo of a {name}.",
    "an image of a {name}.",
)
Templates = tuple[str, ...]


class PretrainConfig(Section):
    vit_mini: PretrainRunConfig = Field(PretrainRunConfig(), description="vit-mini, 4 coarse labels")
    clip_mini: PretrainRunConfig = Field(PretrainRunConfig(), description="clip-mini, contrastive")
    caption_templates: Templates = Field(DEFAULT_TEMPLATES, description="captions of the contrastive pretraining")
    zero_shot_templates: Templates = Field(("a photo of a {name}.",), description="prompts of the zero-shot classifier")

    _templates = field_validator("caption_templates", "zero_shot_templates")(_templates_ok)


# ---------------------------------------------------------------------------------- PEFT training
SAMPLING_MODES = ("instance_balanced", "class_balanced")
PROMPT_FORMS = ("kv", "concat")
HEADS = ("linear", "cosine")
BACKBONE_ROLES = ("visual", "vision_language")
Sampling = Literal["instance_balanced", "class_balanced"]
PromptForm = Literal["kv", "concat"]
Role = Literal["visual", "vision_language"]
RESUME_HELP = (
    "'auto' (continue this stage's checkpoint when its fingerprint matches), 'never', or the path of a "
    "checkpoint to continue (its fingerprint must match)"
)


def _resume_ok(value: str) -> str:
    """'auto', 'never' or the path of an existing checkpoint (relative to the repository root)."""
    if value in ("auto", "never"):
        return value
    from lptlib.paths import resolve

    if not resolve(value).is_file():
        close = difflib.get_close_matches(value, ("auto", "never"), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{value!r} is neither 'auto', 'never' nor an existing checkpoint file{hint}")
    return value


Resume = Annotated[str, Field(description=RESUME_HELP)]


class TrainConfig(Section):
    epochs: int = Field(20, ge=1, description="training epochs (an epoch = as many images as the train set holds)")
    batch_size: int = Field(64, ge=1, description="images per step")
    lr: float = Field(0.05, ge=0.0, description="SGD peak learning rate (warm-up, then cosine decay per step)")
    weight_decay: float = Field(1e-4, ge=0.0, description="SGD weight decay")
    momentum: float = Field(0.9, ge=0.0, le=1.0, description="SGD momentum")
    warmup_epochs: float = Field(1.0, ge=0.0, description="linear warm-up length in epochs")
    eval_batch_size: int = Field(512, ge=1, description="images per evaluation batch")


class VPTStudyConfig(Section):
    backbone: Role = Field("visual", description="which `backbones` entry is studied")
    prompt_length: int = Field(10, ge=0, description="VPT-deep prompt tokens per block (l_p)")
    prompt_form: PromptForm = Field(
        "kv", description="kv: prompts in keys/values only (LPT eq. 1); concat: concatenate and strip (same outputs)"
    )
    head: Literal["linear", "cosine"] = Field("linear", description="classifier on the final CLS feature")
    cosine_scale: float = Field(20.0, ge=0.0, description="scale s of a cosine head")
    samplings: tuple[Sampling, ...] = Field(
        SAMPLING_MODES, description="Table 1 columns: instance_balanced, class_balanced"
    )
    # SGD, warm-up then cosine decay per step. Miniature learning rates chosen on the val split (instance-balanced
    # runs): linear probe from {0.05, 0.5, 2.0}, VPT-deep from {0.05, 0.2, 0.5, 1.0, 2.0}.
    linear_probe: TrainConfig = Field(TrainConfig(lr=2.0), description="linear probing")
    vpt_deep: TrainConfig = Field(TrainConfig(lr=1.0), description="VPT-deep prompt tuning")
    knn_k: int = Field(10, ge=1, description="k of the cosine k-NN accuracy (Table 2)")
    feature_images_per_class: int = Field(100, ge=2, description="images per class whose features LDA and Table 2 use")
    resume: Resume = "auto"

    _resume = field_validator("resume")(_resume_ok)

    @field_validator("samplings")
    @classmethod
    def _samplings(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _distinct(v, "sampling mode")


# ------------------------------------------------------------------------------------------- LPT
class AGCLConfig(Section):
    alpha: float = Field(0.5, ge=0.0, description="Gaussian cloud size (noise_mul)")
    margin: float = Field(0.1, description="additive margin on the target cosine")
    scale: float = Field(20.0, ge=0.0, description="logit scale s")
    smoothing: float = Field(0.1, ge=0.0, le=1.0, description="label smoothing")
    class_balanced: tuple[float, float] = Field(
        (0.0, 4.0), description="(lambda+, lambda-) of the class-balanced branch"
    )
    instance_balanced: tuple[float, float] = Field((0.5, 8.0), description="(lambda+, lambda-) of the instance branch")


class LPTConfig(Section):
    backbone: Role = Field("visual", description="which `backbones` entry LPT tunes")
    prompt_length: int = Field(10, ge=0, description="l_p: shared prompts per block, and group prompts per block")
    prompt_form: PromptForm = Field("kv", description="kv (LPT eq. 1) | concat")
    cosine_scale: float = Field(20.0, ge=0.0, description="s of the cosine head at prediction (A-GCL has its own)")
    head_dropout: float = Field(0.1, ge=0.0, le=1.0, description="dropout before the cosine head")
    num_samples_cls: int = Field(4, ge=1, description="class-aware sampler: images per visited class")
    eta: float = Field(0.5, ge=0.0, description="dual sampling: beta_e = eta (E - e) / E weights the instance branch")
    agcl: AGCLConfig = Field(AGCLConfig(), description="A-GCL loss")
    pool_size: int = Field(20, ge=1, description="m: entries of the group prompt pool")
    top_k: int = Field(2, ge=1, description="k: keys picked per image")
    share_blocks: int = Field(6, ge=0, description="K: blocks 1..K use the shared prompts only")
    match_weight: float = Field(0.5, ge=0.0, description="weight of the key-query matching term")
    # SGD, warm-up then cosine decay per step; weight decay 0.01 (LPT). Miniature learning rates chosen on the val
    # split: stage 1 from {0.05, 0.5, 2.0} (10 epochs), stage 2 from {0.05, 0.5}. batch_size is per branch.
    stage1: TrainConfig = Field(TrainConfig(lr=0.5, weight_decay=0.01), description="stage 1")
    stage2: TrainConfig = Field(TrainConfig(lr=0.05, weight_decay=0.01), description="stage 2")
    resume: Resume = "auto"

    _resume = field_validator("resume")(_resume_ok)

    @model_validator(mode="after")
    def _rules(self) -> LPTConfig:
        if self.top_k > self.pool_size:
            raise _KeyError("top_k", f"{self.top_k} keys cannot be picked from a pool of {self.pool_size}")
        return self


# ------------------------------------------------------------------------------------------- TEA
PEFT_METHODS = ("vpt_deep", "adaptformer", "lora")
TEA_LOSSES = ("ce", "la", "bs", "agcl")
TEA_VARIANTS = ("none", "pea", "pea_pg", "pea_pg_tec")


class TEAMatrixConfig(Section):
    peft: tuple[Literal["vpt_deep", "adaptformer", "lora"], ...] = Field(
        PEFT_METHODS, description="PEFT methods of the DVC matrix stage `tea`"
    )
    loss: tuple[Literal["ce", "la", "bs", "agcl"], ...] = Field(
        ("ce", "la"), description="losses of the matrix (all: ce, la, bs, agcl)"
    )
    tea: tuple[Literal["none", "pea", "pea_pg", "pea_pg_tec"], ...] = Field(
        ("none", "pea_pg_tec"), description="TEA variants of the matrix (all: none, pea, pea_pg, pea_pg_tec)"
    )

    @field_validator("peft", "loss", "tea")
    @classmethod
    def _values(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _distinct(v, "value")


class TEAConfig(Section):
    backbone: Role = Field("vision_language", description="which `backbones` entry is tuned")
    templates: Templates = Field(
        ("a photo of a {name}.",), description="prompts of the text-initialised head and of the zero-shot classifier"
    )
    cosine_scale: float = Field(25.0, ge=0.0, description="s of the cosine head (LIFT / TEA: 25)")
    head_init: Literal["text", "class_mean", "random"] = Field(
        "text", description="cosine head init: text (LIFT, CLIP only), class_mean (LIFT for visual-only ViTs) or random"
    )
    sampling: Sampling = Field("instance_balanced", description="training sampler (LIFT: instance)")
    prompt_length: int = Field(10, ge=1, description="vpt_deep: prompt tokens per block")
    prompt_form: PromptForm = Field("kv", description="vpt_deep: kv | concat")
    bottleneck: int | None = Field(
        None,
        ge=1,
        description="adaptformer: bottleneck width; null: max(1, 2^floor(log2(D / 24))), D the backbone width",
    )
    lora_rank: int = Field(4, ge=1, description="lora: rank r of the q and v updates")
    la_tau: float = Field(1.0, ge=0.0, description="la: tau of the logit adjustment")
    agcl: AGCLConfig = Field(
        AGCLConfig(scale=25.0), description="agcl: A-GCL; the (lambda+, lambda-) pair of the branch matching `sampling`"
    )
    temperature: float = Field(
        0.1, ge=1e-6, description="PEA: tau of the patch attention softmax_n(cos(h_n, w_y) / tau)"
    )
    mix: float = Field(0.5, ge=0.0, le=1.0, description="PEA: lambda of e^ = norm((1 - lambda) e_cls + lambda u)")
    gate_max: float = Field(
        0.5, ge=0.0, le=1.0, description="PG: g_max, the augmentation probability of the rarest class"
    )
    tec_weight: float = Field(1.0, ge=0.0, description="TEC: weight lambda_tec of the consistency loss")
    # One schedule per PEFT method. Miniature learning rates chosen on the val split (LA, no TEA, 10 epochs; the
    # selected epochs were 1-4, so 5 epochs run): vpt_deep from {0.1, 0.5}, adaptformer from {0.01, 0.05, 0.2},
    # lora from {0.05, 0.2}.
    vpt_deep: TrainConfig = Field(TrainConfig(epochs=5, lr=0.1), description="vpt_deep schedule")
    adaptformer: TrainConfig = Field(TrainConfig(epochs=5, lr=0.01), description="adaptformer schedule")
    lora: TrainConfig = Field(TrainConfig(epochs=5, lr=0.05), description="lora schedule")
    latency_batches: int = Field(20, ge=1, description="batches of the inference-latency measurement")
    matrix: TEAMatrixConfig = Field(TEAMatrixConfig(), description="the members of the DVC matrix stage")
    resume: Resume = "auto"

    _resume = field_validator("resume")(_resume_ok)
    _templates = field_validator("templates")(_templates_ok)


# ----------------------------------------------------------------------------------------- LPT++
class ScorerConfig(Section):
    hidden: int = Field(64, ge=1, description="hidden width of the MoE scorer's MLP")
    epochs: int = Field(30, ge=1, description="passes over the cached train features")
    batch_size: int = Field(128, ge=1, description="cached samples per step (class-balanced sampling)")
    lr: float = Field(1e-3, ge=0.0, description="AdamW learning rate")
    weight_decay: float = Field(1e-4, ge=0.0, description="AdamW weight decay")


class LPTPPConfig(Section):
    experts: tuple[Role, ...] = Field(
        BACKBONE_ROLES, description="`backbones` entries used as experts: visual, vision_language"
    )
    bottleneck: int | None = Field(
        None, ge=1, description="adapter bottleneck; null: max(1, 2^floor(log2(D / 24))), D the backbone width"
    )
    templates: Templates = Field(
        ("a photo of a {name}.",), description="text-initialised head of the vision-language expert"
    )
    phase1: TrainConfig = Field(
        TrainConfig(epochs=10, lr=0.1, weight_decay=0.01), description="phase 1: shared prompts + adapters + head"
    )
    phase2: TrainConfig = Field(
        TrainConfig(epochs=10, lr=0.05, weight_decay=0.01), description="phase 2: group prompts + keys + head"
    )
    scorer: ScorerConfig = Field(ScorerConfig(), description="phase 3: the MoE scorer")
    resume: Resume = "auto"

    _resume = field_validator("resume")(_resume_ok)
    _templates = field_validator("templates")(_templates_ok)

    @field_validator("experts")
    @classmethod
    def _experts(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _distinct(v, "expert")


# --------------------------------------------------------------------------------------- config
class Config(Section):
    """All sections of params.yaml, resolved (defaults <- preset <- params.yaml <- overrides)."""

    seed: int = Field(0, ge=0, description="seed of training randomness")
    preset: str = Field("miniature", description="the overlay in presets/<name>.yaml merged over the defaults")
    data: DataConfig = Field(DataConfig(), description="the dataset")
    backbones: BackbonesConfig = Field(BackbonesConfig(), description="the two foundation models")
    pretrain: PretrainConfig = Field(PretrainConfig(), description="the miniature's pretraining")
    vpt_study: VPTStudyConfig = Field(VPTStudyConfig(), description="the preliminary VPT study")
    lpt: LPTConfig = Field(LPTConfig(), description="LPT")
    tea: TEAConfig = Field(TEAConfig(), description="TEA on CLIP PEFT")
    lptpp: LPTPPConfig = Field(LPTPPConfig(), description="LPT++")


SECTIONS = tuple(Config.model_fields)
DEFAULT_PRESET = "miniature"


# ------------------------------------------------------------------------------ errors, dotted keys
class _KeyError(ValueError):
    """Raised inside a validator: names the key (relative to the model) that breaks a cross-field rule."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}\x00{message}")


def _describe_value(v: Any) -> str:
    return f"{type(v).__name__} {v!r}"


def _model_at(loc: Sequence[Any]) -> type[BaseModel] | None:
    """The model class reached by following `loc` (field names) from `Config`, or None."""
    model: Any = Config
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return None
        model = fields[part].annotation
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _message(err: dict) -> str:
    loc = [p for p in err["loc"] if not isinstance(p, str) or not p.startswith(("function-", "tuple["))]
    kind, given, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    key = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        allowed = list(parent.model_fields) if parent else []
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        if len(loc) == 1:
            return f"{key}: unknown params.yaml section{hint}; allowed: {', '.join(allowed)}"
        return f"{key}: unknown key{hint}; allowed keys: {', '.join(allowed)}"
    if kind == "value_error":
        text = str(ctx.get("error", err["msg"]))
        if "\x00" in text:
            sub, text = text.split("\x00", 1)
            key = f"{key}.{sub}" if key else sub
        return f"{key}: {text}"
    expected = {
        "float_type": "a number",
        "float_parsing": "a number",
        "int_type": "an integer",
        "int_parsing": "an integer",
        "int_from_float": "an integer",
        "bool_type": "true or false",
        "bool_parsing": "true or false",
        "string_type": "a string",
        "tuple_type": "a list",
        "list_type": "a list",
        "model_type": "a mapping of keys",
        "model_attributes_type": "a mapping of keys",
        "dict_type": "a mapping of keys",
    }.get(kind)
    if expected:
        return f"{key}: expected {expected}, got {_describe_value(given)}"
    if kind == "greater_than_equal":
        return f"{key}: must be >= {ctx['ge']}, got {given}"
    if kind == "less_than_equal":
        return f"{key}: must be <= {ctx['le']}, got {given}"
    if kind == "literal_error":
        allowed = ctx["expected"].replace("'", "").replace(" or ", ", ")
        return f"{key}: {given!r} is not one of: {allowed}"
    if kind == "finite_number":
        return f"{key}: expected a finite number, got {given}"
    if kind == "missing" and loc and isinstance(loc[-1], int):
        return f"{key.rsplit('[', 1)[0]}: too few values (position {loc[-1]} is missing)"
    if kind in ("too_short", "too_long"):
        return (
            f"{key}: expected a list of {ctx.get('min_length', ctx.get('max_length'))} values, got "
            f"{ctx.get('actual_length')}"
        )
    return f"{key}: {err['msg']}"


def _validate(values: dict, origin: Mapping[str, str] | None = None) -> Config:
    try:
        return Config.model_validate(values)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        message = _message(err)
        where = origin.get(message.split(":", 1)[0]) if origin else None
        raise ConfigError(message + (f" (set by {where})" if where else "")) from None


# ----------------------------------------------------------------------------------- composition
def _expand_dotted(values: Mapping, where: str) -> dict:
    """{'lpt.stage1.lr': 0.1} -> {'lpt': {'stage1': {'lr': 0.1}}}; nested mappings are expanded too."""
    out: dict = {}
    for raw_key, value in values.items():
        parts = str(raw_key).split(".")
        if not all(parts):
            raise ConfigError(f"{where}: {raw_key!r} is not a key (empty part)")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: {raw_key!r} goes through {part!r}, which is not a section")
        value = _expand_dotted(value, where) if isinstance(value, Mapping) else value
        if isinstance(node.get(parts[-1]), dict) and isinstance(value, dict):
            value = _merge(node[parts[-1]], value)
        node[parts[-1]] = value
    return out


def _merge(base: Any, overlay: Any) -> Any:
    """Deep merge of plain data: mappings merge key by key, anything else (lists included) replaces."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        merged = dict(base)
        for k, v in overlay.items():
            merged[k] = _merge(base[k], v) if k in base else v
        return merged
    return copy.deepcopy(overlay)


def _leaf_keys(values: Any, prefix: str = "") -> list[str]:
    if isinstance(values, dict):
        return [k for key, v in values.items() for k in _leaf_keys(v, f"{prefix}{key}.")] or [prefix[:-1]]
    return [prefix[:-1]]


def parse_sets(items: Sequence[str]) -> dict:
    """`key=value` strings (dotted keys, YAML values) as a dotted mapping."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. data.root=/data/places365")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(
                f"--set {item!r}: the value is not valid YAML ({type(e).__name__}); quote it, "
                f"e.g. --set '{key}=\"{raw}\"'"
            ) from None
    return out


def presets_dir(root: Path | None = None) -> Path:
    from lptlib.paths import repo_root

    return (root or repo_root()) / "presets"


def list_presets(root: Path | None = None) -> list[str]:
    return sorted(p.stem for p in presets_dir(root).glob("*.yaml"))


def load_preset(name: str, root: Path | None = None) -> dict:
    """The overlay of `presets/<name>.yaml` (empty for the defaults' own preset)."""
    path = presets_dir(root) / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"preset: unknown preset {name!r}; available: {', '.join(list_presets(root))}")
    overlay = yaml.safe_load(path.read_text()) or {}
    if not isinstance(overlay, dict):
        raise ConfigError(f"{path}: a preset is a mapping of params.yaml sections, got {type(overlay).__name__}")
    if "preset" in overlay:
        raise ConfigError(f"{path}: a preset must not name `preset` (params.yaml chooses it)")
    return _expand_dotted(overlay, str(path))


def compose(
    params: Mapping | None = None, overrides: Mapping | Sequence[str] | None = None, root: Path | None = None
) -> Config:
    """The resolved configuration: code defaults <- preset overlay <- `params` <- `overrides`.

    `params`: the params.yaml sections (a section given as null counts as empty); `overrides`: a mapping (nested
    or dotted keys) or `key=value` strings. The preset is `overrides`' or `params`' `preset` key (default:
    miniature)."""
    if params is not None and not isinstance(params, Mapping):
        raise ConfigError(f"params: expected a mapping of params.yaml sections, got {_describe_value(params)}")
    layers = {"params.yaml": _expand_dotted({k: v for k, v in (params or {}).items() if v is not None}, "params.yaml")}
    if overrides:
        sets = parse_sets(overrides) if not isinstance(overrides, Mapping) else overrides
        layers["overrides"] = _expand_dotted(sets, "overrides")
    preset = layers.get("overrides", {}).get("preset", layers["params.yaml"].get("preset", DEFAULT_PRESET))
    if not isinstance(preset, str):
        raise ConfigError(f"preset: expected a preset name, got {_describe_value(preset)}")
    overlay = load_preset(preset, root)
    merged, origin = Config().model_dump(), {k: f"preset {preset}" for k in _leaf_keys(overlay)}
    for layer in (overlay, *layers.values()):
        merged = _merge(merged, layer)
    return _validate(merged, origin)


def parse(**sections: Any) -> Config:
    """Validate params.yaml sections (e.g. a notebook's papermill parameters) into a `Config`.

    Example: `cfg = parse(seed=seed, data=data, backbones=backbones)`; `preset=` picks the overlay."""
    return compose(sections)


def load(path: str | Path, overrides: Mapping | Sequence[str] | None = None) -> Config:
    """Read and validate a params file (with its preset and `overrides`)."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return compose(values, overrides, root=path.resolve().parent)


def to_dict(obj: Any) -> Any:
    """A config (or section) as plain YAML-able data (tuples become lists)."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump()
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def without_resume(cfg: Config) -> dict:
    """The resolved config as plain data minus every `resume` key: what a run's results depend on."""

    def strip(d: Any) -> Any:
        return {k: strip(v) for k, v in d.items() if k != "resume"} if isinstance(d, dict) else d

    return strip(to_dict(cfg))


def save_resolved(cfg: Config, path: str | Path, **extra: Any) -> Path:
    """Write the resolved config (plus the git revision and `extra`) as YAML next to a stage's outputs."""
    doc = {"git_revision": git_revision(Path(path).resolve().parent), **extra, **to_dict(cfg)}
    return atomic_write_bytes(path, yaml.safe_dump(doc, sort_keys=False).encode())


def describe(model: type[BaseModel] = Config, prefix: str = "", base: Any = None) -> list[tuple[str, str, str]]:
    """(key, default, help) rows of every parameter: the reference table of docs/parameters.md."""
    base = base if base is not None else model()
    rows = []
    for name, f in model.model_fields.items():
        value = getattr(base, name)
        if isinstance(value, BaseModel):
            rows += describe(type(value), f"{prefix}{name}.", value)
        else:
            rows.append(
                (
                    f"{prefix}{name}",
                    yaml.safe_dump(to_dict(value), default_flow_style=True).strip().removesuffix("...").strip(),
                    f.description or "",
                )
            )
    return rows


DOCS_BEGIN = "<!-- parameters:begin (generated by python -m lptlib.config docs; do not edit) -->"
DOCS_END = "<!-- parameters:end -->"


def parameters_table() -> str:
    rows = ["| key | default (the miniature) | meaning |", "|---|---|---|"]
    rows += [f"| `{k}` | `{v}` | {h.replace('|', '&#124;')} |" for k, v, h in describe()]
    return "\n".join(rows)


def render_docs(text: str) -> str:
    """`text` with the generated parameter table between the markers."""
    if DOCS_BEGIN not in text or DOCS_END not in text:
        raise ConfigError(f"the parameters document lacks the markers {DOCS_BEGIN!r} ... {DOCS_END!r}")
    head, rest = text.split(DOCS_BEGIN, 1)
    tail = rest.split(DOCS_END, 1)[1]
    return f"{head}{DOCS_BEGIN}\n\n{parameters_table()}\n\n{DOCS_END}{tail}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m lptlib.config", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("command", choices=("show", "check", "docs", "presets"))
    ap.add_argument("--params", type=Path, default=None, help="params file (default: <repo>/params.yaml)")
    ap.add_argument("--preset", default=None, help="preview another preset")
    ap.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one parameter (dotted key, YAML value)",
    )
    args = ap.parse_args(argv)
    from lptlib.paths import repo_root

    root = repo_root()
    try:
        if args.command == "presets":
            print("\n".join(list_presets(root)))
            return 0
        if args.command == "docs":
            path = root / "docs" / "parameters.md"
            new = render_docs(path.read_text())
            if new != path.read_text():
                path.write_text(new)
            print(f"wrote {path}")
            return 0
        sets = parse_sets(args.sets)
        if args.preset:
            sets["preset"] = args.preset
        cfg = load(args.params or root / "params.yaml", sets)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.command == "show":
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    else:
        print(f"ok: preset {cfg.preset!r}, {len(describe())} parameters valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
