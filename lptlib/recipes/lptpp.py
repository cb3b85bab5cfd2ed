"""The LPT++ recipe (arXiv 2409.11323), **our reading** of its abstract (docs/methods.md#lpt-mixture-of-experts; the full text is not public).

- The *universal long-tailed adaptation module* is LPT's shared + group prompts with AdaptFormer adapters in
  every block (`lptlib.models.peft.LPT(adapter=True)`; LPT is the same code with adapters off).
- Each *expert* is one backbone with that module: the visual-only one (`backbones.visual`) and the
  vision-language one (`backbones.vision_language`, text-initialised cosine head).
- Phase 1 trains shared prompts + adapters + head per expert; phase 2 the group prompts + keys + head with the
  adapters and shared prompts frozen (both with A-GCL and dual sampling, as LPT; the experts train in parallel
  worker processes, `phase_task` for `lptlib.pool.run_tasks`); phase 3 caches the frozen
  experts' features and logits on train / val / test once, then trains the **MoE scorer** on the cache only:
  a(x) = softmax(MLP([f_1(x); ...; f_E(x)])), p(y|x) = sum_e a_e(x) softmax(z_e(x) / T_e), T_e learnable,
  with class-balanced sampling (`lptlib.models.moe.MoEScorer`). Every run reports its final state (fixed
  schedules); phase 3's rows (`phase3_rows`) are the metrics-file rows of each expert, the uniform average and the
  scorer.

The experts' module settings (prompts, pool, A-GCL, dual sampling) are the `lpt` section's: LPT++ is LPT plus
adapters, so it reads `cfg.lpt` (one direction: the LPT recipe never reads `lptpp`).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from lptlib.data import LTData, make_loader
from lptlib.data.samplers import ClassAwareSampler, IndexBatches
from lptlib.engine import FitResult, Optim, Run, fit, predict, schedule_of
from lptlib.measure.metrics import shot_accuracy
from lptlib.models.backbones import Backbone, create_backbone
from lptlib.models.heads import check_classnames, text_head_weights
from lptlib.models.moe import MoEScorer
from lptlib.models.peft import LPT
from lptlib.recipes.lpt import build_lpt, train_stage
from lptlib.schema import (
    without_resume,
)
from lptlib.sections import MOE_ROW, UNIFORM_ROW, expert_row, phase_row
from lptlib.utils import code_digest, default_device, progress, read_safetensors, save_safetensors

if TYPE_CHECKING:
    from lptlib.config import Config


SPLITS = ("train", "val", "test")


class ExpertError(RuntimeError):
    """An expert checkpoint or cache cannot be used; the message names the file and the fix."""


def build_expert(role: str, data: LTData, cfg: Config, phase: int, backbone: Backbone | None = None) -> LPT:
    """The LPT++ expert on `backbones.<role>` (or on `backbone`, e.g. random weights in `lptlib.preflight`) for phase 1
    or 2 (phase 3 uses the phase-2 model)."""
    backbone = backbone or create_backbone(getattr(cfg.backbones, role))
    model = build_lpt(
        backbone, data.num_classes, cfg.lpt, stage=min(phase, 2), adapter=True, bottleneck=cfg.lptpp.bottleneck
    )
    if phase == 1 and backbone.is_vision_language:
        check_classnames(data.classnames, data.num_classes)
        model.tuner["head"].weight.data.copy_(text_head_weights(backbone, data.classnames, cfg.lptpp.templates))
    return model


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_expert(model: LPT, path: str | Path, data: LTData, phase: int) -> Path:
    """The expert's trainable state (safetensors) with its backbone, phase and class list as metadata."""
    meta = {
        "backbone": model.backbone.name,
        "phase": str(phase),
        "classnames": json.dumps(list(data.classnames)),
        "dataset": data.name,
    }
    return save_safetensors(model.tuner.state_dict(), path, meta)


