"""The recipe of the preliminary VPT study (LPT Sec. 3; docs/methods.md#the-preliminary-vpt-study): its `vpt_study`
section; linear probing vs VPT-deep, each with instance-balanced and class-balanced sampling (Table 1), and the
features of the frozen vs the VPT-tuned backbone (LDA figure, Table 2)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lptlib.data import LTData, make_loader, make_sampler
from lptlib.data.datasets import ImageDataset, cap_per_class
from lptlib.engine import Optim, Run, Schedule, classifier_run, fit, predict, run_settings, schedule_of
from lptlib.measure.analysis import distance_ratio, knn_accuracy
from lptlib.measure.metrics import prior_corrected, shot_accuracy
from lptlib.models.backbones import Backbone, create_backbone
from lptlib.models.heads import build_head
from lptlib.models.peft import PEFTClassifier, count_trainable
from lptlib.objectives import build_loss
from lptlib.pool import run_tasks
from lptlib.sections import (  # noqa: F401 (the row keys are re-exported: their home for the recipes' users)
    CRT_CB,
    LP_CB,
    LP_IB,
    LP_LA_IB,
    TABLE1_ROWS,
    VPT_CB,
    VPT_CB_REPLICA,
    VPT_IB,
    VPTStudyConfig,
    row_name,
)
from lptlib.utils import default_device

if TYPE_CHECKING:
    from lptlib.config import Config


# the row keys Table 1 writes are declared in lptlib.sections (LP_IB ... VPT_CB_REPLICA, imported above)
#: Table 2's feature extractors: the frozen backbone, and every VPT-deep model of Table 1 under its row key
FROZEN = "frozen"


def feature_key(extractor: str) -> str:
    """The claims' key of one feature extractor's Table 2 row, e.g. 'features/vpt_deep/instance_balanced'."""
    return f"features/{extractor}"


def cross_entropy(model: PEFTClassifier, batch, epoch: int) -> torch.Tensor:
    """Plain cross-entropy on the model's logits: the VPT study's objective."""
    return F.cross_entropy(model(batch[0]), batch[1])


def build_vpt_model(backbone: Backbone, num_classes: int, study: VPTStudyConfig, prompted: bool = True):
    """The Table 1 model: VPT-deep prompts (or none: linear probing end to end) and the study's head."""
    return PEFTClassifier(
        backbone,
        num_classes,
        prompt_length=study.prompt_length if prompted else 0,
        prompt_form=study.prompt_form,
        head=study.head,
        cosine_scale=study.cosine_scale,
    )


def table1_run(
    model: PEFTClassifier,
    data: LTData,
    sampling: str,
    schedule: Schedule,
    cfg: Config,
    checkpoint: Path | None,
    resume: str = "auto",
    name: str = "train",
    seed: int | None = None,
) -> Run:
    """The run of one end-to-end Table 1 row: cross-entropy with the given sampling for a fixed schedule; the
    final state is tested once. The sampler is seeded with `seed` (default: the run's seed)."""
    lt = data.transformed(model.backbone.normalization)
    sampler = make_sampler(sampling, lt.train.targets, cfg.seed if seed is None else seed)
    loader = make_loader(lt.train, schedule.batch_size, sampler, cfg.data.num_workers)
    return classifier_run(
        model,
        loader,
        cross_entropy,
        schedule,
        lt,
        checkpoint=checkpoint,
        resume=resume,
        name=name,
        settings=run_settings(cfg, data, run=name),
    )


# --------------------------------------------------------------------------- cached-feature probes
@dataclass
class FeatureCache:
    """Final CLS features of one representation: `train` (views, N, D) of augmented views of every training image,
    `val` / `test` (N, D) with the test transform, and the labels of each split."""

    train: torch.Tensor
    train_labels: torch.Tensor
    val: torch.Tensor | None
    val_labels: torch.Tensor | None
    test: torch.Tensor
    test_labels: torch.Tensor


