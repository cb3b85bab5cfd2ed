"""The LPT recipe (docs/methods.md#lpt): its `lpt` section, the LPT model built from it, and the run of each stage.

Both stages minimise the dual-sampling objective L = L_AGCL(B_cb) + beta_e L'_AGCL(B_ib), beta_e = eta (E - e) / E
(e 0-based), plus `match_weight` x the key-query matching term on each branch in stage 2
(`lptlib.objectives.dual_sampling_objective`). Stage 1 trains the shared prompts and the cosine head; stage 2
loads them (frozen) and trains the group prompt pool, its keys and the head.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from lptlib.data import LTData, make_dual_sampling, make_loader, make_sampler
from lptlib.engine import FitResult, Run, Schedule, classifier_run, fit, predict, run_settings, schedule_of
from lptlib.models.backbones import Backbone, create_backbone
from lptlib.models.peft import LPT, count_trainable
from lptlib.objectives import AGCL, dual_sampling_objective
from lptlib.sections import (  # noqa: F401 (STAGE2_ROW, STAGE1_CONTINUED_ROW: re-exported with STAGE1_ROW)
    ARMS,
    LADDER_ARMS,
    LPT_STAGE1,
    STAGE1_CONTINUED_ROW,
    STAGE2_ROW,
    Arm,
    LPTConfig,
    scale_key,
)
from lptlib.utils import default_device, read_safetensors, save_safetensors

if TYPE_CHECKING:
    from lptlib.config import Config


def build_lpt(
    backbone: Backbone,
    num_classes: int,
    lpt: LPTConfig,
    stage: int,
    adapter: bool = False,
    bottleneck: int | None = None,
    head: str = "cosine",
) -> LPT:
    """The LPT model of `stage` from the `lpt` section; with `adapter`, LPT++'s module (AdaptFormer adapters of
    width `bottleneck` in every block); `head="linear"` for the ablations without the cosine head."""
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
        bottleneck=bottleneck,
        head=head,
    )


def stage_run(
    model: LPT,
    data: LTData,
    cfg: Config,
    checkpoint: Path | None,
    schedule: Schedule | None = None,
    resume: str | None = None,
    scale: float | None = None,
) -> Run:
    """The run of one LPT stage: dual sampling with A-GCL on both branches for a fixed schedule, final state tested
    once.
    `schedule` / `resume` default to the `lpt` section's (LPT++ passes its phase schedules), A-GCL's `scale` to
    `lpt.agcl.scale` (stage 2 passes stage 1's, `arm_scale`)."""
    lpt = cfg.lpt
    schedule = schedule or (lpt.stage1 if model.stage == 1 else lpt.stage2)
    lt = data.transformed(model.backbone.normalization)
    batches = make_dual_sampling(
        lt.train, lt.train.targets, schedule.batch_size, cfg.seed, lpt.num_samples_cls, cfg.data.num_workers
    )
    a, counts = lpt.agcl, lt.train_counts
    s = a.scale if scale is None else scale
    cb = AGCL(counts, a.alpha, a.margin, s, *a.class_balanced, a.smoothing)
    ib = AGCL(counts, a.alpha, a.margin, s, *a.instance_balanced, a.smoothing)
    objective = dual_sampling_objective(cb, ib, schedule.epochs, lpt.eta, lpt.match_weight)
    return classifier_run(
        model,
        batches,
        objective,
        schedule,
        lt,
        checkpoint=checkpoint,
        resume=resume or lpt.resume,
        name=f"LPT stage {model.stage}",
        settings=run_settings(cfg, data, stage=model.stage),
    )


#: the row keys LPT's stages write, declared once (the claims table, the results table and the grid import them)
STAGE1_ROW = LPT_STAGE1  # STAGE2_ROW, STAGE1_CONTINUED_ROW (stage 1 trained on for stage 2's epochs): lptlib.sections
#: the ladder's rungs in order (the one below `ladder/linear_head` is VPT-deep + class-balanced sampling, Table 1)
LADDER = tuple(LADDER_ARMS)


def ladder_row(rung: str) -> str:
    """The row key of a ladder rung, e.g. 'ladder/agcl'."""
    return f"ladder/{rung}"


def loo_row(part: str) -> str:
    """The row key of stage 1 without one part, e.g. 'lpt_stage1_without/agcl'."""
    return f"lpt_stage1_without/{part}"


def agcl_part_row(part: str) -> str:
    """The row key of stage 1 with one part of A-GCL in place of A-GCL: 'agcl_part/cloud' or 'agcl_part/no_cloud'."""
    return f"agcl_part/{part}"


def arm_schedule(cfg: Config, key: str) -> Schedule:
    """Stage 1's schedule for arm `key`: `lpt.stage1` with the arm's learning rate from `arm_lr` (else
    `lpt.stage1.lr`), LPT's weight decay or, for the arms without it, the VPT study's
    (`vpt_study.vpt_deep.weight_decay`)."""
    lpt, arm = cfg.lpt, ARMS[key]
    wd = lpt.stage1.weight_decay if arm.lpt_weight_decay else cfg.vpt_study.vpt_deep.weight_decay
    return schedule_of(cfg, key, lpt.stage1.model_copy(update={"weight_decay": wd}))


def arm_scale(cfg: Config, key: str) -> float:
    """The scale s on stage-1 arm `key`'s normalised scores: its `arm_cosine_scale`, else `lpt.cosine_scale` under
    cross-entropy and A-GCL's `lpt.agcl.scale` under A-GCL (the model predicts with the s it was trained with)."""
    default = functools.reduce(getattr, scale_key(key).split("."), cfg)
    return cfg.arm_cosine_scale.get(key, default)


def arm_losses(cfg: Config, arm: Arm, counts, scale: float) -> tuple[Callable, Callable]:
    """The (class-balanced, instance-balanced) branch losses of `arm`, on the model's normalised scores c, with the
    arm's scale s (`arm_scale`): ce: CE(s c, y); agcl: A-GCL with each branch's (lambda+, lambda-); agcl_cloud:
    A-GCL's Gaussian cloud alone (margin, focusing and smoothing off: CE on s (c - alpha |eps| mu)); agcl_no_cloud:
    A-GCL with alpha = 0."""
    a = cfg.lpt.agcl
    if arm.loss == "ce":
        ce = lambda cosine, y: F.cross_entropy(scale * cosine, y)  # noqa: E731
        return ce, ce
    if arm.loss == "agcl_cloud":
        cloud = AGCL(counts, a.alpha, 0.0, scale, 0.0, 0.0, 0.0)
        return cloud, cloud
    alpha = 0.0 if arm.loss == "agcl_no_cloud" else a.alpha
    return tuple(
        AGCL(counts, alpha, a.margin, scale, *branch, a.smoothing) for branch in (a.class_balanced, a.instance_balanced)
    )


def arm_run(model: LPT, data: LTData, cfg: Config, key: str, checkpoint: Path | None) -> Run:
    """The run of stage-1 arm `key` (`ARMS`: a ladder rung, stage 1 itself or an ablation) on `model` (built for
    the arm by `build_arm`): its losses (`arm_losses`) on dual-sampling batch pairs, L(B_cb) + beta_e L'(B_ib), or
    on class-balanced batches alone; its schedule (`arm_schedule`). `ARMS[STAGE1_ROW]` is `stage_run`'s stage 1."""
    if key not in ARMS:
        raise ValueError(f"unknown stage-1 arm {key!r}; use one of {', '.join(ARMS)}")
    lpt, arm = cfg.lpt, ARMS[key]
    schedule = arm_schedule(cfg, key)
    lt = data.transformed(model.backbone.normalization)
    cb, ib = arm_losses(cfg, arm, lt.train_counts, model.scale)
    if arm.dual_sampling:
        train = make_dual_sampling(
            lt.train, lt.train.targets, schedule.batch_size, cfg.seed, lpt.num_samples_cls, cfg.data.num_workers
        )
        objective = dual_sampling_objective(cb, ib, schedule.epochs, lpt.eta, lpt.match_weight)
    else:
        sampler = make_sampler("class_balanced", lt.train.targets, cfg.seed, lpt.num_samples_cls)
        train = make_loader(lt.train, schedule.batch_size, sampler, cfg.data.num_workers)

        def objective(m: LPT, batch, epoch: int) -> torch.Tensor:
            return cb(m.forward_train(batch[0])["cosine"], batch[1])

    return classifier_run(
        model,
        train,
        objective,
        schedule,
        lt,
        checkpoint=checkpoint,
        resume=lpt.resume,
        name="LPT stage 1" if key == STAGE1_ROW else key,
        settings=run_settings(cfg, data, stage=1, **({} if key == STAGE1_ROW else {"arm": key})),
    )


def build_arm(backbone: Backbone, num_classes: int, cfg: Config, key: str) -> LPT:
    """The stage-1 model of arm `key`: its head, with `lpt.head_dropout` or none, and its scale (`arm_scale`)."""
    arm = ARMS[key]
    lpt = cfg.lpt.model_copy(
        update={"head_dropout": cfg.lpt.head_dropout if arm.dropout else 0.0, "cosine_scale": arm_scale(cfg, key)}
    )
    return build_lpt(backbone, num_classes, lpt, stage=1, head=arm.head)


def stage1_task(cfg: Config, data: LTData, arm: str, checkpoint: str | None, test: bool = True) -> dict:
    """One run of stage 1's notebook for `cfg.seed`, a task of `lptlib.pool.run_tasks`: arm `arm` (`ARMS`; stage 1
    itself is `STAGE1_ROW`). Every arm starts from the same seed (the same prompt initialisation: paired). Returns
    {'row', 'history'} and, for `lpt_stage1`, the stage-1 state (shared prompts + head) for stage 2."""
    backbone = create_backbone(getattr(cfg.backbones, cfg.lpt.backbone))
    torch.manual_seed(cfg.seed)
    model = build_arm(backbone, data.num_classes, cfg, arm)
    result = fit(arm_run(model, data, cfg, arm, Path(checkpoint) if checkpoint else None), test=test)
    out = {"row": result.row(count_trainable(model)), "history": result.history}
    if arm == STAGE1_ROW:
        out["stage1_state"] = {k: v.detach().cpu().clone() for k, v in model.stage1_state().items()}
    return out


def stage2_task(
    cfg: Config, data: LTData, stage1_path: str, checkpoint: str | None, test: bool = True, pool: bool = True
) -> dict:
    """Stage 2 for `cfg.seed` on that seed's stage-1 file, a task of `lptlib.pool.run_tasks`; `pool=False` trains
    stage 1 on instead (`STAGE1_CONTINUED_ROW`: shared prompts + head, stage 2's schedule and objective without the
    pool), so stage 2 is compared with the same extra epochs; both continue with stage 1's scale (`arm_scale`).
    Returns {'row', 'history'} and, with the pool and `test`, 'key_usage' (how often each entry is picked on the
    test images)."""
    backbone = create_backbone(getattr(cfg.backbones, cfg.lpt.backbone))
    torch.manual_seed(cfg.seed)
    scale = arm_scale(cfg, STAGE1_ROW)
    lpt = cfg.lpt.model_copy(update={"cosine_scale": scale})
    model = build_lpt(backbone, data.num_classes, lpt, stage=2 if pool else 1)
    load_stage1(model, stage1_path)
    schedule = schedule_of(cfg, STAGE2_ROW if pool else STAGE1_CONTINUED_ROW, cfg.lpt.stage2)
    run = stage_run(model, data, cfg, Path(checkpoint) if checkpoint else None, schedule=schedule, scale=scale)
    if not pool:
        run.name, run.settings = STAGE1_CONTINUED_ROW, {**run.settings, "continued": True}
    result = fit(run, test=test)
    out = {"row": result.row(count_trainable(model)), "history": result.history}
    if pool and test:
        _, test_loader = data.transformed(backbone.normalization).eval_loaders(cfg.lpt.stage2.eval_batch_size)
        out["key_usage"] = key_usage(model, test_loader)
    return out


def train_stage(
    model: LPT,
    data: LTData,
    cfg: Config,
    checkpoint: Path | None,
    schedule: Schedule | None = None,
    resume: str | None = None,
    test: bool = True,
) -> FitResult:
    """`fit(stage_run(...))`: train one LPT stage, test its final state once (`test=False`: never)."""
    return fit(stage_run(model, data, cfg, checkpoint, schedule, resume), test=test)


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
