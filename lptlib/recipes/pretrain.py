"""The pretraining recipe: its `pretrain` section and the miniature foundation models trained on the source pool (docs/methods.md#the-offline-miniature).

- `vit-mini`: supervised on the 4 coarse labels (tops; trousers + dress; footwear; bag), so the
  fine distinctions must be learned downstream, as IN21k features must be adapted to Places-LT.
- `clip-mini`: contrastive image-caption training, captions made from the fine class names and a
  few templates ("a photo of a {name}."). With 10 classes a batch holds many images of one class,
  whose captions are positives of each other; the loss therefore uses label-aware targets
  (UniCL, Yang et al. 2022: every image-caption pair of the same class is a positive), which
  reduces to CLIP's loss when all captions in a batch are distinct.

Only the source pool is seen; the target pool (train/val) and the test set are only evaluated.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lptlib.data import FASHION_MNIST_COARSE, LTData, ShuffleSampler, SingleSampling, build_transforms, make_loader
from lptlib.data.datasets import ImageDataset
from lptlib.engine import Optim, Run, autocast, fit, predict
from lptlib.models.backbones import build_open_clip, build_timm, normalization_of, save_weights
from lptlib.models.heads import zero_shot_weights
from lptlib.models.miniature import CLIP_MINI, VIT_MINI
from lptlib.paths import repo_root, resolve
from lptlib.sections import PretrainRunConfig
from lptlib.utils import default_device, seed_everything

if TYPE_CHECKING:
    from lptlib.config import Config


@dataclass
class PretrainResult:
    model: nn.Module
    metrics: dict  # deterministic on CPU for a given seed (no timings), so `dvc metrics diff` stays clean
    seconds: float  # training wall time
    history: list[dict] = field(default_factory=list)  # one row per step


def relabel(dataset: ImageDataset, mapping: np.ndarray) -> ImageDataset:
    """A view of `dataset` whose label y becomes mapping[y] (fine -> coarse labels)."""
    new = copy.copy(dataset)
    new.targets = mapping[dataset.targets]
    return new


def _capped(dataset: ImageDataset, max_images: int | None, seed: int) -> ImageDataset:
    if max_images is None or max_images >= len(dataset):
        return dataset
    return dataset.subset(np.sort(np.random.default_rng(seed).permutation(len(dataset))[:max_images]))


def _decay_groups(weight_decay: float):
    """AdamW parameter groups: no weight decay on biases, norms, position/class embeddings (1-D or embedding
    tensors)."""

    def groups(model: nn.Module) -> list[dict]:
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            (no_decay if p.ndim < 2 or "embed" in name or "token" in name else decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    return groups


def _train(model: nn.Module, loader, run: PretrainRunConfig, loss_fn, device: torch.device, desc: str) -> list[dict]:
    """One model's pretraining through the engine: AdamW (betas 0.9, 0.98), warm-up + cosine per step, bf16
    autocast on CUDA; returns the per-step history."""
    total = run.epochs * len(loader)
    optim = Optim(
        "adamw",
        run.lr,
        run.weight_decay,
        betas=(0.9, 0.98),
        warmup_steps=min(run.warmup_steps, total // 2),
        param_groups=_decay_groups(run.weight_decay),
    )
    result = fit(
        Run(
            desc,
            model,
            SingleSampling(loader),
            lambda m, batch, epoch: loss_fn(*batch),
            run.epochs,
            optim,
            device=device,
        )
    )
    return [{"model": desc, **row} for row in result.steps]


def pretrain_seed(cfg: Config) -> int:
    """The seed of the miniature's pretraining: `pretrain.seed`, else the run's `seed`."""
    return cfg.seed if cfg.pretrain.seed is None else cfg.pretrain.seed


def pretrain_vit_mini(data: LTData, cfg: Config, device: torch.device | None = None) -> PretrainResult:
    """Supervised pretraining of `vit-mini` on the 4 coarse labels of the source pool."""
    device = device or default_device()
    run, seed = cfg.pretrain.vit_mini, pretrain_seed(cfg)
    seed_everything(seed)
    model = build_timm(VIT_MINI, num_classes=len(np.unique(FASHION_MNIST_COARSE))).to(device)
    train_tf, test_tf = build_transforms(cfg.data, normalization_of(model, "timm"))
    source = _capped(relabel(data.source, FASHION_MNIST_COARSE), run.max_images, seed).with_transform(train_tf)
    loader = make_loader(
        source,
        run.batch_size,
        ShuffleSampler(len(source), seed),
        cfg.data.num_workers,
        drop_last=len(source) >= run.batch_size,
    )
    start = time.perf_counter()
    history = _train(model, loader, run, lambda x, y: F.cross_entropy(model(x), y), device, "vit-mini")
    seconds = time.perf_counter() - start

    metrics = {"train_images": len(source), "epochs": run.epochs, "params": sum(p.numel() for p in model.parameters())}
    for split in ("val", "test"):
        ds = getattr(data, split)
        if ds is None:
            continue
        ds = relabel(ds, FASHION_MNIST_COARSE).with_transform(test_tf)
        logits, labels = predict(
            model, make_loader(ds, 512, num_workers=cfg.data.num_workers), device, desc=f"vit-mini coarse {split}"
        )
        metrics[f"coarse_{split}_acc"] = (logits.argmax(1) == labels).float().mean().item()
    return PretrainResult(model, metrics, seconds, history)


def unicl_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, labels: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric contrastive loss with label-aware targets (UniCL): pairs of the same class are positives.

    With all labels distinct the targets are the identity and this is CLIP's loss.
    """
    logits = logit_scale * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T
    positives = (labels[:, None] == labels[None, :]).float()
    targets = positives / positives.sum(1, keepdim=True)
    return 0.5 * (
        torch.sum(-targets * F.log_softmax(logits, 1), 1).mean()
        + torch.sum(-targets * F.log_softmax(logits.T, 1), 1).mean()
    )


