"""The VPT study's cached-feature probes and Table 1 across processes."""

import numpy as np
import pytest
import torch
from conftest import make_tiny_lt

from lptlib.config import parse
from lptlib.data import build_data, datasets
from lptlib.data.samplers import ShuffleSampler
from lptlib.engine import fit
from lptlib.models import create_backbone
from lptlib.models.backbones import BackboneConfig
from lptlib.recipes import vpt_study
from lptlib.recipes.vpt_study import FeatureCache, ViewBatches, build_vpt_model, probe_run, table1_run
from lptlib.utils import seed_everything


def deterministic_transforms(cfg, norm):
    _, test = vpt_study_build_transforms(cfg, norm)
    return test, test


vpt_study_build_transforms = datasets.build_transforms


def tiny_cfg(**study):
    run = {"epochs": 2, "batch_size": 4, "eval_batch_size": 16, "lr": 0.1, "warmup_epochs": 0.5, "val_every": 1}
    return parse(
        seed=3,
        data={"n_max": 12, "imbalance": 4, "val_per_class": 2, "max_test_per_class": 3},
        backbones={"visual": {"name": "vit-mini", "weights": "random"}},
        vpt_study={"linear_probe": run, "vpt_deep": run, "prompt_length": 2, "feature_views": 1, **study},
    )


def test_view_batches_use_view_e_mod_v_in_the_samplers_epoch_order():
    feats = torch.arange(3 * 5 * 2, dtype=torch.float32).reshape(3, 5, 2)
    cache = FeatureCache(feats, torch.arange(5), None, None, feats[0], torch.arange(5))
    batches = ViewBatches(cache, ShuffleSampler(5, seed=1), 2)
    assert len(batches) == 3
    for epoch in (0, 1, 4):
        got = list(batches(epoch))
        sampler = ShuffleSampler(5, seed=1)
        sampler.set_epoch(epoch)
        order = torch.as_tensor(list(sampler))
        assert torch.equal(torch.cat([y for _, y in got]), order)
        assert torch.equal(torch.cat([x for x, _ in got]), feats[epoch % 3][order])


def test_a_probe_on_cached_features_equals_end_to_end_linear_probing(monkeypatch):
    """With one deterministic view, training the head on cached CLS features is the end-to-end linear probe
    (prompt length 0, frozen backbone): the same batches, initialisation and updates."""
    monkeypatch.setattr(datasets, "build_transforms", deterministic_transforms)
    cfg = tiny_cfg()
    data = build_data(cfg.data, cfg.seed)
    backbone = create_backbone(BackboneConfig("vit-mini", "random"))
    cache = vpt_study.frozen_cache(backbone, data, cfg)
    probe = probe_run(cache, "class_balanced", "ce", cfg, data, "probe")
    cached = fit(probe)

    torch.manual_seed(cfg.seed)
    model = build_vpt_model(backbone, data.num_classes, cfg.vpt_study, prompted=False)
    full = fit(table1_run(model, data, "class_balanced", cfg.vpt_study.linear_probe, cfg, None, "never"))
    torch.testing.assert_close(probe.model.tuner["head"].weight, model.tuner["head"].weight, rtol=1e-4, atol=1e-5)
    assert torch.equal(cached.test_predictions, full.test_predictions)
    assert cached.test["overall"] == full.test["overall"]


def test_la_probe_shifts_its_training_logits_by_the_log_prior():
    cfg = tiny_cfg(la_tau=1.0)
    counts = np.array([8, 2])
    labels = torch.as_tensor(np.repeat([0, 1], counts))
    feats = torch.randn(1, len(labels), 4)
    cache = FeatureCache(feats, labels, None, None, feats[0], labels)
    run = probe_run(cache, "instance_balanced", "la", cfg, make_tiny_lt(("a", "b"), counts=tuple(counts)), "la")
    x, y = next(iter(run.batches(0)))
    logits = run.model(x)
    prior = torch.as_tensor(counts / counts.sum(), dtype=torch.float32)
    expected = torch.nn.functional.cross_entropy(logits + prior.log(), y)
    torch.testing.assert_close(run.objective(run.model, (x, y), 0), expected)


def test_table1_rows_are_the_same_in_two_worker_processes_as_in_this_one(tmp_path):
    cfg = tiny_cfg()
    seed_everything(cfg.seed)  # as a notebook and a worker do before building the (here random) backbone
    data = build_data(cfg.data, cfg.seed)
    backbone = create_backbone(cfg.backbones.visual)
    one = vpt_study.run_table1(backbone, data, cfg, tmp_path / "one", workers=1).rows
    two = vpt_study.run_table1(backbone, data, cfg, tmp_path / "two", workers=2).rows
    assert list(one) == [
        "linear_probe/instance_balanced",
        "linear_probe/class_balanced",
        "linear_probe_la/instance_balanced",
        "crt/class_balanced",
        "vpt_deep/instance_balanced",
        "vpt_deep/class_balanced",
        "vpt_deep_replica/class_balanced",
    ]
    for name in one:
        for key in ("overall", "many", "medium", "few", "val_overall", "per_class", "epochs"):
            assert one[name][key] == pytest.approx(two[name][key], nan_ok=True), (name, key)
