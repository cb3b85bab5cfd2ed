"""The recipe of the preliminary VPT study (LPT Sec. 3; docs/methods.md#the-preliminary-vpt-study): its `vpt_study`
section; linear probing vs VPT-deep, each with instance-balanced and class-balanced sampling (Table 1), and the
features of the frozen vs the VPT-tuned backbone (LDA figure, Table 2)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F

from lptlib.data import LTData, build_transforms, eval_loaders, make_loader, make_sampler
from lptlib.data.datasets import ImageDataset, cap_per_class
from lptlib.data.samplers import SAMPLING_MODES, Sampling
from lptlib.engine import FitResult, Run, Schedule, classifier_run, fit, predict, run_settings
from lptlib.models.backbones import Backbone, Role
from lptlib.models.blocks import PromptForm
from lptlib.models.peft import PEFTClassifier, count_trainable
from lptlib.report.analysis import distance_ratio, knn_accuracy
from lptlib.schema import Field, Resume, Section, distinct, field_validator, resume_ok
from lptlib.utils import default_device

if TYPE_CHECKING:
    from lptlib.config import Config


class VPTStudyConfig(Section):
    """The `vpt_study` section."""

    backbone: Role = Field("visual", description="which `backbones` entry is studied")
    prompt_length: int = Field(10, ge=0, description="VPT-deep prompt tokens per block (l_p)")
    prompt_form: PromptForm = Field(
        "kv", description="kv: prompts in keys/values only (LPT eq. 1); concat: concatenate and strip (same outputs)"
    )
    head: Literal["linear", "cosine"] = Field("linear", description="classifier on the final CLS feature")
    cosine_scale: float = Field(20.0, ge=0.0, description="scale s of a cosine head")
    samplings: tuple[Sampling, ...] = Field(
        SAMPLING_MODES, description="Table 1 columns: instance_balanced, class_balanced"
    )
    # SGD, warm-up then cosine decay per step. Miniature learning rates chosen on the val split (instance-balanced
    # runs): linear probe from {0.05, 0.5, 2.0}, VPT-deep from {0.05, 0.2, 0.5, 1.0, 2.0}.
    linear_probe: Schedule = Field(Schedule(lr=2.0), description="linear probing")
    vpt_deep: Schedule = Field(Schedule(lr=1.0), description="VPT-deep prompt tuning")
    knn_k: int = Field(10, ge=1, description="k of the cosine k-NN accuracy (Table 2)")
    feature_images_per_class: int = Field(100, ge=2, description="images per class whose features LDA and Table 2 use")
    resume: Resume = "auto"

    _resume = field_validator("resume")(resume_ok)

    @field_validator("samplings")
    @classmethod
    def _samplings(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return distinct(v, "sampling mode")


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


def cross_entropy(model: PEFTClassifier, batch, epoch: int) -> torch.Tensor:
    """Plain cross-entropy on the model's logits: the VPT study's objective."""
    return F.cross_entropy(model(batch[0]), batch[1])


def table1_run(
    model: PEFTClassifier,
    data: LTData,
    sampling: str,
    schedule: Schedule,
    cfg: Config,
    checkpoint: Path | None,
    resume: str = "auto",
    name: str = "train",
) -> Run:
    """The run of one Table 1 row: cross-entropy with the given sampling; selection on val, test once."""
    train_tf, test_tf = build_transforms(cfg.data, model.backbone.normalization)
    lt = data.with_transforms(train_tf, test_tf)
    workers = cfg.data.num_workers
    loader = make_loader(lt.train, schedule.batch_size, make_sampler(sampling, lt.train.targets, cfg.seed), workers)
    val_loader, test_loader = eval_loaders(lt, schedule.eval_batch_size, workers)
    return classifier_run(
        model,
        loader,
        val_loader,
        test_loader,
        cross_entropy,
        schedule,
        shot_counts=lt.shot_counts,
        convention=cfg.data.shot_convention,
        checkpoint=checkpoint,
        resume=resume,
        name=name,
        settings=run_settings(cfg, data, run=name),
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
            checkpoint = checkpoint_dir / f"{name.replace('/', '-')}.pt"
            result = fit(table1_run(model, data, sampling, getattr(study, method), cfg, checkpoint, study.resume, name))
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
