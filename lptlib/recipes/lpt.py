"""The LPT recipe (docs/methods.md#lpt): its `lpt` section, the LPT model built from it, and the run of each stage.

Both stages minimise the dual-sampling objective L = L_AGCL(B_cb) + beta_e L'_AGCL(B_ib), beta_e = eta (E - e) / E
(e 0-based), plus `match_weight` x the key-query matching term on each branch in stage 2
(`lptlib.objectives.dual_sampling_objective`). Stage 1 trains the shared prompts and the cosine head; stage 2
loads them (frozen) and trains the group prompt pool, its keys and the head.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from lptlib.data import LTData, make_dual_sampling, make_loader, make_sampler
from lptlib.engine import FitResult, Run, Schedule, classifier_run, fit, predict, run_settings
from lptlib.models.backbones import Backbone, create_backbone
from lptlib.models.peft import LPT, count_trainable
from lptlib.objectives import AGCL, dual_sampling_objective
from lptlib.sections import LPTConfig
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
) -> LPT:
    """The LPT model of `stage` from the `lpt` section; with `adapter`, LPT++'s module (AdaptFormer adapters of
    width `bottleneck` in every block)."""
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
    )


def stage_run(
    model: LPT,
    data: LTData,
    cfg: Config,
    checkpoint: Path | None,
    schedule: Schedule | None = None,
    resume: str | None = None,
) -> Run:
    """The run of one LPT stage: dual sampling with A-GCL on both branches for a fixed schedule, final state tested
    once.
    `schedule` / `resume` default to the `lpt` section's (LPT++ passes its phase schedules)."""
    lpt = cfg.lpt
    schedule = schedule or (lpt.stage1 if model.stage == 1 else lpt.stage2)
    lt = data.transformed(model.backbone.normalization)
    batches = make_dual_sampling(
        lt.train, lt.train.targets, schedule.batch_size, cfg.seed, lpt.num_samples_cls, cfg.data.num_workers
    )
    a, counts = lpt.agcl, lt.train_counts
    cb = AGCL(counts, a.alpha, a.margin, a.scale, *a.class_balanced, a.smoothing)
    ib = AGCL(counts, a.alpha, a.margin, a.scale, *a.instance_balanced, a.smoothing)
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


#: the LPT ladder: from VPT-deep with class-balanced sampling (Table 1), LPT's parts added one at a time; the
#: rung after `dual_sampling` is stage 1 itself (+ LPT's weight decay), then stage 2 (+ the group prompt pool)
LADDER = ("cosine_head", "agcl", "dual_sampling")
#: the row keys LPT's stages write, declared once (the claims table, the results table and the grid import them)
STAGE1_ROW = "lpt_stage1"
STAGE2_ROW = "lpt_stage2"


def ladder_row(rung: str) -> str:
    """The row key of a ladder rung, e.g. 'ladder/agcl'."""
    return f"ladder/{rung}"


def ladder_run(model: LPT, data: LTData, cfg: Config, rung: str, checkpoint: Path | None) -> Run:
    """The run of one ladder rung below stage 1, on the stage-1 model (shared prompts + cosine head with dropout)
    and the stage-1 schedule with the VPT study's weight decay (`vpt_study.vpt_deep.weight_decay`):

    - `cosine_head`: cross-entropy on s cos(f, w) (s = `lpt.cosine_scale`), class-balanced batches;
    - `agcl`: A-GCL with the class-balanced branch's (lambda+, lambda-), class-balanced batches;
    - `dual_sampling`: LPT's full objective L_AGCL(B_cb) + beta_e L'_AGCL(B_ib).
    The next rung, `lpt_stage1`, differs from `dual_sampling` only by LPT's weight decay."""
    if rung not in LADDER:
        raise ValueError(f"unknown ladder rung {rung!r}; use one of {', '.join(LADDER)}")
    lpt = cfg.lpt
    schedule = lpt.stage1.model_copy(update={"weight_decay": cfg.vpt_study.vpt_deep.weight_decay})
    if rung == "dual_sampling":
        run = stage_run(model, data, cfg, checkpoint, schedule)
        run.name, run.settings = f"ladder {rung}", {**run.settings, "rung": rung}
        return run
    lt = data.transformed(model.backbone.normalization)
    sampler = make_sampler("class_balanced", lt.train.targets, cfg.seed, lpt.num_samples_cls)
    loader = make_loader(lt.train, schedule.batch_size, sampler, cfg.data.num_workers)
    a = lpt.agcl
    agcl = AGCL(lt.train_counts, a.alpha, a.margin, a.scale, *a.class_balanced, a.smoothing)

    def objective(m: LPT, batch, epoch: int) -> torch.Tensor:
        cosine = m.forward_train(batch[0])["cosine"]
        if rung == "cosine_head":
            return F.cross_entropy(m.tuner["head"].scale * cosine, batch[1])
        return agcl(cosine, batch[1])

    return classifier_run(
        model,
        loader,
        objective,
        schedule,
        lt,
        checkpoint=checkpoint,
        resume=lpt.resume,
        name=f"ladder {rung}",
        settings=run_settings(cfg, data, stage=1, rung=rung),
    )


def stage1_task(cfg: Config, data: LTData, rung: str, checkpoint: str | None, test: bool = True) -> dict:
    """One run of stage 1's notebook for `cfg.seed`, a task of `lptlib.pool.run_tasks`: a ladder rung (`LADDER`)
    or `STAGE1_ROW` (stage 1 itself). Every rung starts from the same initialisation (paired). Returns {'row', 'history'}
    and, for `lpt_stage1`, the stage-1 state (shared prompts + head) for stage 2."""
    backbone = create_backbone(getattr(cfg.backbones, cfg.lpt.backbone))
    torch.manual_seed(cfg.seed)
    model = build_lpt(backbone, data.num_classes, cfg.lpt, stage=1)
    ckpt = Path(checkpoint) if checkpoint else None
    run = stage_run(model, data, cfg, ckpt) if rung == STAGE1_ROW else ladder_run(model, data, cfg, rung, ckpt)
    result = fit(run, test=test)
    out = {"row": result.row(count_trainable(model)), "history": result.history}
    if rung == STAGE1_ROW:
        out["stage1_state"] = {k: v.detach().cpu().clone() for k, v in model.stage1_state().items()}
    return out


def stage2_task(cfg: Config, data: LTData, stage1_path: str, checkpoint: str | None, test: bool = True) -> dict:
    """Stage 2 for `cfg.seed` on that seed's stage-1 file, a task of `lptlib.pool.run_tasks` (for `lptlib.tune`;
    the notebook runs it inline)."""
    backbone = create_backbone(getattr(cfg.backbones, cfg.lpt.backbone))
    torch.manual_seed(cfg.seed)
    model = build_lpt(backbone, data.num_classes, cfg.lpt, stage=2)
    load_stage1(model, stage1_path)
    result = fit(stage_run(model, data, cfg, Path(checkpoint) if checkpoint else None), test=test)
    return {"row": result.row(count_trainable(model)), "history": result.history}


def train_stage(
    model: LPT,
    data: LTData,
    cfg: Config,
    checkpoint: Path | None,
    schedule: Schedule | None = None,
    resume: str | None = None,
) -> FitResult:
    """`fit(stage_run(...))`: train one LPT stage, test its final state once."""
    return fit(stage_run(model, data, cfg, checkpoint, schedule, resume))


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
