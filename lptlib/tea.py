"""TEA on CLIP PEFT (docs/methods.md#backbones-and-peft-modules, docs/methods.md#tea; TEA is **our reading** of its abstract): one member of the ablation
matrix {PEFT} x {loss} x {TEA variant} — build the PEFT model with a text-initialised cosine head, train it
with the loss and TEA's training-only parts, select on val, test once, and time its inference."""

from __future__ import annotations

import json
import re
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from lptlib.config import PEFT_METHODS, TEA_LOSSES, TEA_VARIANTS, Config, ConfigError
from lptlib.data import LTData, build_transforms, eval_loaders, make_loader, make_sampler
from lptlib.engine import FitResult, autocast, fit, predict, run_settings
from lptlib.losses import build_loss
from lptlib.models.backbones import Backbone
from lptlib.models.heads import text_head_weights
from lptlib.models.peft import PEFTClassifier
from lptlib.models.tea import TEA
from lptlib.utils import default_device

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


#: a class "name" that is an identifier: a WordNet id (ImageNet folders) or a number (iNaturalist folders)
_ID_NAME = re.compile(r"n\d{8}|\d+")


def check_classnames(classnames: list[str] | None, num_classes: int) -> None:
    """The text-initialised head needs one real name per class, in label order (not empty, not a 'class N'
    placeholder, not an id such as the WordNet ids ImageNet's folders are named by)."""
    fix = "give them with data.classnames_file (one name per line, in label order)"
    if not classnames:
        raise ConfigError(f"the text-initialised head needs the class names and the dataset has none; {fix}")
    if len(classnames) != num_classes:
        raise ConfigError(f"{len(classnames)} class names for {num_classes} classes; {fix}")
    blank = [i for i, n in enumerate(classnames) if not str(n).strip() or str(n).strip() == f"class {i}"]
    if blank:
        raise ConfigError(
            f"class names missing for labels {blank[:5]}{' ...' if len(blank) > 5 else ''} "
            f"(empty or a 'class N' placeholder); {fix}"
        )
    ids = [i for i, n in enumerate(classnames) if _ID_NAME.fullmatch(str(n).strip())]
    if ids:  # the image-folder names of ImageNet (WordNet ids) and iNaturalist (category ids) are not names
        raise ConfigError(
            f"class names for labels {ids[:5]}{' ...' if len(ids) > 5 else ''} are ids, not names "
            f"(e.g. {str(classnames[ids[0]]).strip()!r}: a WordNet or numeric category id, as the image "
            f"folders are named); {fix}"
        )


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


def tea_objective(loss: nn.Module, tea: TEA):
    """loss_fn(model, (x, y), epoch): the classification loss on TEA's classifier input, plus TEC."""

    def loss_fn(model: PEFTClassifier, batch, epoch: int) -> torch.Tensor:
        x, y = batch
        out = model.forward_features(x)
        head = model.tuner["head"]
        features, tec = tea(out["cls"], out["patch"], y, head.weight)
        cosine = head.cosine(model.dropout(features))
        return loss(cosine if loss.takes_cosine else head.scale * cosine, y) + tec

    return loss_fn


def build_tea(class_counts, cfg: Config, variant: str) -> TEA:
    t = cfg.tea
    return TEA(
        class_counts, variant, temperature=t.temperature, mix=t.mix, gate_max=t.gate_max, tec_weight=t.tec_weight
    )


def train_member(
    model: PEFTClassifier, data: LTData, cfg: Config, peft: str, loss: str, variant: str, checkpoint: Path | None
) -> FitResult:
    """Train one matrix member with `tea.sampling`; selection on val, test once."""
    check_member(peft, loss, variant)
    t = cfg.tea
    train = getattr(t, peft)
    train_tf, test_tf = build_transforms(cfg.data, model.backbone.normalization)
    lt = data.with_transforms(train_tf, test_tf)
    workers = cfg.data.num_workers
    loader = make_loader(lt.train, train.batch_size, make_sampler(t.sampling, lt.train.targets, cfg.seed), workers)
    val, test = eval_loaders(lt, train.eval_batch_size, workers)
    objective = tea_objective(build_objective(loss, lt.train_counts, cfg), build_tea(lt.train_counts, cfg, variant))
    return fit(
        model,
        loader,
        val,
        test,
        objective,
        epochs=train.epochs,
        lr=train.lr,
        weight_decay=train.weight_decay,
        momentum=train.momentum,
        warmup_epochs=train.warmup_epochs,
        shot_counts=lt.shot_counts,
        convention=cfg.data.shot_convention,
        checkpoint=checkpoint,
        resume=t.resume,
        desc=member_name(peft, loss, variant),
        settings=run_settings(cfg, data, member=member_name(peft, loss, variant)),
    )


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
