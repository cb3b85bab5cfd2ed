"""The TEA recipe (docs/methods.md#backbones-and-peft-modules, docs/methods.md#tea; TEA is **our reading** of its
abstract): its `tea` section, one member of the ablation matrix {PEFT} x {loss} x {TEA variant} (the PEFT model with
a text-initialised cosine head, trained with the loss and TEA's training-only parts, `lptlib.objectives`, for a
fixed schedule; the final state is tested once and its inference timed), the task that trains a member of one seed
in a worker process (`member_task`, for `lptlib.pool.run_tasks`) and zero-shot CLIP. The report over seeds is
`lptlib.report.tea`."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from lptlib.data import LTData, make_loader, make_sampler
from lptlib.engine import FitResult, Run, autocast, classifier_run, evaluate, fit, predict, run_settings, schedule_of
from lptlib.models.backbones import Backbone, create_backbone
from lptlib.models.heads import ZeroShotCLIP, check_classnames, text_head_weights
from lptlib.models.peft import PEFTClassifier, count_trainable
from lptlib.objectives import TEA, TEA_VARIANTS, build_loss, tea_objective
from lptlib.schema import (
    ConfigError,
)
from lptlib.sections import (  # noqa: F401 (member_name, method_key: re-exported, the TEA recipes' row keys)
    PEFT_METHODS,
    TEA_LOSSES,
    TEAMatrixConfig,
    member_name,
    method_key,
    peft_arguments,
    peft_schedule,
)
from lptlib.utils import default_device

if TYPE_CHECKING:
    from lptlib.config import Config


ZERO_SHOT_KEY = "zero_shot_clip"


def matrix_members(matrix: TEAMatrixConfig) -> list[tuple[str, str, str]]:
    """Every (peft, loss, variant) of `tea.matrix`, PEFT method outermost."""
    return [(p, lo, v) for p in matrix.peft for lo in matrix.loss for v in matrix.tea]


def check_member(peft: str, loss: str, variant: str) -> None:
    """A clear error for an unknown PEFT method, loss or TEA variant (before anything is built)."""
    for what, value, allowed in (
        ("PEFT method", peft, PEFT_METHODS),
        ("loss", loss, TEA_LOSSES),
        ("TEA variant", variant, TEA_VARIANTS),
    ):
        if value not in allowed:
            raise ConfigError(f"unknown {what} {value!r}; use one of {', '.join(allowed)}")


@torch.no_grad()
def class_mean_weights(
    backbone: Backbone, dataset, num_classes: int, batch_size: int = 512, num_workers: int = 0
) -> torch.Tensor:
    """(C, D) normalised per-class means of the frozen CLS features (LIFT's head init for visual-only ViTs)."""
    feats, labels = predict(
        backbone, make_loader(dataset, batch_size, num_workers=num_workers), default_device(), desc="class means"
    )
    sums = torch.zeros(num_classes, feats.shape[1]).index_add_(0, labels, nn.functional.normalize(feats, dim=-1))
    return nn.functional.normalize(sums, dim=-1)


def build_model(backbone: Backbone, data: LTData, cfg: Config, peft: str) -> PEFTClassifier:
    """The PEFT model of a member, with its cosine head initialised as `tea.head_init` says."""
    t = cfg.tea
    if peft not in PEFT_METHODS:
        raise ConfigError(f"unknown PEFT method {peft!r}; use one of {', '.join(PEFT_METHODS)}")
    if t.head_init == "text":
        if not backbone.is_vision_language:
            raise ConfigError(
                f"tea.head_init: text needs a vision-language backbone; {backbone.name} is visual-only "
                "(use class_mean or random, or tea.backbone: vision_language)"
            )
        check_classnames(data.classnames, data.num_classes)
    model = PEFTClassifier(
        backbone, data.num_classes, **peft_arguments(peft, t), head="cosine", cosine_scale=t.cosine_scale
    )
    head = model.tuner["head"]
    if t.head_init == "text":
        head.weight.data.copy_(text_head_weights(backbone, data.classnames, t.templates))
    elif t.head_init == "class_mean":
        train = data.transformed(backbone.normalization, augment=False).train
        head.weight.data.copy_(class_mean_weights(backbone, train, data.num_classes, num_workers=cfg.data.num_workers))
    return model


def build_objective(loss: str, class_counts, cfg: Config) -> nn.Module:
    """The classification loss of a member (LA with tea.la_tau; A-GCL with tea.agcl and the branch of tea.sampling)."""
    t = cfg.tea
    if loss == "la":
        return build_loss("la", class_counts, tau=t.la_tau)
    if loss == "agcl":
        a = t.agcl
        gamma_pos, gamma_neg = a.class_balanced if t.sampling == "class_balanced" else a.instance_balanced
        return build_loss(
            "agcl",
            class_counts,
            alpha=a.alpha,
            margin=a.margin,
            scale=a.scale,
            gamma_pos=gamma_pos,
            gamma_neg=gamma_neg,
            smoothing=a.smoothing,
        )
    return build_loss(loss, class_counts)


def build_tea(class_counts, cfg: Config, variant: str) -> TEA:
    t = cfg.tea
    return TEA(
        class_counts, variant, temperature=t.temperature, mix=t.mix, gate_max=t.gate_max, tec_weight=t.tec_weight
    )


def member_run(
    model: PEFTClassifier, data: LTData, cfg: Config, peft: str, loss: str, variant: str, checkpoint: Path | None
) -> Run:
    """The run of one matrix member: `tea.sampling`, the member's loss and TEA variant, the PEFT method's schedule;
    val watched, the final state tested once. The checkpoint's fingerprint leaves out `tea.matrix`, so adding a
    member to the matrix does not restart the others."""
    check_member(peft, loss, variant)
    t = cfg.tea
    schedule = schedule_of(cfg, method_key(member_name(peft, loss, variant)), peft_schedule(peft, t))
    lt = data.transformed(model.backbone.normalization)
    sampler = make_sampler(t.sampling, lt.train.targets, cfg.seed)
    loader = make_loader(lt.train, schedule.batch_size, sampler, cfg.data.num_workers)
    objective = tea_objective(build_objective(loss, lt.train_counts, cfg), build_tea(lt.train_counts, cfg, variant))
    name = member_name(peft, loss, variant)
    return classifier_run(
        model,
        loader,
        objective,
        schedule,
        lt,
        checkpoint=checkpoint,
        resume=t.resume,
        name=name,
        settings=run_settings(
            cfg.model_copy(update={"tea": t.model_copy(update={"matrix": TEAMatrixConfig()})}), data, member=name
        ),
    )


def train_member(
    model: PEFTClassifier,
    data: LTData,
    cfg: Config,
    peft: str,
    loss: str,
    variant: str,
    checkpoint: Path | None,
    test: bool = True,
) -> FitResult:
    """`fit(member_run(...))`: the member's final state, tested once (never with `test=False`: `lptlib.tune`)."""
    return fit(member_run(model, data, cfg, peft, loss, variant, checkpoint), test=test)


@torch.no_grad()
def inference_latency(
    model: nn.Module, images: torch.Tensor, repeats: int = 20, device: torch.device | None = None
) -> float:
    """Median milliseconds per image of `model(images)` over `repeats` timed calls, after two warm-up calls."""
    device = device or default_device()
    model.to(device).eval()
    x = images.to(device)
    times = []
    for i in range(repeats + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast(device):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times) / len(x)


# ------------------------------------------------------------------------------ one seed of the stage
GROUPS = ("overall", "many", "medium", "few")


def member_task(
    cfg: Config, data: LTData, peft: str, loss: str, variant: str, checkpoint: str | None = None, test: bool = True
) -> dict:
    """One matrix member of `cfg.seed`, a task of `lptlib.pool.run_tasks`: the backbone built from `cfg`, the member
    trained for its fixed schedule (`train_member`, resumed from `checkpoint` as `tea.resume` says) and its
    inference timed. Returns {"name", "row": `FitResult.row` + peft / loss / tea, "history",
    "latency_ms_per_image"} (the latency stays out of the row: timings vary between runs)."""
    check_member(peft, loss, variant)
    backbone = create_backbone(getattr(cfg.backbones, cfg.tea.backbone))
    model = build_model(backbone, data, cfg, peft)
    result = train_member(model, data, cfg, peft, loss, variant, Path(checkpoint) if checkpoint else None, test)
    if not test:  # a learning-rate grid: val only, no timing
        return {"name": member_name(peft, loss, variant), "row": result.row(count_trainable(model))}
    images = next(iter(make_loader(data.transformed(backbone.normalization, augment=False).test, 64)))[0]
    return {
        "name": member_name(peft, loss, variant),
        "row": {**result.row(count_trainable(model)), "peft": peft, "loss": loss, "tea": variant},
        "history": result.history,
        "latency_ms_per_image": inference_latency(model, images, repeats=cfg.tea.latency_batches),
    }


@torch.no_grad()
def zero_shot_row(backbone: Backbone, data: LTData, cfg: Config, batch_size: int = 512) -> dict | None:
    """Zero-shot CLIP with `tea.templates`, where the text-initialised heads start: a metrics row (test accuracy by
    group, per class and the confusion counts; `val_*` on the val split; 0 trainable parameters), or None for a
    visual-only backbone."""
    if not backbone.is_vision_language:
        return None
    check_classnames(data.classnames, data.num_classes)
    device = default_device()
    lt = data.transformed(backbone.normalization, augment=False)
    val, test = lt.eval_loaders(batch_size)
    model = ZeroShotCLIP(backbone, data.classnames, cfg.tea.templates).to(device)
    m, _ = evaluate(model, test, device, lt, desc="zero-shot test")
    row = {k: m[k] for k in (*GROUPS, "class_mean", "per_class", "confusion") if k in m}
    row["trainable_params"] = 0
    if val is not None:
        v, _ = evaluate(model, val, device, lt, desc="zero-shot val")
        row.update({f"val_{g}": v[g] for g in GROUPS})
    return row
