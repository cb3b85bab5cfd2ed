import pytest
import torch

from lptlib.models import create_backbone
from lptlib.models.backbones import BackboneConfig
from lptlib.models.peft import LPT, GroupPromptPool, count_trainable
from lptlib.recipes.lpt import LADDER, STAGE1_ROW
from lptlib.sections import ARMS, Arm


@pytest.fixture(scope="module", params=["vit-mini", "clip-mini"])
def backbone(request):
    torch.manual_seed(0)
    return create_backbone(BackboneConfig(request.param, "random"))


def stage2(backbone, **kw):
    torch.manual_seed(1)
    model = LPT(backbone, 10, stage=2, **kw)
    with torch.no_grad():
        for p in model.tuner.parameters():
            p.mul_(10)  # large prompts: a wrong computation could not hide behind near-identity prompts
    return model.eval()


def test_block_k_reuse_equals_two_full_passes(backbone):
    model = stage2(backbone)
    x = torch.randn(4, 3, 28, 28)
    with torch.no_grad():
        reused, official = model.forward_train(x, reuse=True), model.forward_train(x, reuse=False)
    torch.testing.assert_close(reused["cosine"], official["cosine"], rtol=0, atol=1e-6)
    assert torch.equal(reused["topk"], official["topk"])


def test_query_is_the_stage1_output(backbone):
    model = stage2(backbone, share_blocks=4)
    stage1 = LPT(backbone, 10, stage=1).eval()
    stage1.load_stage1_state(model.stage1_state())
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        query = model.forward_train(x)["query"]
        b = backbone
        from lptlib.models.blocks import run_blocks

        ref = b.final_norm(run_blocks(b.blocks, b.embed(x), stage1.tuner["shared_prompts"](2), "kv"))[:, 0]
    torch.testing.assert_close(query, ref)


def test_group_prompts_are_the_mean_of_the_top_k_picks():
    pool = GroupPromptPool(pool_size=5, depth=3, length=2, dim=4, top_k=2)
    with torch.no_grad():
        pool.keys.copy_(torch.cat([torch.eye(4), -torch.eye(4)[:1]]))
    query = torch.tensor([[1.0, 0.9, 0.0, 0.0]])
    idx = pool.select(query)
    assert sorted(idx[0].tolist()) == [0, 1]
    torch.testing.assert_close(pool(idx)[0], pool.prompts[[0, 1]].mean(0))


def test_group_pool_forward_and_backward_are_deterministic_and_equal_the_gather():
    """The one-hot matmul gives the gather's values exactly, and the same gradient on every call (the index
    accumulation of `prompts[idx]` does not on a multi-threaded CPU)."""
    torch.manual_seed(0)
    pool = GroupPromptPool(pool_size=20, depth=6, length=10, dim=64, top_k=2)
    idx = torch.randint(0, 20, (256, 2))
    torch.testing.assert_close(pool(idx), pool.prompts[idx].mean(1), rtol=0, atol=1e-7)
    grads = []
    for _ in range(5):
        pool.zero_grad()
        (pool(idx) * torch.linspace(-1, 1, 64)).sum().backward()
        grads.append(pool.prompts.grad.clone())
    assert all(torch.equal(g, grads[0]) for g in grads[1:])


def test_stage2_trains_pool_keys_and_head_only(backbone):
    model = LPT(backbone, 10, stage=2)
    out = model.forward_train(torch.randn(2, 3, 28, 28))
    loss = out["cosine"].sum() - (out["query"] @ model.tuner["group_pool"].keys.T).sum()
    loss.backward()
    tuner = model.tuner
    assert tuner["group_pool"].prompts.grad is not None and tuner["group_pool"].keys.grad is not None
    assert tuner["head"].weight.grad is not None and tuner["shared_prompts"].prompts.grad is None
    assert all(p.grad is None for p in backbone.parameters())
    d = backbone.embed_dim
    assert count_trainable(model) == 20 * 3 * 10 * d + 20 * d + 10 * d


def test_vit_b16_parameter_count():
    """LPT's ViT-B/16 configuration: prompts + keys = 12x10x768 + 20x6x10x768 + 20x768 = 1,029,120."""
    torch.manual_seed(0)
    backbone = create_backbone(BackboneConfig("timm:vit_base_patch16_224", "random"))
    model = LPT(backbone, num_classes=365, stage=2, prompt_length=10, pool_size=20, top_k=2, share_blocks=6)
    prompts_and_keys = sum(p.numel() for n, p in model.tuner.named_parameters() if not n.startswith("head."))
    assert prompts_and_keys == 1_029_120
    assert sum(p.numel() for p in model.tuner.parameters()) == 1_029_120 + 768 * 365


