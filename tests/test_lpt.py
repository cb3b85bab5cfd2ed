import pytest
import torch

from lptlib.models import create_backbone
from lptlib.models.backbones import BackboneConfig
from lptlib.models.peft import LPT, GroupPromptPool, count_trainable


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


def test_ladder_rungs_add_one_part_each(tiny_lt):
    """cosine head: CE on s cos; A-GCL: the class-balanced branch's loss; dual sampling: LPT's objective; all with
    the VPT study's weight decay and stage 1's other settings (stage 1 = + LPT's weight decay)."""
    from lptlib.config import parse
    from lptlib.objectives import AGCL
    from lptlib.recipes.lpt import LADDER, build_lpt, ladder_run, stage_run

    cfg = parse(seed=0, lpt={"stage1": {"epochs": 2, "batch_size": 4}, "head_dropout": 0.0})
    data = tiny_lt()
    torch.manual_seed(0)
    model = build_lpt(create_backbone(BackboneConfig("vit-mini", "random")), data.num_classes, cfg.lpt, stage=1)
    runs = {rung: ladder_run(model, data, cfg, rung, None) for rung in LADDER}
    stage1 = stage_run(model, data, cfg, None)
    for run in runs.values():
        assert run.optim.weight_decay == cfg.vpt_study.vpt_deep.weight_decay != stage1.optim.weight_decay
        assert run.optim.lr == stage1.optim.lr and run.epochs == stage1.epochs
    x, y = next(iter(runs["cosine_head"].batches(0)))
    model.eval()
    cosine = model.forward_train(x)["cosine"]
    expected = torch.nn.functional.cross_entropy(cfg.lpt.cosine_scale * cosine, y)
    torch.testing.assert_close(runs["cosine_head"].objective(model, (x, y), 0), expected)
    a = cfg.lpt.agcl
    agcl = AGCL(data.train_counts, a.alpha, a.margin, a.scale, *a.class_balanced, a.smoothing)
    torch.manual_seed(5)
    got = runs["agcl"].objective(model, (x, y), 0)
    torch.manual_seed(5)
    torch.testing.assert_close(got, agcl(model.forward_train(x)["cosine"], y))
    pair = next(iter(runs["dual_sampling"].batches(0)))
    torch.manual_seed(5)
    got = runs["dual_sampling"].objective(model, pair, 0)
    torch.manual_seed(5)
    torch.testing.assert_close(got, stage1.objective(model, pair, 0))
    with pytest.raises(ValueError, match="unknown ladder rung"):
        ladder_run(model, data, cfg, "bogus", None)
