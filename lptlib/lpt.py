"""Training LPT's two stages (docs/methods.md#lpt): A-GCL on both branches of dual sampling,
L = L_AGCL(B_cb) + beta_e L'_AGCL(B_ib), beta_e = eta (E - e) / E (e 0-based), plus 0.5 x the
key-query matching term on each branch in stage 2."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from lptlib.config import Config, TrainConfig, to_dict
from lptlib.data import LTData, build_transforms, eval_loaders, make_dual_sampling
from lptlib.engine import FitResult, fit, predict, run_settings
from lptlib.losses import AGCL, matching_loss
from lptlib.models.backbones import Backbone
from lptlib.models.lpt import LPT
from lptlib.utils import default_device, read_safetensors, save_safetensors


def build_lpt(backbone: Backbone, num_classes: int, cfg: Config, stage: int, adapter: bool = False) -> LPT:
    """LPT from the `lpt` section; with `adapter`, LPT++'s module (adapters with `lptpp.bottleneck`)."""
    lpt = cfg.lpt
    return LPT(
        backbone,
        num_classes,
        stage=stage,
        prompt_length=lpt.prompt_length,
        prompt_form=lpt.prompt_form,
        pool_size=lpt.pool_size,
        top_k=lpt.top_k,
        share_blocks=lpt.share_blocks,
        cosine_scale=lpt.cosine_scale,
        head_dropout=lpt.head_dropout,
        adapter=adapter,
        bottleneck=cfg.lptpp.bottleneck,
    )


def dual_sampling_loss(cb_loss: AGCL, ib_loss: AGCL, epochs: int, eta: float, match_weight: float):
    """The LPT objective on a (class-balanced, instance-balanced) batch pair; one forward of both batches."""

    def loss_fn(model: LPT, batch, epoch: int) -> torch.Tensor:
        (xb, yb), (xi, yi) = batch
        out = model.forward_train(torch.cat([xb, xi]))
        n = len(xb)
        beta = max(0.0, eta * (epochs - epoch) / epochs)
        losses = [cb_loss(out["cosine"][:n], yb), ib_loss(out["cosine"][n:], yi)]
        if "query" in out:
            keys = model.tuner["group_pool"].keys
            losses[0] = losses[0] + match_weight * matching_loss(out["query"][:n], keys, out["topk"][:n])
            losses[1] = losses[1] + match_weight * matching_loss(out["query"][n:], keys, out["topk"][n:])
        return losses[0] + beta * losses[1]

    return loss_fn


def train_stage(
    model: LPT,
    data: LTData,
    cfg: Config,
    checkpoint: Path | None,
    train: TrainConfig | None = None,
    resume: str | None = None,
) -> FitResult:
    """Train one LPT stage with dual sampling and A-GCL; select on val; test once. `train` / `resume` default to
    the `lpt` section's (LPT++ passes its phase schedules)."""
    lpt = cfg.lpt
    train = train or (lpt.stage1 if model.stage == 1 else lpt.stage2)
    train_tf, test_tf = build_transforms(cfg.data, model.backbone.normalization)
    lt = data.with_transforms(train_tf, test_tf)
    workers = cfg.data.num_workers
    batches = make_dual_sampling(lt.train, lt.train.targets, train.batch_size, cfg.seed, lpt.num_samples_cls, workers)
    a = lpt.agcl
    counts = lt.train_counts
    cb = AGCL(counts, a.alpha, a.margin, a.scale, *a.class_balanced, a.smoothing)
    ib = AGCL(counts, a.alpha, a.margin, a.scale, *a.instance_balanced, a.smoothing)
    val, test = eval_loaders(lt, train.eval_batch_size, workers)
    return fit(
        model,
        batches,
        val,
        test,
        dual_sampling_loss(cb, ib, train.epochs, lpt.eta, lpt.match_weight),
        epochs=train.epochs,
        lr=train.lr,
        weight_decay=train.weight_decay,
        momentum=train.momentum,
        warmup_epochs=train.warmup_epochs,
        shot_counts=lt.shot_counts,
        convention=cfg.data.shot_convention,
        checkpoint=checkpoint,
        resume=resume or lpt.resume,
        desc=f"LPT stage {model.stage}",
        settings=run_settings(cfg, data, stage=model.stage, schedule=to_dict(train)),
    )


def save_stage1(model: LPT, path: str | Path) -> Path:
    """Stage 1's shared prompts and head as safetensors, with the backbone name and shapes as metadata."""
    meta = {
        "backbone": model.backbone.name,
        "prompt_length": str(model.tuner["shared_prompts"].length),
        "num_classes": str(model.tuner["head"].weight.shape[0]),
    }
    return save_safetensors(model.stage1_state(), path, meta)


def load_stage1(model: LPT, path: str | Path) -> None:
    """Load a stage-1 file into a stage-2 model; another backbone, prompt length or class list is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"stage-1 checkpoint {path} does not exist; run stage 1 first (`dvc repro lpt_stage1`)")
    state, meta = read_safetensors(path, what="stage-1 checkpoint")
    if meta.get("backbone") != model.backbone.name:
        raise ValueError(
            f"stage-1 checkpoint {path} was trained on backbone {meta.get('backbone')!r}, "
            f"this run uses {model.backbone.name!r}"
        )
    model.load_stage1_state(state, source=f"stage-1 checkpoint {path}")


@torch.no_grad()
def key_usage(model: LPT, loader) -> np.ndarray:
    """How often each pool entry is picked (top-k) over the images of `loader`."""
    device = default_device()
    model.to(device).eval()
    picks, _ = predict(lambda x: model.forward_train(x)["topk"].float(), loader, device, desc="key usage")
    return np.bincount(picks.long().flatten().numpy(), minlength=model.tuner["group_pool"].pool_size)


def usage_entropy(counts: np.ndarray) -> float:
    """Entropy of the key-usage distribution divided by log(m): 1 = uniform use, 0 = one entry only."""
    p = counts / max(1, counts.sum())
    h = -(p[p > 0] * np.log(p[p > 0])).sum()
    return float(h / math.log(len(counts))) if len(counts) > 1 else 0.0