def load_expert(model: LPT, path: str | Path, data: LTData, phase: int) -> None:
    """Load the phase-`phase` state of an expert into `model`; a missing file, another backbone, another class
    list or label order is an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ExpertError(
            f"expert checkpoint {path} does not exist; run LPT++ phase {phase} first (`dvc repro lptpp_phase{phase}`)"
        )
    state, meta = read_safetensors(path, ExpertError, "expert checkpoint")
    if meta.get("backbone") != model.backbone.name:
        raise ExpertError(
            f"expert checkpoint {path} was trained on backbone {meta.get('backbone')!r}, this expert "
            f"uses {model.backbone.name!r}"
        )
    try:
        names = json.loads(meta.get("classnames", "null"))
    except (TypeError, ValueError):
        raise ExpertError(
            f"expert checkpoint {path} has damaged metadata (its class list is not JSON); delete it and re-run "
            "the phase that writes it"
        ) from None
    if names != list(data.classnames):
        raise ExpertError(
            f"expert checkpoint {path} was trained on another class list or label order "
            f"({len(names or [])} classes: {(names or [])[:4]} ...) than this dataset "
            f"({data.num_classes}: {list(data.classnames)[:4]} ...); re-run its phases on this data"
        )
    if meta.get("phase") != str(phase):
        raise ExpertError(f"expert checkpoint {path} is from phase {meta.get('phase')}, expected phase {phase}")
    if phase == 1:
        model.load_stage1_state(state, source=f"expert checkpoint {path}")
    else:
        try:
            model.tuner.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ExpertError(f"expert checkpoint {path} does not fit this expert: {e}") from None


def train_phase(
    phase: int,
    role: str,
    data: LTData,
    cfg: Config,
    out_dir: str | Path,
    phase1_dir: str | Path | None = None,
    test: bool = True,
) -> tuple[LPT, FitResult]:
    """Train one expert's phase 1 or 2 (phase 2 starts from `phase1_dir/<role>.safetensors`) with its schedule
    (`lptpp.phase1` / `lptpp.phase2`, the rate from `arm_lr[phase_row(role, phase)]` where the grid set one);
    saves `out_dir/<role>.safetensors` and per-epoch checkpoints under `out_dir/checkpoints/`; `test=False` (the
    learning-rate grid) never evaluates the test split."""
    model = build_expert(role, data, cfg, phase)
    if phase == 2:
        load_expert(model, Path(phase1_dir) / f"{role}.safetensors", data, phase=1)
    schedule = schedule_of(cfg, phase_row(role, phase), cfg.lptpp.phase1 if phase == 1 else cfg.lptpp.phase2)
    out_dir = Path(out_dir)
    checkpoint = out_dir / "checkpoints" / f"{role}.pt"
    result = train_stage(model, data, cfg, checkpoint, schedule, resume=cfg.lptpp.resume, test=test)
    save_expert(model, out_dir / f"{role}.safetensors", data, phase)
    return model, result


def phase_task(
    cfg: Config,
    data: LTData,
    phase: int,
    role: str,
    out_dir: str,
    phase1_dir: str | None = None,
    test: bool = True,
) -> dict:
    """One expert's phase 1 or 2 for `cfg.seed`, a task of `lptlib.pool.run_tasks`: `train_phase` run. Returns
    {"row": `FitResult.row` + backbone and module_params (all tensors of the module), "history"}."""
    model, result = train_phase(phase, role, data, cfg, out_dir, phase1_dir=phase1_dir, test=test)
    trainable = sum(p.numel() for p in model.tuner.parameters() if p.requires_grad)
    row = result.row(trainable)
    row.update(backbone=model.backbone.name, module_params=sum(p.numel() for p in model.tuner.parameters()))
    return {"row": row, "history": result.history}


# ------------------------------------------------------------------------------------------ phase 3
@dataclass
class ExpertCache:
    """One frozen expert's outputs per split: CLS features (N, D), logits s cos (N, C) and labels (N,)."""

    features: dict[str, torch.Tensor]
    logits: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor]