def test_ladder_changes_one_part_per_rung_and_leave_one_out_removes_one():
    from lptlib.sections import ABLATION_ARMS, ARMS, LPT_STAGE1

    ladder = list(LADDER)
    assert ladder[0] == "ladder/linear_head" and ladder[-1] == LPT_STAGE1
    assert ARMS[ladder[0]] == Arm("linear", False, False, "ce", False)  # VPT-deep's recipe on the stage-1 model
    for below, rung in zip(ladder, ladder[1:]):
        assert len(ARMS[rung].differences(ARMS[below])) == 1, (below, rung)
    for key, arm in ABLATION_ARMS.items():
        changed = arm.differences(ARMS[LPT_STAGE1])
        assert changed == (["loss"] if key.startswith("agcl_part/") else changed) and len(changed) == 1, key
    assert ARMS["ladder/agcl"].differences(ARMS[LPT_STAGE1]) == ["lpt_weight_decay"]  # leave-one-out: weight decay


def _tiny_arm_setup(tiny_lt, **top):
    from lptlib.config import parse

    cfg = parse(seed=0, lpt={"stage1": {"epochs": 2, "batch_size": 4}})
    tuned = {"arm_lr": top.pop("arm_lr", {}), "arm_cosine_scale": top.pop("arm_cosine_scale", {})}
    cfg = type(cfg).model_validate({**cfg.model_dump(), **tuned})  # exactly these (no tuned layer)
    return cfg, tiny_lt(), create_backbone(BackboneConfig("vit-mini", "random"))


def test_arm_runs_train_what_their_arm_says(tiny_lt):
    """Each arm's schedule (lr from arm_lr, weight decay), head, dropout, batches and loss against a direct
    computation; stage 1 as an arm is stage_run's stage 1; an A-GCL arm's `arm_cosine_scale` is A-GCL's s and the
    model's."""
    from lptlib.objectives import AGCL
    from lptlib.recipes.lpt import arm_run, build_arm, stage_run

    cfg, data, backbone = _tiny_arm_setup(
        tiny_lt, arm_lr={"ladder/cosine_head": 0.5}, arm_cosine_scale={"agcl_part/no_cloud": 7.0}
    )
    runs, models = {}, {}
    for key in ARMS:
        torch.manual_seed(0)
        models[key] = build_arm(backbone, data.num_classes, cfg, key).eval()
        runs[key] = arm_run(models[key], data, cfg, key, None)
    stage1 = stage_run(models[STAGE1_ROW], data, cfg, None)
    vpt_wd, lpt_wd = cfg.vpt_study.vpt_deep.weight_decay, cfg.lpt.stage1.weight_decay
    for key, run in runs.items():
        assert run.optim.weight_decay == (lpt_wd if ARMS[key].lpt_weight_decay else vpt_wd)
        assert run.optim.lr == (0.5 if key == "ladder/cosine_head" else cfg.lpt.stage1.lr) and run.epochs == 2
        assert models[key].dropout.p == (cfg.lpt.head_dropout if ARMS[key].dropout else 0.0)
        assert isinstance(models[key].tuner["head"], torch.nn.Linear) == (ARMS[key].head == "linear")
        assert models[key].scale == (7.0 if key == "agcl_part/no_cloud" else 20.0)
    assert stage1.optim == runs[STAGE1_ROW].optim
    # the linear head: forward is the linear logits, forward_train's score times s gives them back
    linear = models["ladder/linear_head"]
    x, y = next(iter(runs["ladder/linear_head"].batches(0)))
    feats = linear.forward_all(x)["features"]
    torch.testing.assert_close(linear(x), linear.tuner["head"](feats))
    torch.testing.assert_close(linear.scale * linear.forward_train(x)["cosine"], linear.tuner["head"](feats))
    # cross-entropy on s cos (cosine head) and on z (linear head), class-balanced batches
    for key in ("ladder/linear_head", "ladder/cosine_head"):
        m = models[key]
        torch.testing.assert_close(runs[key].objective(m, (x, y), 0), torch.nn.functional.cross_entropy(m(x), y))
    # stage 1 as an arm: the same objective as stage_run on the same batch pair
    pair = next(iter(runs[STAGE1_ROW].batches(0)))
    m = models[STAGE1_ROW]
    torch.manual_seed(5)
    got = runs[STAGE1_ROW].objective(m, pair, 0)
    torch.manual_seed(5)
    torch.testing.assert_close(got, stage1.objective(m, pair, 0))
    # A-GCL's parts in the class-balanced branch, against AGCL built directly
    a, counts = cfg.lpt.agcl, data.train_counts
    (xb, yb), _ = pair
    expected = {
        "agcl_part/cloud": AGCL(counts, a.alpha, 0.0, a.scale, 0.0, 0.0, 0.0),
        "agcl_part/no_cloud": AGCL(counts, 0.0, a.margin, 7.0, *a.class_balanced, a.smoothing),
    }
    for key, loss in expected.items():
        m = models[key]
        beta = cfg.lpt.eta  # epoch 0: the instance branch's weight is eta
        cos_b, cos_i = m.forward_train(xb)["cosine"], m.forward_train(pair[1][0])["cosine"]
        torch.manual_seed(7)
        got = runs[key].objective(m, pair, 0)
        torch.manual_seed(7)
        ib = loss if key == "agcl_part/cloud" else AGCL(counts, 0.0, a.margin, 7.0, *a.instance_balanced, a.smoothing)
        want = loss(cos_b, yb) + beta * ib(cos_i, pair[1][1])
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="unknown stage-1 arm"):
        arm_run(models[STAGE1_ROW], data, cfg, "bogus", None)