def pretrain_clip_mini(data: LTData, cfg: Config, device: torch.device | None = None) -> PretrainResult:
    """Contrastive pretraining of `clip-mini` on source-pool images with templated fine-class captions."""
    import open_clip

    device = device or default_device()
    run, seed = cfg.pretrain.clip_mini, pretrain_seed(cfg)
    seed_everything(seed)
    model = build_open_clip(CLIP_MINI).to(device)
    tokenizer = open_clip.get_tokenizer(CLIP_MINI)
    templates = cfg.pretrain.caption_templates
    # every (class, template) caption, tokenised once; a sample draws its template at random
    captions = tokenizer([t.format(name=n) for n in data.classnames for t in templates]).to(device)
    train_tf, test_tf = build_transforms(cfg.data, normalization_of(model, "open_clip"))
    source = _capped(data.source, run.max_images, seed).with_transform(train_tf)
    loader = make_loader(
        source,
        run.batch_size,
        ShuffleSampler(len(source), seed),
        cfg.data.num_workers,
        drop_last=len(source) >= run.batch_size,
    )
    gen = torch.Generator().manual_seed(seed)

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        caption_ids = y * len(templates) + torch.randint(len(templates), y.shape, generator=gen).to(y.device)
        unique, inverse = torch.unique(caption_ids, return_inverse=True)  # encode each distinct caption once
        text = model.encode_text(captions[unique])[inverse]
        return unicl_loss(model.encode_image(x), text, y, model.logit_scale.exp())

    start = time.perf_counter()
    history = _train(model, loader, run, loss_fn, device, "clip-mini")
    seconds = time.perf_counter() - start

    with torch.no_grad(), autocast(device):
        weights = zero_shot_weights(
            lambda t: model.encode_text(tokenizer(t).to(device)), data.classnames, cfg.pretrain.zero_shot_templates
        ).float()
    metrics = {
        "train_images": len(source),
        "epochs": run.epochs,
        "params": sum(p.numel() for p in model.parameters()),
        "logit_scale": model.logit_scale.exp().item(),
    }
    for split in ("val", "test"):
        ds = getattr(data, split)
        if ds is None:
            continue
        feats, labels = predict(
            lambda x: F.normalize(model.encode_image(x), dim=-1),
            make_loader(ds.with_transform(test_tf), 512, num_workers=cfg.data.num_workers),
            device,
            desc=f"clip-mini zero-shot {split}",
        )
        metrics[f"zero_shot_{split}_acc"] = ((feats @ weights.cpu().T).argmax(1) == labels).float().mean().item()
    return PretrainResult(model, metrics, seconds, history)


PRETRAINERS = {"vit-mini": pretrain_vit_mini, "clip-mini": pretrain_clip_mini}


def run_pretraining(data: LTData, cfg: Config, device: torch.device | None = None) -> dict[str, PretrainResult]:
    """Pretrain every miniature backbone named in `cfg.backbones` and save it to its `weights` path.

    Paper-scale backbones (hub tags or downloaded files) are not pretrained here.
    """
    if data.source is None:
        names = [b.name for b in (cfg.backbones.visual, cfg.backbones.vision_language) if b.name in PRETRAINERS]
        if names:
            raise ValueError(
                f"{', '.join(names)} are pretrained on the miniature's source pool, which "
                f"{data.name} does not have; use paper-scale backbones with it"
            )
    todo = {b.name: b for b in (cfg.backbones.visual, cfg.backbones.vision_language) if b.name in PRETRAINERS}
    for role, backbone in (("visual", cfg.backbones.visual), ("vision_language", cfg.backbones.vision_language)):
        if backbone.name not in todo:  # check everything before any training
            continue
        if backbone.weights in ("hub", "random"):
            raise ValueError(
                f"backbones: {backbone.name} needs a weight file path to be saved to, got weights: {backbone.weights}"
            )
        target = resolve(backbone.weights)
        if target.exists() and not target.resolve().is_relative_to(repo_root().resolve() / "outputs"):
            raise ValueError(
                f"backbones.{role}.weights: {target} exists outside outputs/, so it is yours, and pretraining "
                f"would overwrite it. Fix: name a path under outputs/ (the pipeline's, e.g. outputs/pretrain/"
                f"{backbone.name}.safetensors) to pretrain, or move the file away first"
            )
    results: dict[str, PretrainResult] = {}
    for backbone in todo.values():
        result = PRETRAINERS[backbone.name](data, cfg, device)
        save_weights(result.model, backbone.weights)
        results[backbone.name] = result
    return results