def build_cache(
    model: LPT,
    role: str,
    data: LTData,
    cfg: Config,
    path: str | Path,
    expert_file: str | Path,
    batch_size: int = 512,
    splits: tuple[str, ...] = SPLITS,
) -> ExpertCache:
    """The expert's outputs on `splits` (default every split), computed once (test transforms, no augmentation)
    and kept in `path`; the learning-rate grid caches train and val only.

    The cache is keyed like a checkpoint: the code digest, the resolved config, the data signature, the expert
    file's digest and the splits. An existing cache is reused only when its key matches; otherwise it is rebuilt
    (the reason is printed)."""
    path, expert_file = Path(path), Path(expert_file)
    key = {
        "code": code_digest(),
        "config": without_resume(cfg),
        "data": data.signature(),
        "expert": _file_digest(expert_file),
        "splits": list(splits),
    }
    if path.is_file():
        tensors, meta = read_safetensors(path, ExpertError, "expert cache")
        found = json.loads(meta.get("key", "{}"))
        if found == key:
            print(f"{role}: reusing the cache {path}")
            return _unpack(tensors)
        changed = [k for k in key if found.get(k) != key[k]]
        print(f"{role}: the cache {path} was built from other {', '.join(changed)}; rebuilding it")
    device = default_device()
    model.to(device).eval()
    seen = data.transformed(model.backbone.normalization, augment=False)  # un-augmented outputs of every split
    scale = model.tuner["head"].scale
    tensors = {}
    for split in splits:
        ds = getattr(seen, split)
        if ds is None:
            continue
        loader = make_loader(ds, batch_size, num_workers=cfg.data.num_workers)
        out, labels = predict(
            lambda x: torch.cat([(o := model.forward_all(x))["features"], scale * o["cosine"]], 1),
            loader,
            device,
            desc=f"cache {role} {split}",
        )
        d = out.shape[1] - data.num_classes
        tensors.update(
            {
                f"{split}.features": out[:, :d].contiguous(),
                f"{split}.logits": out[:, d:].contiguous(),
                f"{split}.labels": labels.contiguous(),
            }
        )
    save_safetensors(tensors, path, {"key": json.dumps(key, sort_keys=True), "role": role})
    return _unpack(tensors)


def _unpack(tensors: dict[str, torch.Tensor]) -> ExpertCache:
    parts: dict[str, dict[str, torch.Tensor]] = {"features": {}, "logits": {}, "labels": {}}
    for key, t in tensors.items():
        split, kind = key.split(".")
        parts[kind][split] = t
    return ExpertCache(**parts)


def scorer_run(caches: list[ExpertCache], cfg: Config) -> Run:
    """The run of the MoE scorer on the cached outputs only: class-balanced batches of the train cache, AdamW at a
    constant learning rate (`lptpp.scorer.lr`, or `arm_lr[MOE_ROW]` where the grid set one), NLL of the mixture,
    for `lptpp.scorer.epochs` epochs; the val cache (mean per-class accuracy) is watched when there is one, and the
    final state is kept."""
    sc = cfg.lptpp.scorer
    lr = cfg.arm_lr.get(MOE_ROW, sc.lr)
    torch.manual_seed(cfg.seed)
    labels = caches[0].labels["train"]
    for c in caches[1:]:
        if not torch.equal(c.labels["train"], labels):
            raise ExpertError("the experts' caches hold different train labels; rebuild them from the same data")
    scorer = MoEScorer([c.features["train"].shape[1] for c in caches], sc.hidden)
    sampler = ClassAwareSampler(labels.numpy(), num_samples_cls=cfg.lpt.num_samples_cls, seed=cfg.seed)

    def take(idx: torch.Tensor) -> tuple:
        return [c.features["train"][idx] for c in caches], [c.logits["train"][idx] for c in caches], labels[idx]

    def objective(model: MoEScorer, batch, epoch: int) -> torch.Tensor:
        features, logits, y = batch
        probs, _ = model(features, logits)
        return F.nll_loss(probs.clamp_min(1e-12).log(), y)

    def evaluation(model: MoEScorer, split: str) -> tuple[dict, torch.Tensor]:
        device = next(model.parameters()).device
        with torch.no_grad():
            p, _ = model([c.features[split].to(device) for c in caches], [c.logits[split].to(device) for c in caches])
        pred, y = p.argmax(1).cpu(), caches[0].labels[split]
        return {"overall": float(np.mean([(pred[y == k] == k).float().mean().item() for k in y.unique()]))}, p.cpu()

    return Run(
        "MoE scorer",
        scorer,
        IndexBatches(sampler, sc.batch_size, take),
        objective,
        sc.epochs,
        Optim("adamw", lr, sc.weight_decay, decay="constant"),
        evaluate=evaluation,
        has_val="val" in caches[0].labels,
    )


def train_scorer(caches: list[ExpertCache], cfg: Config, test: bool = True) -> tuple[MoEScorer, dict]:
    """`fit(scorer_run(...))`; returns the scorer (its final state) and {'seconds', 'history', 'val_best_epoch'}
    (the epoch val would have picked: information only); `test=False` never evaluates the test cache."""
    run = scorer_run(caches, cfg)
    start = time.perf_counter()
    result = fit(run, test=test)
    info = {"seconds": time.perf_counter() - start, "history": result.history, "val_best_epoch": result.val_best_epoch}
    return run.model, info


