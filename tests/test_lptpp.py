"""LPT++ (our reading, docs/methods.md#lpt-mixture-of-experts): the prompts + adapters module (LPT with adapters on), expert checkpoints and
caches, the MoE scorer against a direct computation and phase 3's metrics rows (their errors:
tests/test_reliability.py)."""

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lptlib import config
from lptlib.models import create_backbone
from lptlib.models.backbones import BackboneConfig
from lptlib.models.moe import MoEScorer
from lptlib.models.peft import LPT
from lptlib.recipes.lptpp import (
    ExpertCache,
    build_cache,
    build_expert,
    evaluate_rows,
    gate_weights_by_group,
    load_expert,
    method_key,
    phase3_rows,
    save_expert,
    train_scorer,
)

RANDOM = {
    "visual": {"name": "vit-mini", "weights": "random"},
    "vision_language": {"name": "clip-mini", "weights": "random"},
}


@pytest.fixture(scope="module", params=["vit-mini", "clip-mini"])
def backbone(request):
    torch.manual_seed(0)
    return create_backbone(BackboneConfig(request.param, "random"))


def _perturb(module, std=0.1):
    torch.manual_seed(4)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * std)


def test_adapters_start_as_lpt_and_freeze_in_stage_2(backbone):
    torch.manual_seed(1)
    lpt = LPT(backbone, 5, stage=1, prompt_length=3, share_blocks=3)
    torch.manual_seed(1)
    lptpp = LPT(backbone, 5, stage=1, prompt_length=3, adapter=True, share_blocks=3)
    lpt.eval(), lptpp.eval()  # no head dropout
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(lptpp.forward_train(x)["cosine"], lpt.forward_train(x)["cosine"])
    stage2 = LPT(backbone, 5, stage=2, prompt_length=3, adapter=True, pool_size=4, share_blocks=3)
    assert not any(p.requires_grad for p in stage2.tuner["adapters"].parameters())
    assert any(k.startswith("adapters.") for k in stage2.stage1_state())


def test_block_k_reuse_holds_with_adapters(backbone):
    model = LPT(backbone, 5, stage=2, prompt_length=3, adapter=True, pool_size=4, share_blocks=3).eval()
    _perturb(model.tuner["adapters"])
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        a, b = model.forward_train(x, reuse=True), model.forward_train(x, reuse=False)
    torch.testing.assert_close(a["cosine"], b["cosine"])
    assert torch.equal(a["topk"], b["topk"])


def test_expert_files_round_trip(tmp_path, tiny_lt):
    """A phase-1 expert file loads into the phase-2 expert (a file of another backbone, class list or phase, or a
    missing one: the table of tests/test_reliability.py)."""
    cfg = config.parse(backbones=RANDOM, lpt={"pool_size": 4, "prompt_length": 2})
    data = tiny_lt()
    expert = build_expert("vision_language", data, cfg, phase=1)
    path = save_expert(expert, tmp_path / "vl.safetensors", data, phase=1)
    phase2 = build_expert("vision_language", data, cfg, phase=2)
    load_expert(phase2, path, data, phase=1)
    torch.testing.assert_close(phase2.tuner["head"].weight, expert.tuner["head"].weight)


def test_cache_is_built_once_and_checked(tmp_path, tiny_lt):
    cfg = config.parse(backbones=RANDOM, lpt={"pool_size": 4, "prompt_length": 2})
    data = tiny_lt()
    model = build_expert("visual", data, cfg, phase=2)
    expert_file = save_expert(model, tmp_path / "visual.safetensors", data, phase=2)
    cache = build_cache(model, "visual", data, cfg, tmp_path / "cache.safetensors", expert_file)
    assert cache.features["train"].shape == (18, 128) and cache.logits["test"].shape == (9, 3)
    assert torch.equal(cache.labels["train"], torch.as_tensor(data.train.targets))
    with torch.no_grad():  # the cached logits are the model's predictions (test transform)
        from lptlib.data import build_transforms

        _, tf = build_transforms(cfg.data, model.backbone.normalization)
        x = torch.stack([tf(data.test.load(i)) for i in range(3)])
        torch.testing.assert_close(cache.logits["test"][:3], model(x), rtol=1e-4, atol=1e-4)
    broken = copy.deepcopy(model)
    broken.forward_all = None  # a second call must not run the expert
    again = build_cache(broken, "visual", data, cfg, tmp_path / "cache.safetensors", expert_file)
    assert torch.equal(again.logits["test"], cache.logits["test"])  # (a cache of another split: test_reliability)


