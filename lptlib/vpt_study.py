"""The preliminary VPT study (LPT Sec. 3; docs/methods.md#the-preliminary-vpt-study): linear probing vs VPT-deep, each with
instance-balanced and class-balanced sampling (Table 1), and the features of the frozen vs the
VPT-tuned backbone (LDA figure, Table 2)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lptlib.analysis import distance_ratio, knn_accuracy
from lptlib.config import Config, TrainConfig, to_dict
from lptlib.data import LTData, build_transforms, eval_loaders, make_loader, make_sampler
from lptlib.data.datasets import ImageDataset, cap_per_class
from lptlib.engine import FitResult, fit, predict, run_settings
from lptlib.models.backbones import Backbone
from lptlib.models.peft import PEFTClassifier, count_trainable
from lptlib.utils import default_device

METHODS = ("linear_probe", "vpt_deep")


def row_name(method: str, sampling: str) -> str:
    """Table 1 row key, e.g. 'vpt_deep/class_balanced'."""
    return f"{method}/{sampling}"


@dataclass
class Row:
    model: PEFTClassifier
    result: FitResult

    def metrics(self) -> dict:
        return self.result.row(count_trainable(self.model))


def train_classifier(
    model: PEFTClassifier,
    data: LTData,
    sampling: str,
    train: TrainConfig,
    cfg: Config,
    checkpoint: Path | None,
    resume: str = "auto",
    desc: str = "train",
) -> FitResult:
    """Cross-entropy training of `model.tuner` with the given sampling; selection on val, test once."""
    train_tf, test_tf = build_transforms(cfg.data, model.backbone.normalization)
    lt = data.with_transforms(train_tf, test_tf)
    workers = cfg.data.num_workers
    train_loader = make_loader(lt.train, train.batch_size, make_sampler(sampling, lt.train.targets, cfg.seed), workers)
    val_loader, test_loader = eval_loaders(lt, train.eval_batch_size, workers)

    def cross_entropy(m: PEFTClassifier, batch, epoch: int) -> torch.Tensor:
        return F.cross_entropy(m(batch[0]), batch[1])

    return fit(
        model,
        train_loader,
        val_loader,
        test_loader,
        cross_entropy,
        epochs=train.epochs,
        lr=train.lr,
        weight_decay=train.weight_decay,
        momentum=train.momentum,
        warmup_epochs=train.warmup_epochs,
        shot_counts=lt.shot_counts,
        convention=cfg.data.shot_convention,
        checkpoint=checkpoint,
        resume=resume,
        desc=desc,
        settings=run_settings(
            cfg, data, run=desc, sampling=sampling, schedule=to_dict(train), prompt_length=model.prompt_length
        ),
    )


def run_table1(backbone: Backbone, data: LTData, cfg: Config, checkpoint_dir: Path) -> dict[str, Row]:
    """Train every Table 1 row: {linear probe, VPT-deep} x the configured sampling modes."""
    study = cfg.vpt_study
    rows = {}
    for method in METHODS:
        for sampling in study.samplings:
            name = row_name(method, sampling)
            torch.manual_seed(cfg.seed)
            model = PEFTClassifier(
                backbone,
                data.num_classes,
                prompt_length=study.prompt_length if method == "vpt_deep" else 0,
                prompt_form=study.prompt_form,
                head=study.head,
                cosine_scale=study.cosine_scale,
            )
            result = train_classifier(
                model,
                data,
                sampling,
                getattr(study, method),
                cfg,
                checkpoint_dir / f"{name.replace('/', '-')}.pt",
                study.resume,
                desc=name,
            )
            rows[name] = Row(model, result)
    return rows


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