def evaluate_rows(
    caches: dict[str, ExpertCache], scorer: MoEScorer, data: LTData, split: str = "test"
) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """shot_accuracy (by `data`'s shot groups) of each expert alone, the uniform average of their probabilities and the MoE scorer on
    `split`; and the scorer's gate weights per sample."""
    names = list(caches)
    labels = caches[names[0]].labels[split]
    feats = [caches[n].features[split] for n in names]
    logits = [caches[n].logits[split] for n in names]
    preds = {f"expert: {n}": z.argmax(1) for n, z in zip(names, logits)}
    if len(names) > 1:
        preds["uniform average"] = torch.stack([torch.softmax(z, 1) for z in logits]).mean(0).argmax(1)
    with torch.no_grad():
        probs, gates = scorer(feats, logits)
    preds["MoE scorer"] = probs.argmax(1)
    rows = {k: shot_accuracy(p, labels, data.shot_counts, groups=data.groups) for k, p in preds.items()}
    return rows, {"gates": gates.numpy(), "labels": labels.numpy()}


def method_key(name: str) -> str:
    """The metrics key of an `evaluate_rows` entry: 'expert: visual' -> 'lptpp/visual', 'uniform average' ->
    'lptpp/uniform', 'MoE scorer' -> 'lptpp/moe'."""
    return {"uniform average": UNIFORM_ROW, "MoE scorer": MOE_ROW}.get(name) or expert_row(
        name.removeprefix("expert: ")
    )


def phase3_rows(
    caches: dict[str, ExpertCache], models: dict[str, LPT], scorer: MoEScorer, data: LTData
) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """The metrics rows of phase 3, keyed by `method_key`: test accuracy by group (per class and the confusion
    counts too), `val_*` on the val cache when there is one (what a choice between the methods may read), and the
    trainable parameters (an expert: its module; the average: all modules; the scorer: all modules + the scorer).
    Also the test gate weights per sample (`evaluate_rows`)."""
    test, out = evaluate_rows(caches, scorer, data, "test")
    has_val = "val" in next(iter(caches.values())).labels
    val = evaluate_rows(caches, scorer, data, "val")[0] if has_val else {}
    module = {role: sum(p.numel() for p in m.tuner.parameters()) for role, m in models.items()}
    params = {f"expert: {role}": n for role, n in module.items()}
    params["uniform average"] = sum(module.values())
    params["MoE scorer"] = sum(module.values()) + sum(p.numel() for p in scorer.parameters())
    rows = {}
    for name, m in test.items():
        row = {k: m[k] for k in ("overall", "many", "medium", "few", "class_mean", "per_class", "confusion") if k in m}
        if name in val:
            row.update({f"val_{g}": val[name][g] for g in ("overall", "many", "medium", "few")})
        row["trainable_params"] = params[name]
        rows[method_key(name)] = row
    return rows, out


def gate_weights_by_group(gates: np.ndarray, labels: np.ndarray, groups: list[str], experts: list[str]) -> dict:
    """Mean gate weight of each expert over the test images of each class group (many / medium / few)."""
    groups = np.asarray(groups)
    out = {}
    for g in ("many", "medium", "few"):
        mask = np.isin(labels, np.flatnonzero(groups == g))
        if mask.any():
            out[g] = {e: float(gates[mask, i].mean()) for i, e in enumerate(experts)}
    return out


def cache_all(
    roles: list[str],
    data: LTData,
    cfg: Config,
    phase2_dir: str | Path | dict[str, str | Path],
    cache_dir: str | Path,
    splits: tuple[str, ...] = SPLITS,
) -> tuple[dict[str, ExpertCache], dict[str, LPT]]:
    """Load every phase-2 expert (checking class lists) from `phase2_dir` (one folder, or a folder per role) and
    cache its outputs on `splits`; returns caches and models."""
    caches, models = {}, {}
    for role in progress(roles, desc="experts"):
        model = build_expert(role, data, cfg, phase=2)
        folder = phase2_dir[role] if isinstance(phase2_dir, dict) else phase2_dir
        expert_file = Path(folder) / f"{role}.safetensors"
        load_expert(model, expert_file, data, phase=2)
        cache = Path(cache_dir) / f"{role}.safetensors"
        caches[role] = build_cache(model, role, data, cfg, cache, expert_file, splits=splits)
        models[role] = model
    return caches, models
