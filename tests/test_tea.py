"""TEA (our reading, docs/methods.md#tea): PEA, the probability gate and TEC against reference computations; training-only
(the trained model predicts through the plain PEFT modules); one member trained in a worker process gives the
in-process row; the report over seeds (mean / std, paired gains and their t intervals, the best member by val).
Bad member names, gate values and class names: the table of tests/test_reliability.py."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from lptlib import config
from lptlib.models import create_backbone
from lptlib.models.backbones import BackboneConfig
from lptlib.models.heads import check_classnames
from lptlib.models.peft import count_trainable
from lptlib.objectives import AGCL, TEA, gate_probabilities, patch_semantics, tea_objective, variant_parts
from lptlib.pool import run_tasks
from lptlib.recipes.tea import (
    build_model,
    build_objective,
    build_tea,
    check_member,
    matrix_members,
    member_name,
    member_task,
    method_key,
)
from lptlib.report.tea import best_by_val, load_members, member_summary, plot_gains, plot_members, tea_gains
from lptlib.sections import TEAMatrixConfig


def test_variants_switch_components():
    assert variant_parts("none") == (False, False, False)
    assert variant_parts("pea") == (True, False, False)
    assert variant_parts("pea_pg") == (True, True, False)
    assert variant_parts("pea_pg_tec") == (True, True, True)


def test_gate_probabilities():
    g = gate_probabilities([500, 50, 5], gate_max=0.5)
    torch.testing.assert_close(g, torch.tensor([0.0, 0.25, 0.5]))
    assert torch.equal(gate_probabilities([7, 7], 1.0), torch.zeros(2))


def test_patch_semantics_matches_a_loop():
    torch.manual_seed(0)
    patch, anchors = torch.randn(3, 5, 8), torch.randn(3, 8)
    u = patch_semantics(patch, anchors, temperature=0.2)
    for b in range(3):
        cos = torch.stack([F.cosine_similarity(patch[b, n], anchors[b], dim=0) for n in range(5)])
        alpha = torch.softmax(cos / 0.2, dim=0)
        torch.testing.assert_close(u[b], (alpha[:, None] * patch[b]).sum(0))


def _inputs(seed=0):
    torch.manual_seed(seed)
    return torch.randn(6, 8), torch.randn(6, 5, 8), torch.tensor([0, 1, 2, 0, 1, 2]), torch.randn(3, 8)


def test_none_is_the_plain_embedding():
    cls, patch, y, w = _inputs()
    feats, tec = TEA([100, 10, 1], "none")(cls, patch, y, w)
    assert torch.equal(feats, cls) and tec.item() == 0


def test_pea_enhances_every_sample_without_the_gate():
    cls, patch, y, w = _inputs()
    feats, tec = TEA([100, 10, 1], "pea", temperature=0.3, mix=0.25)(cls, patch, y, w)
    u = patch_semantics(patch, w[y], 0.3)
    ref = F.normalize(0.75 * F.normalize(cls, dim=-1) + 0.25 * F.normalize(u, dim=-1), dim=-1)
    torch.testing.assert_close(feats, ref)
    assert tec.item() == 0


def test_gate_never_augments_the_head_class_and_always_the_rarest_at_gmax_1():
    cls, patch, y, w = _inputs()
    torch.manual_seed(1)
    feats, _ = TEA([100, 10, 1], "pea_pg", gate_max=1.0)(cls, patch, y, w)
    head, tail = y == 0, y == 2
    assert torch.equal(feats[head], cls[head])
    assert torch.allclose(feats[tail].norm(dim=1), torch.ones(int(tail.sum())))  # e^ is unit-norm
    # the middle class (g = 0.5) is augmented about half the time over many draws
    tea = TEA([100, 10, 1], "pea_pg", gate_max=1.0)
    ym = torch.ones(4000, dtype=torch.long)
    out, _ = tea(torch.randn(4000, 8), torch.randn(4000, 5, 8), ym, w)
    rate = (out.norm(dim=1) - 1).abs().lt(1e-5).float().mean().item()
    assert 0.45 < rate < 0.55


def test_tec_loss_and_its_stop_gradient():
    cls, patch, y, w = _inputs()
    cls.requires_grad_(True)
    patch.requires_grad_(True)
    tea = TEA([100, 10, 1], "pea_pg_tec", gate_max=0.0, tec_weight=2.0)  # gate 0: TEC alone reaches the loss
    feats, tec = tea(cls, patch, y, w)
    u = patch_semantics(patch.detach(), w[y], tea.temperature)
    torch.testing.assert_close(tec, 2.0 * (1 - F.cosine_similarity(cls.detach(), u, dim=-1)).mean())
    tec.backward()
    assert cls.grad.abs().sum() > 0
    assert patch.grad is None or patch.grad.abs().sum() == 0  # stopgrad(u)


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return create_backbone(BackboneConfig("clip-mini", "random"))


@pytest.mark.parametrize("peft", ["vpt_deep", "adaptformer", "lora"])
def test_tea_trained_model_predicts_through_the_plain_modules(clip, peft, tiny_lt):
    """TEA is training-only: after a TEA step the model calls exactly the modules a plain model calls, with the
    same trainable parameters, and its predictions are the plain head on the plain CLS feature."""
    cfg = config.parse(tea={"prompt_length": 2})
    data = tiny_lt()
    models = {}
    for variant in ("none", "pea_pg_tec"):
        torch.manual_seed(0)
        model = build_model(clip, data, cfg, peft)
        objective = tea_objective(build_objective("la", [12, 4, 2], cfg), build_tea([12, 4, 2], cfg, variant))
        x, y = torch.randn(4, 3, 28, 28), torch.tensor([0, 1, 2, 2])
        opt = torch.optim.SGD(model.tuner.parameters(), lr=0.1)
        model.train()
        objective(model, (x, y), 0).backward()
        opt.step()
        models[variant] = model
    calls = {}
    x = torch.randn(2, 3, 28, 28)
    for variant, model in models.items():
        names = {m: n for n, m in model.named_modules()}
        seen = []
        handles = [
            m.register_forward_hook(lambda m, a, o, seen=seen, names=names: seen.append(names[m])) for m in names
        ]
        model.eval()
        with torch.no_grad():
            out = model(x)
            ref = model.tuner["head"](model.forward_features(x)["cls"])
        for h in handles:
            h.remove()
        torch.testing.assert_close(out, ref)
        calls[variant] = seen
    assert calls["none"] == calls["pea_pg_tec"]
    assert count_trainable(models["none"]) == count_trainable(models["pea_pg_tec"])
    assert models["none"].tuner.state_dict().keys() == models["pea_pg_tec"].tuner.state_dict().keys()
    assert not any(isinstance(m, TEA) for m in models["pea_pg_tec"].modules())


def test_agcl_objective_takes_cosines(clip):
    cfg = config.parse(tea={"prompt_length": 1})
    loss = build_objective("agcl", [12, 4, 2], cfg)
    assert isinstance(loss, AGCL) and loss.scale == 25.0 and (loss.gamma_pos, loss.gamma_neg) == (0.5, 8.0)
    cb = build_objective("agcl", [12, 4, 2], config.parse(tea={"sampling": "class_balanced"}))
    assert (cb.gamma_pos, cb.gamma_neg) == (0.0, 4.0)


def test_member_names_and_the_class_mean_head(tiny_lt):
    """Member names as DVC's matrix joins them; a visual-only backbone takes LIFT's class-mean head. (The bad
    names, class names and head inits: the table of tests/test_reliability.py.)"""
    check_member("lora", "bs", "pea_pg")
    check_classnames(["a", "b", "c"], 3)
    assert member_name("lora", "bs", "pea_pg") == "lora-bs-pea_pg"
    vit = create_backbone(BackboneConfig("vit-mini", "random"))
    model = build_model(vit, tiny_lt(), config.parse(tea={"head_init": "class_mean"}), "adaptformer")
    torch.testing.assert_close(model.tuner["head"].weight.norm(dim=1), torch.ones(3))


def test_default_matrix_and_member_keys():
    m = TEAMatrixConfig()
    assert m.loss == ("la",) and m.tea == ("none", "pea_pg_tec")
    assert matrix_members(m)[:2] == [("vpt_deep", "la", "none"), ("vpt_deep", "la", "pea_pg_tec")]
    assert method_key(member_name("lora", "la", "none")) == "tea/lora-la-none"


def test_a_member_trained_in_a_worker_process_gives_the_in_process_row(tmp_path):
    """A `member_task` goes through the worker door (`lptlib.pool.setup`: seed, data of the seed) and builds its
    model from the ready Config: two workers (spawned single-thread processes) give the row and history one
    in-process call gives."""
    cfg = config.parse(
        seed=1,
        data={"n_max": 20, "imbalance": 10, "val_per_class": 2, "max_test_per_class": 2},
        backbones={"vision_language": {"name": "clip-mini", "weights": "random"}},
        tea={"lora": {"epochs": 1, "batch_size": 32}, "latency_batches": 1},
    )

    def task(variant, where):
        ckpt = tmp_path / where / f"{variant}.pt"
        return dict(cfg=cfg, peft="lora", loss="la", variant=variant, checkpoint=str(ckpt))

    alone = run_tasks(member_task, [task("pea_pg_tec", "in_process")], workers=1)[0]
    pooled = run_tasks(member_task, [task("pea_pg_tec", "pool"), task("none", "pool")], workers=2)

    def same(a, b):  # NaN-aware (this tiny split has no many-shot class)
        return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)

    assert same(pooled[0]["row"], alone["row"]) and same(pooled[0]["history"], alone["history"])
    row = alone["row"]
    assert (row["peft"], row["loss"], row["tea"], row["epochs"]) == ("lora", "la", "pea_pg_tec", 1)
    assert 0 <= row["overall"] <= 1 and 0 <= row["val_overall"] <= 1 and "best_epoch" not in row
    assert not any("latency" in k for k in row) and alone["latency_ms_per_image"] > 0
    assert pooled[1]["name"] == "lora-la-none" and (tmp_path / "pool" / "none.pt").is_file()


# ------------------------------------------------------------------------------------------ the report
MATRIX = TEAMatrixConfig(peft=("lora", "vpt_deep"), loss=("la",), tea=("none", "pea_pg_tec"))
SEEDS = (0, 1, 2)


def _row(test, val, peft=None, variant=None):
    """A metrics row: test accuracy `test` overall / many / medium, `test + 0.1` few; val overall `val`."""
    row = {"overall": test, "many": test, "medium": test, "few": test + 0.1, "val_overall": val}
    row.update(trainable_params=10, per_class=[test], confusion=[[1]])
    if peft:
        row.update(peft=peft, loss="la", tea=variant)
    return row


def _write_seeds(tmp_path, seeds=SEEDS):
    """lora: TEA is better on test but worse on val; vpt_deep: TEA is better on both."""
    for s in seeds:
        metrics = {
            "zero_shot_clip": _row(0.5, 0.5),
            "tea/lora-la-none": _row(0.60 + 0.01 * s, 0.70, "lora", "none"),
            "tea/lora-la-pea_pg_tec": _row(0.65 + 0.02 * s, 0.60, "lora", "pea_pg_tec"),
            "tea/vpt_deep-la-none": _row(0.50, 0.50 + 0.01 * s, "vpt_deep", "none"),
            "tea/vpt_deep-la-pea_pg_tec": _row(0.55 - 0.01 * s, 0.60, "vpt_deep", "pea_pg_tec"),
        }
        (tmp_path / f"seed_{s}.json").write_text(json.dumps(metrics))


def test_report_over_seeds(tmp_path):
    _write_seeds(tmp_path)
    members = load_members(tmp_path, MATRIX, SEEDS)
    assert len(members) == 5 * 3 and "per_class" not in members
    summary = member_summary(members)
    assert list(summary)[0] == "zero_shot_clip" and summary["zero_shot_clip"]["peft"] is None
    lora = summary["lora-la-pea_pg_tec"]
    assert lora["seeds"] == [0, 1, 2] and lora["overall"]["values"] == pytest.approx([0.65, 0.67, 0.69])
    assert lora["overall"]["mean"] == pytest.approx(0.67) and lora["overall"]["std"] == pytest.approx(0.02)

    gains = tea_gains(members)
    assert len(gains) == 2 * 4 and set(gains["group"]) == {"overall", "many", "medium", "few"}
    g = gains[(gains["peft"] == "lora") & (gains["group"] == "few")].iloc[0]
    diffs = [100 * ((0.75 + 0.02 * s) - (0.70 + 0.01 * s)) for s in SEEDS]  # 5, 6, 7 points
    half = stats.t.ppf(0.975, 2) * np.std(diffs, ddof=1) / math.sqrt(3)
    assert g["diffs"] == pytest.approx(diffs) and g["seeds"] == [0, 1, 2]
    assert (g["mean"], g["low"], g["high"]) == pytest.approx((6.0, 6.0 - half, 6.0 + half))
    assert g["verdict"] == "supported"
    v = gains[(gains["peft"] == "vpt_deep") & (gains["group"] == "overall")].iloc[0]
    assert v["diffs"] == pytest.approx([5.0, 4.0, 3.0]) and v["verdict"] == "supported"

    # the best member is chosen on val: lora's TEA member wins on test but not on val
    assert best_by_val(members) == {"lora": "lora-la-none", "vpt_deep": "vpt_deep-la-pea_pg_tec"}
    assert best_by_val(members, tea_only=True) == {"lora": "lora-la-pea_pg_tec", "vpt_deep": "vpt_deep-la-pea_pg_tec"}
    assert len(plot_gains(gains).axes) >= 2 and len(plot_members(members).axes) == 4


def test_report_names_what_is_missing(tmp_path):
    _write_seeds(tmp_path, seeds=(0, 1))
    with pytest.raises(
        FileNotFoundError, match=r"seed\(s\) 2 in .*\(seed_2\.json\); run them first \(`dvc repro tea@2`\)"
    ):
        load_members(tmp_path, MATRIX, SEEDS)
    other = TEAMatrixConfig(peft=("lora",), loss=("ce",), tea=("none",))
    with pytest.raises(
        ValueError, match=r"seed_0\.json has no metrics for member\(s\) lora-ce-none .*`dvc repro tea@0`"
    ):
        load_members(tmp_path, other, (0, 1))