def test_moe_scorer_equals_the_mixture_formula():
    torch.manual_seed(0)
    scorer = MoEScorer([4, 6], hidden=5)
    with torch.no_grad():
        scorer.log_temperature.copy_(torch.tensor([0.3, -0.2]))
    f = [torch.randn(3, 4), torch.randn(3, 6)]
    z = [torch.randn(3, 7), torch.randn(3, 7)]
    p, a = scorer(f, z)
    cat = torch.cat([torch.nn.functional.normalize(t, dim=-1) for t in f], 1)
    a_ref = torch.softmax(scorer.mlp(cat), 1)
    t = torch.tensor([0.3, -0.2]).exp()
    p_ref = a_ref[:, :1] * torch.softmax(z[0] / t[0], 1) + a_ref[:, 1:] * torch.softmax(z[1] / t[1], 1)
    torch.testing.assert_close(a, a_ref)
    torch.testing.assert_close(p, p_ref)
    torch.testing.assert_close(p.sum(1), torch.ones(3))


def _synthetic_caches(n_per_class=(60, 20, 8), seed=0):
    """Two experts: 'a' knows classes 0 and 1, 'b' knows class 2; their features say which one to trust."""
    g = torch.Generator().manual_seed(seed)
    caches = {}
    labels = {s: torch.cat([torch.full((n,), c) for c, n in enumerate(n_per_class)]) for s in ("train", "val", "test")}
    for name, knows in (("a", (0, 1)), ("b", (2,))):
        feats, logits = {}, {}
        for s, y in labels.items():
            z = torch.randn(len(y), 3, generator=g)
            right = torch.isin(y, torch.tensor(knows))
            z[right, y[right]] += 6.0
            feats[s] = torch.nn.functional.one_hot(y, 3).float() + 0.1 * torch.randn(len(y), 3, generator=g)
            logits[s] = z
        caches[name] = ExpertCache(feats, logits, labels)
    return caches


def test_scorer_learns_which_expert_to_trust(tiny_lt):
    caches = _synthetic_caches()
    cfg = config.parse(lptpp={"scorer": {"epochs": 40, "lr": 0.01, "batch_size": 32}})
    scorer, info = train_scorer(list(caches.values()), cfg)
    assert info["seconds"] > 0 and len(info["history"]) == 40 and info["val_best_epoch"] in range(40)
    data = tiny_lt(counts=(60, 20, 8))
    rows, out = evaluate_rows(caches, scorer, data)
    assert set(rows) == {"expert: a", "expert: b", "uniform average", "MoE scorer"}
    best = max(rows["expert: a"]["class_mean"], rows["expert: b"]["class_mean"])
    assert rows["MoE scorer"]["class_mean"] > best + 0.15 and rows["MoE scorer"]["overall"] > 0.95
    gates = gate_weights_by_group(out["gates"], out["labels"], ["many", "medium", "few"], ["a", "b"])
    assert gates["many"]["a"] > 0.8 and gates["few"]["b"] > 0.8
    avg = torch.stack([torch.softmax(c.logits["test"], 1) for c in caches.values()]).mean(0).argmax(1)
    y = caches["a"].labels["test"]
    per_class = [(avg[y == k] == k).float().mean().item() for k in range(3)]
    assert rows["uniform average"]["class_mean"] == pytest.approx(np.mean(per_class))


def test_phase3_rows_are_metrics_rows_with_val(tiny_lt):
    """Phase 3's rows: the method keys of the metrics file, test accuracy of the final scorer, val accuracy from the
    val cache, and trainable parameters (expert: its module; average: all modules; scorer: + the scorer)."""
    caches = _synthetic_caches()
    scorer, _ = train_scorer(list(caches.values()), config.parse(lptpp={"scorer": {"epochs": 2}}))
    models = {"a": SimpleNamespace(tuner=torch.nn.Linear(2, 3)), "b": SimpleNamespace(tuner=torch.nn.Linear(4, 1))}
    data = tiny_lt(counts=(60, 20, 8))
    rows, out = phase3_rows(caches, models, scorer, data)
    assert list(rows) == ["lptpp/a", "lptpp/b", "lptpp/uniform", "lptpp/moe"]
    assert method_key("expert: vision_language") == "lptpp/vision_language"
    test, _ = evaluate_rows(caches, scorer, data, "test")
    val, _ = evaluate_rows(caches, scorer, data, "val")
    assert rows["lptpp/moe"]["overall"] == test["MoE scorer"]["overall"]
    assert rows["lptpp/a"]["val_overall"] == val["expert: a"]["overall"] and "val_few" in rows["lptpp/uniform"]
    n_scorer = sum(p.numel() for p in scorer.parameters())
    assert [r["trainable_params"] for r in rows.values()] == [9, 5, 14, 14 + n_scorer]
    assert out["gates"].shape == (88, 2)