def test_arm_scale_defaults_per_loss_and_stage2_continues_stage1s(tiny_lt):
    """s: `arm_cosine_scale`, else `lpt.cosine_scale` under cross-entropy and `lpt.agcl.scale` under A-GCL; stage_run's
    A-GCL takes the scale it is given (stage 2 passes stage 1's)."""
    from lptlib.objectives import AGCL
    from lptlib.recipes.lpt import arm_scale, build_lpt, stage_run

    cfg, data, backbone = _tiny_arm_setup(tiny_lt, arm_cosine_scale={STAGE1_ROW: 5.0})
    cfg = type(cfg).model_validate({**cfg.model_dump(), "lpt": {**cfg.lpt.model_dump(), "cosine_scale": 30.0}})
    assert arm_scale(cfg, STAGE1_ROW) == 5.0
    assert arm_scale(cfg, "ladder/agcl") == cfg.lpt.agcl.scale == 20.0
    assert arm_scale(cfg, "lpt_stage1_without/agcl") == 30.0
    model = build_lpt(backbone, data.num_classes, cfg.lpt, stage=1).eval()
    pair = next(iter(stage_run(model, data, cfg, None).batches(0)))
    a, counts = cfg.lpt.agcl, data.train_counts
    cos_b, cos_i = (model.forward_train(x)["cosine"] for x in (pair[0][0], pair[1][0]))
    for scale in (None, 5.0):
        s = a.scale if scale is None else scale
        cb = AGCL(counts, a.alpha, a.margin, s, *a.class_balanced, a.smoothing)
        ib = AGCL(counts, a.alpha, a.margin, s, *a.instance_balanced, a.smoothing)
        torch.manual_seed(3)
        got = stage_run(model, data, cfg, None, scale=scale).objective(model, pair, 0)
        torch.manual_seed(3)
        want = cb(cos_b, pair[0][1]) + cfg.lpt.eta * ib(cos_i, pair[1][1])
        torch.testing.assert_close(got, want)


def test_agcl_cloud_alone_is_cross_entropy_on_the_clouded_cosines():
    from lptlib.objectives import AGCL

    counts = [50, 20, 5]
    cos, y = torch.rand(6, 3) * 2 - 1, torch.tensor([0, 1, 2, 0, 1, 2])
    cloud = AGCL(counts, 0.5, 0.0, 20.0, 0.0, 0.0, 0.0)
    torch.manual_seed(3)
    got = cloud(cos, y)
    torch.manual_seed(3)
    want = torch.nn.functional.cross_entropy(20.0 * cloud.perturb(cos), y)
    torch.testing.assert_close(got, want)


def test_arm_config_is_validated():
    from lptlib.config import ConfigError, parse

    with pytest.raises(ConfigError, match="lpt.arms.*unknown arm 'ladder/bogus'"):
        parse(lpt={"arms": ["ladder/bogus"]})
    with pytest.raises(ConfigError, match="arm_lr: unknown row 'ladder/cosine'.*did you mean 'ladder/cosine_head'"):
        parse(arm_lr={"ladder/cosine": 0.1})
    with pytest.raises(ConfigError, match="replica trains with 'vpt_deep/class_balanced'"):
        parse(arm_lr={"vpt_deep_replica/class_balanced": 0.1})
    with pytest.raises(ConfigError, match="must be > 0"):
        parse(arm_lr={"lpt_stage1": 0.0})
    assert parse(arm_lr={"lpt_stage1": 0.1, "tea/lora-ce-pea": 0.2}).arm_lr["lpt_stage1"] == 0.1
    assert parse(lpt={"arms": []}).lpt.arms == ()