@torch.no_grad()
def feature_cache(
    model: PEFTClassifier | Backbone, data: LTData, cfg: Config, views: int, batch_size: int, test: bool = True
) -> FeatureCache:
    """Cache `model`'s CLS features: `views` augmented passes over the train set (the training transform, drawn
    from the torch RNG, so a seed fixes them), val and (unless `test=False`) test once."""
    backbone = model.backbone if isinstance(model, PEFTClassifier) else model
    lt = data.transformed(backbone.normalization)
    device = default_device()
    model.to(device).eval()

    def cls(x: torch.Tensor) -> torch.Tensor:
        return model.forward_features(x)["cls"]

    def run(ds, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
        return predict(cls, make_loader(ds, batch_size, num_workers=cfg.data.num_workers), device, desc=desc)

    train = [run(lt.train, f"train features, view {v + 1}/{views}") for v in range(views)]
    val = run(lt.val, "val features") if lt.val is not None else (None, None)
    tst = run(lt.test, "test features") if test else (torch.empty(0), torch.empty(0, dtype=torch.long))
    return FeatureCache(torch.stack([f for f, _ in train]), train[0][1], *val, *tst)


class FeatureProbe(nn.Module):
    """A linear classifier on cached features; its only trainable tensors live in `tuner` (the head)."""

    def __init__(self, dim: int, num_classes: int, head: str = "linear", cosine_scale: float = 20.0):
        super().__init__()
        self.tuner = nn.ModuleDict({"head": build_head(head, dim, num_classes, cosine_scale)})

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.tuner["head"](features)


class ViewBatches:
    """Training batches of cached features: the sampler's order of epoch e (`set_epoch(e)`), features of view
    e mod V, so every epoch sees another augmentation of each image."""

    def __init__(self, cache: FeatureCache, sampler, batch_size: int):
        self.cache, self.sampler, self.batch_size = cache, sampler, batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __call__(self, epoch: int):
        self.sampler.set_epoch(epoch)
        order = torch.as_tensor(list(self.sampler))
        view = self.cache.train[epoch % len(self.cache.train)]
        for i in range(0, len(order), self.batch_size):
            idx = order[i : i + self.batch_size]
            yield view[idx], self.cache.train_labels[idx]


def probe_run(
    cache: FeatureCache,
    sampling: str,
    loss: str,
    cfg: Config,
    data: LTData,
    name: str,
    schedule: Schedule | None = None,
) -> Run:
    """The run of a classifier on cached features (linear probe, LA probe, cRT): the study's head re-initialised
    from the run's seed, `loss` ('ce' or 'la': CE(z + tau log pi)) under `sampling`, SGD by `schedule`
    (default `vpt_study.linear_probe`); val and test are the cached val / test features."""
    study = cfg.vpt_study
    schedule = schedule or study.linear_probe
    torch.manual_seed(cfg.seed)
    model = FeatureProbe(cache.train.shape[-1], data.num_classes, study.head, study.cosine_scale)
    counts = np.bincount(cache.train_labels.numpy(), minlength=data.num_classes)
    criterion = build_loss(loss, counts, **({"tau": study.la_tau} if loss == "la" else {}))
    sampler = make_sampler(sampling, cache.train_labels.numpy(), cfg.seed)
    batches = ViewBatches(cache, sampler, schedule.batch_size)

    def objective(m: FeatureProbe, batch, epoch: int) -> torch.Tensor:
        return criterion(m(batch[0]), batch[1])

    def evaluation(m: FeatureProbe, split: str) -> tuple[dict, torch.Tensor]:
        feats, labels = (cache.val, cache.val_labels) if split == "val" else (cache.test, cache.test_labels)
        with torch.no_grad():
            logits = m(feats.to(next(m.parameters()).device)).float().cpu()
        return shot_accuracy(logits.argmax(1), labels, data.shot_counts, groups=data.groups), logits

    def correction(val_logits: torch.Tensor, test_logits: torch.Tensor) -> dict:
        counts = np.bincount(cache.train_labels.numpy(), minlength=data.num_classes)
        return prior_corrected(val_logits, cache.val_labels, test_logits, cache.test_labels, counts, data.groups)

    return Run(
        name,
        model,
        batches,
        objective,
        schedule.epochs,
        Optim.sgd(schedule, len(batches)),
        evaluate=evaluation,
        prior_correction=correction if cache.val is not None else None,
        has_val=cache.val is not None,
        val_every=schedule.val_every,
        device=default_device(),
    )


def probe_jobs(caches: dict[str, FeatureCache], data: LTData, cfg: Config) -> list[tuple[str, str, str, str]]:
    """Table 1's cached-feature rows as (row key, representation, sampling, loss): the linear probe under every
    sampling mode, the logit-adjusted linear probe (instance-balanced) and cRT (class-balanced, on the
    instance-balanced VPT-deep representation, when cached)."""
    jobs = [(row_name("linear_probe", s), FROZEN, s, "ce") for s in cfg.vpt_study.samplings]
    if np.bincount(caches[FROZEN].train_labels.numpy(), minlength=data.num_classes).min() > 0:
        jobs.append((LP_LA_IB, FROZEN, "instance_balanced", "la"))
    else:  # log pi is undefined for a class without training images (only in down-sampled smoke tests)
        print("linear_probe_la skipped: some classes have no training image, so the log prior is undefined")
    if VPT_IB in caches:
        jobs.append((CRT_CB, VPT_IB, "class_balanced", "ce"))
    return jobs


def probe_row(caches: dict[str, FeatureCache], job: tuple[str, str, str, str], data: LTData, cfg: Config, test: bool):
    """One cached-feature row (`probe_jobs`), trained with its schedule (`arm_lr` over `vpt_study.linear_probe`)."""
    name, rep, sampling, loss = job
    run = probe_run(caches[rep], sampling, loss, cfg, data, name, schedule_of(cfg, name, cfg.vpt_study.linear_probe))
    result = fit(run, test=test)
    return {**result.row(count_trainable(run.model)), "history": result.history}


def probe_rows(caches: dict[str, FeatureCache], data: LTData, cfg: Config, test: bool = True) -> dict[str, dict]:
    """Table 1's cached-feature rows (`probe_jobs`) by row key."""
    return {job[0]: probe_row(caches, job, data, cfg, test) for job in probe_jobs(caches, data, cfg)}


def probe_seed_rows(cfg: Config, data: LTData, test: bool = True) -> dict[str, dict]:
    """Table 1's cached-feature rows on the frozen backbone alone (linear probe per sampling mode, LA probe), for
    the extra seeds of `seeds.vpt_study_probes`: the same code and seeding as the `vpt_study` stage's probes."""
    return probe_rows({FROZEN: frozen_cache_task(cfg, data, test=test)}, data, cfg, test=test)


# --------------------------------------------------------------------------- tasks (one process each)
def vpt_deep_row(
    backbone: Backbone,
    data: LTData,
    cfg: Config,
    sampling: str,
    checkpoint: str | None,
    cache_views: int = 0,
    test: bool = True,
    replica: bool = False,
) -> dict:
    """One VPT-deep row of Table 1 for `cfg.seed`: {'row', 'history', 'tuner'} and, with `cache_views`, the tuned
    representation's `cache` (for cRT). `replica`: the A/A control's second run (row `VPT_CB_REPLICA` for
    class-balanced sampling): the same split, its initialisation, augmentation and sampler seeded with
    seed + `vpt_study.replica_seed_offset`."""
    study = cfg.vpt_study
    if replica and study.replica_seed_offset is None:
        raise ValueError("a VPT-deep replica needs vpt_study.replica_seed_offset (it is null)")
    name = row_name("vpt_deep_replica" if replica else "vpt_deep", sampling)
    seed = cfg.seed + study.replica_seed_offset if replica else cfg.seed
    torch.manual_seed(seed)  # the same initialisation for every sampling mode (paired); another for the replica
    model = build_vpt_model(backbone, data.num_classes, study)
    ckpt = Path(checkpoint) if checkpoint else None
    schedule = schedule_of(cfg, row_name("vpt_deep", sampling), study.vpt_deep)  # the replica: VPT-deep's rate
    run = table1_run(model, data, sampling, schedule, cfg, ckpt, study.resume, name, seed)
    result = fit(run, test=test)
    out = {
        "row": result.row(count_trainable(model)),
        "history": result.history,
        "tuner": {k: v.detach().cpu().clone() for k, v in model.tuner.state_dict().items()},
    }
    if cache_views:
        torch.manual_seed(cfg.seed + 1)
        out["cache"] = feature_cache(model, data, cfg, cache_views, study.vpt_deep.eval_batch_size, test=test)
    return out


def frozen_cache(backbone: Backbone, data: LTData, cfg: Config, test: bool = True) -> FeatureCache:
    """The frozen backbone's feature cache for `cfg.seed`: the linear probes' input."""
    torch.manual_seed(cfg.seed + 1)  # the augmentation draws of the cached views
    study = cfg.vpt_study
    return feature_cache(backbone, data, cfg, study.feature_views, study.vpt_deep.eval_batch_size, test=test)


def vpt_deep_task(cfg: Config, data: LTData, **kwargs) -> dict:
    """`vpt_deep_row` as a task of `lptlib.pool.run_tasks`: the backbone built from `cfg`."""
    return vpt_deep_row(create_backbone(getattr(cfg.backbones, cfg.vpt_study.backbone)), data, cfg, **kwargs)


def frozen_cache_task(cfg: Config, data: LTData, test: bool = True) -> FeatureCache:
    """`frozen_cache` as a task of `lptlib.pool.run_tasks`: the backbone built from `cfg`."""
    return frozen_cache(create_backbone(getattr(cfg.backbones, cfg.vpt_study.backbone)), data, cfg, test=test)


@dataclass
class Table1:
    """Table 1 of one seed: metrics rows by row name, and the VPT-deep models (tuned state loaded) by sampling."""

    rows: dict[str, dict]
    models: dict[str, PEFTClassifier]


def run_table1(
    backbone: Backbone, data: LTData, cfg: Config, checkpoint_dir: Path | None, workers: int = 1, test: bool = True
) -> Table1:
    """Every Table 1 row of `cfg.seed`: VPT-deep under each sampling mode (end to end, same initialisation), then
    the linear probe (each sampling), the LA probe and cRT on cached features, and (unless
    `vpt_study.replica_seed_offset` is null) the A/A control's replica of class-balanced VPT-deep. With `workers` > 1
    the VPT-deep
    runs and the frozen feature cache are computed in parallel processes that rebuild `backbone` and `data` from
    `cfg` (so pass the ones `cfg` describes); with 1, in this process from the objects given. Rows are the final
    states of fixed schedules; the test split is evaluated once per row."""
    study = cfg.vpt_study
    jobs = []
    for sampling in study.samplings:
        ckpt = checkpoint_dir / f"{row_name('vpt_deep', sampling).replace('/', '-')}.pt" if checkpoint_dir else None
        crt = study.feature_views if sampling == "instance_balanced" else 0
        jobs.append(dict(sampling=sampling, checkpoint=str(ckpt) if ckpt else None, cache_views=crt, test=test))
    if study.replica_seed_offset is not None and "class_balanced" in study.samplings:
        ckpt = checkpoint_dir / f"{VPT_CB_REPLICA.replace('/', '-')}.pt" if checkpoint_dir else None
        jobs.append(dict(sampling="class_balanced", checkpoint=str(ckpt) if ckpt else None, test=test, replica=True))
    if workers > 1:
        tasks = [dict(cfg=cfg, kind="vpt", **j) for j in jobs] + [dict(cfg=cfg, kind="frozen", test=test)]
        results = run_tasks(_table1_task, tasks, workers)
    else:
        results = [vpt_deep_row(backbone, data, cfg, **j) for j in jobs] + [frozen_cache(backbone, data, cfg, test)]
    caches = {"frozen": results[-1]}
    rows, models = {}, {}
    for job, out in zip(jobs, results[:-1], strict=True):
        if job.get("replica"):
            rows[VPT_CB_REPLICA] = {**out["row"], "history": out["history"]}
            continue
        name = row_name("vpt_deep", job["sampling"])
        rows[name] = {**out["row"], "history": out["history"]}
        model = build_vpt_model(backbone, data.num_classes, study)
        model.tuner.load_state_dict(out["tuner"])
        models[job["sampling"]] = model
        if "cache" in out:
            caches[name] = out["cache"]
    probes = probe_rows(caches, data, cfg, test=test)
    order = [row_name("linear_probe", s) for s in study.samplings]
    order += [LP_LA_IB, CRT_CB]
    order += [row_name("vpt_deep", s) for s in study.samplings] + [VPT_CB_REPLICA]
    merged = {**probes, **rows}
    return Table1({k: merged[k] for k in order if k in merged}, models)


def _table1_task(cfg: Config, data: LTData, kind: str, **kwargs):
    return (vpt_deep_task if kind == "vpt" else frozen_cache_task)(cfg, data, **kwargs)


def feature_sample(dataset: ImageDataset, per_class: int, seed: int) -> ImageDataset:
    """Up to `per_class` images of every class, drawn at random (fixed seed)."""
    order = np.random.default_rng(seed).permutation(len(dataset))
    keep = order[cap_per_class(dataset.targets[order], per_class)]
    return dataset.subset(np.sort(keep))


@torch.no_grad()
def cls_features(
    model: PEFTClassifier | Backbone,
    dataset: ImageDataset,
    batch_size: int,
    num_workers: int = 0,
    desc: str = "features",
) -> tuple[np.ndarray, np.ndarray]:
    """Final CLS features (after the final norm) of `dataset` through `model`."""
    device = default_device()
    model.to(device).eval()
    feats, labels = predict(
        lambda x: model.forward_features(x)["cls"],
        make_loader(dataset, batch_size, num_workers=num_workers),
        device,
        desc=desc,
    )
    return feats.numpy(), labels.numpy()


def feature_table(features: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], k: int) -> dict[str, dict]:
    """Table 2 per feature extractor: mean R, D, gamma on the target test sample and cosine k-NN
    accuracy (bank: the long-tailed train set, queries: the target test sample)."""
    table = {}
    for name, sets in features.items():
        test_f, test_y = sets["target_test"]
        bank_f, bank_y = sets["target_train"]
        stats = distance_ratio(test_f, test_y)
        table[name] = {
            "R": stats["R"],
            "D": stats["D"],
            "gamma": stats["gamma"],
            "knn_acc": knn_accuracy(bank_f, bank_y, test_f, test_y, k),
            "knn_k": k,
        }
    return table
