"""The TEA recipe (docs/methods.md#backbones-and-peft-modules, docs/methods.md#tea; TEA is **our reading** of its
abstract): its `tea` section, one member of the ablation matrix {PEFT} x {loss} x {TEA variant} (the PEFT model with
a text-initialised cosine head, trained with the loss and TEA's training-only parts, `lptlib.objectives`, for a
fixed schedule; the final state is tested once and its inference timed), the task that trains a member of one seed
in a worker process (`member_task`, for `lptlib.pool.run_tasks`), zero-shot CLIP, and the report over seeds
(per-member mean / std, TEA's gains with paired t intervals, the best member per PEFT method chosen on val)."""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from lptlib.data import LTData, build_transforms, make_loader, make_sampler
from lptlib.data.samplers import Sampling
from lptlib.engine import FitResult, Run, Schedule, autocast, classifier_run, evaluate, fit, predict, run_settings
from lptlib.models.backbones import Backbone, Role, create_backbone
from lptlib.models.blocks import PromptForm
from lptlib.models.heads import ZeroShotCLIP, check_classnames, text_head_weights
from lptlib.models.peft import PEFTClassifier, count_trainable
from lptlib.objectives import TEA, TEA_VARIANTS, AGCLConfig, build_loss, tea_objective
from lptlib.report.claims import paired_interval, seed_summary, verdict
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
    from matplotlib.figure import Figure

    from lptlib.config import Config

PEFT_METHODS = ("vpt_deep", "adaptformer", "lora")
TEA_LOSSES = ("ce", "la", "bs", "agcl")
ZERO_SHOT_KEY = "zero_shot_clip"


