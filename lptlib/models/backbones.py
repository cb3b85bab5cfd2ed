"""Frozen pretrained backbones behind one interface: timm ViTs (visual-only) and open_clip CLIP
(vision-language), by hub tag, from a local weight file, or the registered miniatures.

Loading is strict (a missing, unexpected or mis-shaped key is an error naming the keys) and safe
(safetensors, or `torch.load(weights_only=True)`; never arbitrary unpickling).
The wrapper exposes what the PEFT methods need, extending timm / open_clip only through their
structure: `embed` (tokens before block 1), `blocks` (timm `blocks`, open_clip
`transformer.resblocks`), `final_norm`, and `forward_features` returning the CLS feature and
the patch tokens (dinov2-style named parts).
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
from pathlib import Path
from typing import Any, Literal

import open_clip
import timm
import torch
from torch import nn

from lptlib.data.transforms import Normalization
from lptlib.models.miniature import MINIATURE_ARCHS
from lptlib.paths import resolve
from lptlib.schema import ConfigError, Field, RuleError, Section, model_validator
from lptlib.utils import save_safetensors

BACKBONE_FAMILIES = ("timm", "open_clip")


def backbone_family(name: str) -> str:
    """'timm' or 'open_clip' for a backbone name: a miniature name or '<family>:<model>'."""
    if name in MINIATURE_ARCHS:
        return MINIATURE_ARCHS[name][0]
    family = name.split(":", 1)[0]
    if ":" not in name or family not in BACKBONE_FAMILIES:
        raise ConfigError(
            f"backbone name {name!r}: use a miniature ({', '.join(MINIATURE_ARCHS)}) "
            "or 'timm:<model>.<tag>' (e.g. timm:vit_base_patch16_224.augreg_in21k) "
            "or 'open_clip:<model>' (e.g. open_clip:ViT-B-16)"
        )
    return family


class BackboneConfig(Section):
    """One `backbones` entry."""

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
            raise RuleError("name", str(e)) from None
        if self.name in MINIATURE_ARCHS and self.weights == "hub":
            raise RuleError(
                "weights",
                f"{self.name} is pretrained by this pipeline (00_pretrain), not downloadable; give its weight file",
            )
        if family == "open_clip" and self.weights == "hub" and not self.tag:
            raise RuleError("tag", "open_clip weights from the hub need a pretrained tag (e.g. openai)")
        if self.name not in MINIATURE_ARCHS:
            _check_hub_name(self, family)
        return self


def _check_hub_name(b: BackboneConfig, family: str) -> None:
    model = b.name.split(":", 1)[1]
    if family == "timm":
        import timm

        arch = model.split(".", 1)[0]
        if not timm.is_model(arch):
            close = difflib.get_close_matches(arch, timm.list_models(), n=5)
            raise RuleError(
                "name",
                f"timm has no model {arch!r}; close names: {', '.join(close) or '-'} (timm.list_models() lists all)",
            )
        if b.weights == "hub":
            if "." not in model:
                raise RuleError(
                    "name",
                    "give the full timm tag, e.g. timm:vit_base_patch16_224.augreg_in21k (an "
                    "untagged name resolves to different weights across timm versions)",
                )
            if model not in timm.list_pretrained(model):
                tags = timm.list_pretrained(arch + ".*")
                raise RuleError(
                    "name", f"timm has no pretrained tag {model!r}; tags of {arch}: {', '.join(tags) or 'none'}"
                )
    else:
        import open_clip

        if model not in open_clip.list_models():
            close = difflib.get_close_matches(model, open_clip.list_models(), n=5)
            raise RuleError(
                "name",
                f"open_clip has no model {model!r}; close names: {', '.join(close) or '-'} "
                "(open_clip.list_models() lists all)",
            )
        if b.weights == "hub" and b.tag not in open_clip.list_pretrained_tags_by_model(model):
            raise RuleError(
                "tag",
                f"open_clip has no tag {b.tag!r} for {model}; tags: "
                f"{', '.join(open_clip.list_pretrained_tags_by_model(model)) or 'none'}",
            )


class BackbonesConfig(Section):
    """The `backbones` section: the two foundation models."""

    visual: BackboneConfig = Field(
        BackboneConfig("vit-mini", "outputs/pretrain/vit-mini.safetensors"), description="visual-only backbone"
    )
    vision_language: BackboneConfig = Field(
        BackboneConfig("clip-mini", "outputs/pretrain/clip-mini.safetensors"), description="vision-language backbone"
    )


BACKBONE_ROLES = ("visual", "vision_language")
Role = Literal["visual", "vision_language"]


class WeightsError(RuntimeError):
    """A weight file or tag cannot be used; the message names it and the fix."""


# ------------------------------------------------------------------------------ weight files
def load_weight_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from `.safetensors`, or from a torch file read with `weights_only=True`.

    A checkpoint that wraps its weights under 'state_dict' or 'model' is unwrapped.
    """
    path = resolve(path)
    if not path.is_file():
        raise WeightsError(
            f"weight file {path} does not exist. For the miniature backbones run the pretraining "
            "stage (`dvc repro pretrain`); for paper-scale weights download the file or use "
            "weights: hub where a network exists"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise WeightsError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for pickled objects, RuntimeError for damaged zips
        raise WeightsError(
            f"{path}: cannot be read safely as a tensor file ({type(e).__name__}: {e}). Save weights "
            "as safetensors or as a plain state dict of tensors"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: expected a mapping of parameter names to tensors")
    return obj


def _preview(keys: list[str], limit: int = 8) -> str:
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_strict(module: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """`module.load_state_dict(state_dict, strict=True)`, with an error that names every problem key."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mis_shaped = [
        f"{k} {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state_dict))
        if state_dict[k].shape != expected[k].shape
    ]
    if missing or unexpected or mis_shaped:
        lines = [f"{source} does not match the model:"]
        if missing:
            lines.append(f"  missing keys: {_preview(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys: {_preview(unexpected)}")
        if mis_shaped:
            lines.append(f"  shape mismatches: {_preview(mis_shaped)}")
        lines.append("  Is the file for this backbone name (and, for open_clip, its -quickgelu variant)?")
        raise WeightsError("\n".join(lines))
    module.load_state_dict(state_dict, strict=True)


# ------------------------------------------------------------------------------ construction
def _arch(name: str) -> tuple[str, str]:
    """(family, architecture name in that library) of an lptlib backbone name."""
    if name in MINIATURE_ARCHS:
        return MINIATURE_ARCHS[name]
    return backbone_family(name), name.split(":", 1)[1]


def build_timm(arch: str, num_classes: int = 0, pretrained: bool = False) -> nn.Module:
    """A timm model (random weights, or downloaded by its full tag)."""
    try:
        return timm.create_model(arch, pretrained=pretrained, num_classes=None if pretrained else num_classes)
    except Exception as e:
        if not pretrained:
            raise
        raise WeightsError(
            f"could not get timm weights {arch!r} from the hub ({type(e).__name__}: {e}). Without a "
            "network, download the weight file elsewhere and set weights to its path"
        ) from None


@contextlib.contextmanager
def _quiet_random_init_warning():
    """open_clip warns 'Model initialized randomly' on the root logger even when we load weights next."""

    def keep(record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def build_open_clip(arch: str, tag: str | None = None) -> nn.Module:
    """An open_clip CLIP model (random weights, or downloaded by its pretrained tag)."""
    quick_gelu = bool(tag and (open_clip.get_pretrained_cfg(arch, tag) or {}).get("quick_gelu", False))
    try:
        with _quiet_random_init_warning():
            return open_clip.create_model(arch, pretrained=tag, force_quick_gelu=quick_gelu)
    except Exception as e:
        if not tag:
            raise
        raise WeightsError(
            f"could not get open_clip weights {arch}/{tag} from the hub ({type(e).__name__}: {e}). "
            "Without a network, download the weight file elsewhere and set weights to its "
            "path"
        ) from None


class Backbone(nn.Module):
    """A frozen ViT, timm or open_clip, with the parts PEFT methods build on.

    It stays in eval mode whatever `train()` is called with (dropout / drop-path of the frozen
    network stay off while PEFT modules train, as in VPT).
    """

    def __init__(self, model: nn.Module, name: str, family: str, normalization: Normalization):
        super().__init__()
        self.model, self.name, self.family, self.normalization = model, name, family, normalization
        if family == "timm":
            if getattr(model, "global_pool", None) != "token" or getattr(model, "cls_token", None) is None:
                raise WeightsError(f"{name}: only CLS-token ViTs (global_pool='token') are supported")
            self.visual = model
            self.embed_dim = model.embed_dim
            self.num_prefix_tokens = model.num_prefix_tokens
        else:
            visual = model.visual
            if (
                getattr(visual, "attn_pool", None) is not None
                or visual.pool_type != "tok"
                or visual.final_ln_after_pool
                or not hasattr(visual, "transformer")
            ):
                raise WeightsError(f"{name}: only open_clip ViTs with CLS-token pooling are supported")
            self.visual = visual
            self.embed_dim = visual.transformer.width
            self.num_prefix_tokens = 1
        self.requires_grad_(False)
        self.eval()

    # -- structure ------------------------------------------------------------------------
    @property
    def blocks(self) -> nn.Module:
        """The transformer blocks in order (indexable, `len` = depth)."""
        return self.visual.blocks if self.family == "timm" else self.visual.transformer.resblocks

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def patch_size(self) -> int:
        size = self.visual.patch_embed.patch_size if self.family == "timm" else self.visual.patch_size
        return int(size[0])

    @property
    def image_size(self) -> int:
        size = self.visual.patch_embed.img_size if self.family == "timm" else self.visual.image_size
        return int(size[0])

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> the token sequence entering block 1: [CLS, patches] with position embeddings."""
        if self.family == "timm":
            m = self.visual
            return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))
        return self.visual._embeds(x)

    def final_norm(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.visual.norm(tokens) if self.family == "timm" else self.visual.ln_post(tokens)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """{'cls': (B, D) final CLS feature, 'patch': (B, N, D) final patch tokens}, both after the final norm."""
        tokens = self.embed(x)
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.final_norm(tokens)
        return {"cls": tokens[:, 0], "patch": tokens[:, self.num_prefix_tokens :]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The final CLS feature (timm's pre-logits; open_clip's pooled feature before `proj`)."""
        return self.forward_features(x)["cls"]

    def train(self, mode: bool = True) -> "Backbone":
        return super().train(False)

    # -- vision-language ----------------------------------------------------------------
    @property
    def is_vision_language(self) -> bool:
        return self.family == "open_clip"

    def _require_vl(self) -> None:
        if not self.is_vision_language:
            raise TypeError(f"{self.name} is a visual-only backbone; it has no text tower")

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        self._require_vl()
        arch = _arch(self.name)[1]
        return open_clip.get_tokenizer(arch)(texts)

    def encode_text(self, texts: list[str], normalize: bool = True) -> torch.Tensor:
        """Text embeddings in the joint space (the CLIP text tower)."""
        self._require_vl()
        device = next(self.model.parameters()).device
        return self.model.encode_text(self.tokenize(texts).to(device), normalize=normalize)

    def project(self, cls: torch.Tensor) -> torch.Tensor:
        """CLS features -> the joint image-text space (`visual.proj`)."""
        self._require_vl()
        return cls @ self.visual.proj


def normalization_of(model: nn.Module, family: str) -> Normalization:
    """What `model` expects of its input: mean, std, interpolation and its input side."""
    if family == "timm":
        cfg = timm.data.resolve_model_data_config(model)
        size = int(model.patch_embed.img_size[0])
        return Normalization(tuple(cfg["mean"]), tuple(cfg["std"]), cfg.get("interpolation", "bicubic"), size)
    pre = model.visual.preprocess_cfg
    size = model.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    return Normalization(tuple(pre["mean"]), tuple(pre["std"]), pre.get("interpolation", "bicubic"), size)


def create_backbone(cfg: BackboneConfig) -> Backbone:
    """The frozen backbone a `BackboneConfig` names, with weights from a file, the hub, or random."""
    family, arch = _arch(cfg.name)
    if cfg.weights == "hub":
        model = build_timm(arch, pretrained=True) if family == "timm" else build_open_clip(arch, cfg.tag)
    elif cfg.weights == "random":
        model = build_timm(arch) if family == "timm" else build_open_clip(arch)
    else:
        state = load_weight_file(cfg.weights)
        if family == "timm":
            head = state.get("head.weight")
            model = build_timm(arch, num_classes=0 if head is None else head.shape[0])
        else:
            model = build_open_clip(arch)
        load_strict(model, state, f"weight file {resolve(cfg.weights)}")
    if family == "timm":
        model.reset_classifier(0)  # our heads replace the pretraining head
    return Backbone(model, cfg.name, family, normalization_of(model, family))


def save_weights(model: nn.Module, path: str | os.PathLike) -> Path:
    """Save a state dict as safetensors, atomically (the format `create_backbone` reads)."""
    return save_safetensors(model.state_dict(), resolve(path))


__all__ = [
    "Backbone",
    "WeightsError",
    "create_backbone",
    "load_weight_file",
    "load_strict",
    "save_weights",
    "build_timm",
    "build_open_clip",
    "MINIATURE_ARCHS",
]
