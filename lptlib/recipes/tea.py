"""The TEA recipe (docs/methods.md#backbones-and-peft-modules, docs/methods.md#tea; TEA is **our reading** of its
abstract): its `tea` section, and one member of the ablation matrix {PEFT} x {loss} x {TEA variant}: the PEFT
model with a text-initialised cosine head, trained with the loss and TEA's training-only parts
(`lptlib.objectives`), selected on val, tested once, and its inference timed."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from lptlib.data import LTData, build_transforms, eval_loaders, make_loader, make_sampler
from lptlib.data.samplers import Sampling
from lptlib.engine import FitResult, Run, Schedule, autocast, classifier_run, fit, predict, run_settings
from lptlib.models.backbones import Backbone, Role
from lptlib.models.blocks import PromptForm
from lptlib.models.heads import check_classnames, text_head_weights
from lptlib.models.peft import PEFTClassifier
from lptlib.objectives import TEA, TEA_VARIANTS, AGCLConfig, build_loss, tea_objective
from lptlib.schema import (
    ConfigError,
    Field,
    Resume,
    Section,
    Templates,
    distinct,
    field_validator,
    resume_ok,
    templates_ok,
)
from lptlib.utils import default_device

if TYPE_CHECKING:
    import pandas as pd

    from lptlib.config import Config

PEFT_METHODS = ("vpt_deep", "adaptformer", "lora")
TEA_LOSSES = ("ce", "la", "bs", "agcl")


class TEAMatrixConfig(Section):
    """`tea.matrix`: the members of the DVC matrix stage `tea`."""

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
        return distinct(v, "value")


class TEAConfig(Section):
    """The `tea` section."""

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
    vpt_deep: Schedule = Field(Schedule(epochs=5, lr=0.1), description="vpt_deep schedule")
    adaptformer: Schedule = Field(Schedule(epochs=5, lr=0.01), description="adaptformer schedule")
    lora: Schedule = Field(Schedule(epochs=5, lr=0.05), description="lora schedule")
    latency_batches: int = Field(20, ge=1, description="batches of the inference-latency measurement")
    matrix: TEAMatrixConfig = Field(TEAMatrixConfig(), description="the members of the DVC matrix stage")
    resume: Resume = "auto"

    _resume = field_validator("resume")(resume_ok)
    _templates = field_validator("templates")(templates_ok)


if TYPE_CHECKING:
    import pandas as pd


def member_name(peft: str, loss: str, variant: str) -> str:
    """The member's key, as DVC's matrix joins it: e.g. 'lora-la-pea_pg_tec'."""
    return f"{peft}-{loss}-{variant}"


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
        backbone,
        data.num_classes,
        prompt_length=t.prompt_length if peft == "vpt_deep" else 0,
        prompt_form=t.prompt_form,
        adapter=peft == "adaptformer",
        bottleneck=t.bottleneck,
        lora_rank=t.lora_rank if peft == "lora" else 0,
        head="cosine",
        cosine_scale=t.cosine_scale,
    )
    head = model.tuner["head"]
    if t.head_init == "text":
        head.weight.data.copy_(text_head_weights(backbone, data.classnames, t.templates))
    elif t.head_init == "class_mean":
        _, test_tf = build_transforms(cfg.data, backbone.normalization)
        head.weight.data.copy_(
            class_mean_weights(
                backbone, data.train.with_transform(test_tf), data.num_classes, num_workers=cfg.data.num_workers
            )
        )
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
    selection on val, test once."""
    check_member(peft, loss, variant)
    t = cfg.tea
    schedule = getattr(t, peft)
    train_tf, test_tf = build_transforms(cfg.data, model.backbone.normalization)
    lt = data.with_transforms(train_tf, test_tf)
    workers = cfg.data.num_workers
    loader = make_loader(lt.train, schedule.batch_size, make_sampler(t.sampling, lt.train.targets, cfg.seed), workers)
    val, test = eval_loaders(lt, schedule.eval_batch_size, workers)
    objective = tea_objective(build_objective(loss, lt.train_counts, cfg), build_tea(lt.train_counts, cfg, variant))
    name = member_name(peft, loss, variant)
    return classifier_run(
        model,
        loader,
        val,
        test,
        objective,
        schedule,
        shot_counts=lt.shot_counts,
        convention=cfg.data.shot_convention,
        checkpoint=checkpoint,
        resume=t.resume,
        name=name,
        settings=run_settings(cfg, data, member=name),
    )


def train_member(
    model: PEFTClassifier, data: LTData, cfg: Config, peft: str, loss: str, variant: str, checkpoint: Path | None
) -> FitResult:
    """`fit(member_run(...))`."""
    return fit(member_run(model, data, cfg, peft, loss, variant, checkpoint))


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


# ------------------------------------------------------------------------------------- the report
GROUPS = ("overall", "many", "medium", "few")


def load_members(metrics_dir: str | Path, matrix) -> "pd.DataFrame":
    """One row per member of `tea.matrix` from `metrics_dir/<member>.json` (a missing member is an error; files of
    members no longer in the matrix are ignored and named)."""
    import pandas as pd

    metrics_dir = Path(metrics_dir)
    names = [member_name(p, lo, v) for p in matrix.peft for lo in matrix.loss for v in matrix.tea]
    missing = [n for n in names if not (metrics_dir / f"{n}.json").is_file()]
    if missing:
        raise FileNotFoundError(
            f"no metrics for {len(missing)} matrix member(s) in {metrics_dir}: "
            f"{', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}; run them first "
            "(`dvc repro tea`)"
        )
    stale = sorted(p.stem for p in metrics_dir.glob("*.json") if p.stem not in names)
    if stale:
        print(f"ignoring metrics of members not in tea.matrix: {', '.join(stale)}")
    rows = []
    for n in names:
        row = json.loads((metrics_dir / f"{n}.json").read_text())[n]
        rows.append({"member": n, **{k: v for k, v in row.items() if k not in ("per_class", "confusion")}})
    return pd.DataFrame(rows).set_index("member")


def tea_gains(members: "pd.DataFrame") -> "pd.DataFrame":
    """Accuracy of every TEA variant minus the same PEFT and loss without TEA, per class group (long format:
    peft, loss, tea, group, gain); empty when the matrix has no 'none' variant."""
    import pandas as pd

    base = members[members["tea"] == "none"].set_index(["peft", "loss"])
    rows = []
    for _, r in members[members["tea"] != "none"].iterrows():
        if (r["peft"], r["loss"]) not in base.index:
            continue
        b = base.loc[(r["peft"], r["loss"])]
        rows += [
            {"peft": r["peft"], "loss": r["loss"], "tea": r["tea"], "group": g, "gain": r[g] - b[g]} for g in GROUPS
        ]
    return pd.DataFrame(rows, columns=["peft", "loss", "tea", "group", "gain"])