class TEAMatrixConfig(Section):
    """`tea.matrix`: the members the stage `tea` trains for each seed."""

    peft: tuple[Literal["vpt_deep", "adaptformer", "lora"], ...] = Field(
        PEFT_METHODS, description="PEFT methods of the TEA matrix"
    )
    loss: tuple[Literal["ce", "la", "bs", "agcl"], ...] = Field(
        ("la",), description="losses of the matrix (all: ce, la, bs, agcl)"
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
    # One schedule per PEFT method, 5 epochs. The miniature's learning rates are the val-chosen values of the
    # learning-rate grid, the same size for every method (docs/tuning.md, `python -m lptlib.tune`).
    vpt_deep: Schedule = Field(Schedule(epochs=5, lr=0.025), description="vpt_deep schedule")
    adaptformer: Schedule = Field(Schedule(epochs=5, lr=0.0025), description="adaptformer schedule")
    lora: Schedule = Field(Schedule(epochs=5, lr=0.0125), description="lora schedule")
    latency_batches: int = Field(20, ge=1, description="batches of the inference-latency measurement")
    matrix: TEAMatrixConfig = Field(TEAMatrixConfig(), description="the members the stage `tea` trains per seed")
    resume: Resume = "auto"

    _resume = field_validator("resume")(resume_ok)
    _templates = field_validator("templates")(templates_ok)


def member_name(peft: str, loss: str, variant: str) -> str:
    """The member's name: e.g. 'lora-la-pea_pg_tec' (its metrics key is `method_key(name)`)."""
    return f"{peft}-{loss}-{variant}"


def method_key(name: str) -> str:
    """The key of a member's row in `metrics/tea/seed_<s>.json`: e.g. 'tea/lora-la-pea_pg_tec'."""
    return f"tea/{name}"


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
    val watched, the final state tested once. The checkpoint's fingerprint leaves out `tea.matrix`, so adding a
    member to the matrix does not restart the others."""
    check_member(peft, loss, variant)
    t = cfg.tea
    schedule = getattr(t, peft)
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
    _, test_tf = build_transforms(cfg.data, backbone.normalization)
    images = next(iter(make_loader(data.test.with_transform(test_tf), 64)))[0]
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


# ------------------------------------------------------------------------------ the report over seeds
SUMMARY_METRICS = (*GROUPS, "val_overall")


def seed_file(metrics_dir: str | Path, seed: int) -> Path:
    """`metrics_dir/seed_<seed>.json`, the file of the stage `tea@<seed>`."""
    return Path(metrics_dir) / f"seed_{seed}.json"


def load_members(metrics_dir: str | Path, matrix: TEAMatrixConfig, seeds: Sequence[int]) -> pd.DataFrame:
    """One row per member and seed (columns member, seed, peft, loss, tea and the row's numbers; per-class
    accuracies and confusions left out) from `metrics_dir/seed_<s>.json` for every seed of `seeds` and every member
    of `matrix`, plus zero-shot CLIP (member 'zero_shot_clip', no peft / loss / tea) where the files have it. A
    missing seed file or member is an error naming the stage to run."""
    import pandas as pd

    missing = [s for s in seeds if not seed_file(metrics_dir, s).is_file()]
    if missing:
        raise FileNotFoundError(
            f"no TEA metrics for seed(s) {', '.join(map(str, missing))} in {metrics_dir} "
            f"({', '.join(seed_file(metrics_dir, s).name for s in missing)}); run them first "
            f"({', '.join(f'`dvc repro tea@{s}`' for s in missing)})"
        )
    names = [member_name(*m) for m in matrix_members(matrix)]
    rows = []
    for s in seeds:
        metrics = json.loads(seed_file(metrics_dir, s).read_text())
        absent = [n for n in names if method_key(n) not in metrics]
        if absent:
            raise ValueError(
                f"{seed_file(metrics_dir, s)} has no metrics for member(s) {', '.join(absent)} of tea.matrix "
                f"(written for another matrix); re-run it (`dvc repro tea@{s}`)"
            )
        keys = ([ZERO_SHOT_KEY] if ZERO_SHOT_KEY in metrics else []) + [method_key(n) for n in names]
        for key in keys:
            row = {k: v for k, v in metrics[key].items() if k not in ("per_class", "confusion")}
            member = key.removeprefix("tea/")
            rows.append({"peft": None, "loss": None, "tea": None, **row, "member": member, "seed": s})
    return pd.DataFrame(rows)


def member_summary(members: pd.DataFrame) -> dict[str, dict]:
    """Per member (zero-shot included): peft, loss, tea, trainable parameters, the seeds and, for each of
    `SUMMARY_METRICS` every seed has, the per-seed values with their mean and sample std (`seed_summary`)."""
    import pandas as pd

    out = {}
    for name, g in members.groupby("member", sort=False):
        first = g.iloc[0]
        entry = {k: None if pd.isna(first[k]) else first[k] for k in ("peft", "loss", "tea")}
        entry.update(trainable_params=int(first["trainable_params"]), seeds=[int(s) for s in g["seed"]])
        for m in SUMMARY_METRICS:
            if m in g and g[m].notna().all():
                values = [float(v) for v in g[m]]
                entry[m] = {**seed_summary(values), "values": values}
        out[str(name)] = entry
    return out


def tea_gains(members: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """TEA's gain per class group: each TEA variant minus the same PEFT method and loss without TEA, paired on the
    seeds both have, in percentage points: the per-seed differences (`diffs`), their mean, std and Student t
    interval (`paired_interval`: low, high) and the verdict (`verdict`). One row per (peft, loss, tea, group);
    empty when the matrix has no 'none' variant."""
    import pandas as pd

    columns = ["peft", "loss", "tea", "group", "seeds", "diffs", "n", "mean", "std", "low", "high", "verdict"]
    m = members[members["peft"].notna()]
    base = m[m["tea"] == "none"]
    rows = []
    for (peft, loss, variant), g in m[m["tea"] != "none"].groupby(["peft", "loss", "tea"], sort=False):
        b = base[(base["peft"] == peft) & (base["loss"] == loss)].set_index("seed")
        g = g.set_index("seed")
        seeds = sorted(set(g.index) & set(b.index))
        if not seeds:
            continue
        for group in GROUPS:
            iv = paired_interval(100 * g.loc[seeds, group], 100 * b.loc[seeds, group], confidence)
            rows.append(
                {
                    "peft": peft,
                    "loss": loss,
                    "tea": variant,
                    "group": group,
                    "seeds": [int(s) for s in seeds],
                    **{k: iv[k] for k in ("diffs", "n", "mean", "std", "low", "high")},
                    "verdict": verdict(iv["low"], iv["high"]),
                }
            )
    return pd.DataFrame(rows, columns=columns)


def best_by_val(members: pd.DataFrame, tea_only: bool = False) -> dict[str, str | None]:
    """Per PEFT method, the member with the highest mean val accuracy over its seeds (`val_overall`; test accuracy
    never takes part; a tie goes to the first in matrix order); among the TEA variants only with `tea_only`. None
    where there is no val split."""
    m = members[members["peft"].notna()]
    if tea_only:
        m = m[m["tea"] != "none"]
    out: dict[str, str | None] = {}
    for peft, g in m.groupby("peft", sort=False):
        if "val_overall" not in g or g["val_overall"].isna().any():
            out[str(peft)] = None
            continue
        val = g.groupby("member", sort=False)["val_overall"].mean()
        out[str(peft)] = str(val.index[int(val.to_numpy().argmax())])
    return out


def plot_gains(gains: pd.DataFrame, title: str = "TEA's gain over the plain PEFT model") -> Figure:
    """`tea_gains` as a figure: one panel per PEFT method and loss; per class group and TEA variant the per-seed
    differences (dots) and their mean with the Student t interval (bar), in percentage points."""
    from matplotlib.figure import Figure

    settings = list(dict.fromkeys(zip(gains["peft"], gains["loss"])))
    variants = list(dict.fromkeys(gains["tea"]))
    cols = max(1, min(3, len(settings)))
    rows = max(1, -(-len(settings) // cols))
    fig = Figure(figsize=(3.8 * cols, 3.0 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, sharey=True, squeeze=False)
    width = 0.7 / max(1, len(variants))
    for ax, (peft, loss) in zip(axes.flat, settings):
        for j, variant in enumerate(variants):
            sel = gains[(gains["peft"] == peft) & (gains["loss"] == loss) & (gains["tea"] == variant)]
            for i, group in enumerate(GROUPS):
                r = sel[sel["group"] == group]
                if r.empty:
                    continue
                r = r.iloc[0]
                x = i + (j - (len(variants) - 1) / 2) * width
                ax.plot([x] * len(r["diffs"]), r["diffs"], "o", color=f"C{j}", alpha=0.35, ms=3)
                if r["low"] is not None and not math.isnan(r["low"]):
                    ax.vlines(x, r["low"], r["high"], color=f"C{j}", lw=2)
                ax.plot([x], [r["mean"]], "D", color=f"C{j}", ms=5, label=variant if i == 0 else None)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(GROUPS)), GROUPS)
        ax.set_title(f"{peft} + {loss}")
        ax.set_ylabel("accuracy gain (points)")
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(settings) :]:
        ax.set_visible(False)
    axes.flat[0].legend(title="per seed (dots), mean and 95% t interval", fontsize=7, title_fontsize=7)
    fig.suptitle(title)
    return fig


def plot_members(members: pd.DataFrame, title: str = "TEA matrix: test accuracy over seeds") -> Figure:
    """Test accuracy of every member (zero-shot CLIP first, when present) per class group: each seed a dot, the
    mean a bar with the sample std."""
    from matplotlib.figure import Figure

    names = list(dict.fromkeys(members["member"]))
    fig = Figure(figsize=(12.0, 1.2 + 0.35 * len(names)), layout="constrained")
    axes = fig.subplots(1, len(GROUPS), sharey=True)
    for ax, group in zip(axes, GROUPS):
        for y, name in enumerate(names):
            v = 100 * members.loc[members["member"] == name, group].astype(float).to_numpy()
            std = float(v.std(ddof=1)) if len(v) > 1 else 0.0
            ax.barh(y, v.mean(), xerr=std, color="C7" if name == ZERO_SHOT_KEY else "C0", alpha=0.45, capsize=2)
            ax.plot(v, [y] * len(v), "o", color="black", ms=3)
        ax.set_title(group)
        ax.set_xlabel("test accuracy (%)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(names)), names, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(title)
    return fig
