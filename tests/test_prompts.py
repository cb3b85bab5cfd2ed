import pytest
import torch

from lptlib.models import create_backbone
from lptlib.models.backbones import BackboneConfig
from lptlib.models.blocks import run_blocks
from lptlib.models.peft import PEFTClassifier, count_trainable
from lptlib.models.prompts import DeepPrompts


@pytest.fixture(scope="module", params=["vit-mini", "clip-mini"])
def backbone(request):
    torch.manual_seed(0)
    return create_backbone(BackboneConfig(request.param, "random"))


def test_kv_form_equals_concat_and_strip(backbone):
    """LPT eq. 1 (prompts in keys/values only) = concatenating prompt tokens and stripping them after each block."""
    torch.manual_seed(1)
    x = torch.randn(3, 3, 28, 28)
    prompts = DeepPrompts(backbone.depth, 10, backbone.embed_dim, patch_size=7)
    with torch.no_grad():
        prompts.prompts.mul_(20)  # large prompts, so a wrong form could not pass by being near-identity
        tokens = backbone.embed(x)
        kv = backbone.final_norm(run_blocks(backbone.blocks, tokens, prompts(3), "kv"))
        cat = backbone.final_norm(run_blocks(backbone.blocks, tokens, prompts(3), "concat"))
        plain = backbone.final_norm(run_blocks(backbone.blocks, tokens, [None] * backbone.depth))
    assert (kv - plain).abs().max() > 1e-2  # the prompts do change the output
    torch.testing.assert_close(kv, cat, rtol=1e-5, atol=1e-5)  # CLS and patch tokens


def test_kv_form_gradients_equal_concat(backbone):
    torch.manual_seed(2)
    x = torch.randn(2, 3, 28, 28)
    grads = {}
    for form in ("kv", "concat"):
        prompts = DeepPrompts(backbone.depth, 4, backbone.embed_dim, patch_size=7)
        torch.manual_seed(3)
        torch.nn.init.normal_(prompts.prompts)
        out = backbone.final_norm(run_blocks(backbone.blocks, backbone.embed(x), prompts(2), form))
        out[:, 0].square().sum().backward()
        grads[form] = prompts.prompts.grad
    torch.testing.assert_close(grads["kv"], grads["concat"], rtol=1e-4, atol=1e-5)


def test_zero_prompts_equal_the_plain_backbone_exactly(backbone):
    model = PEFTClassifier(backbone, num_classes=5, prompt_length=0)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        feats = model.forward_features(x)
        ref = backbone.forward_features(x)
    assert torch.equal(feats["cls"], ref["cls"]) and torch.equal(feats["patch"], ref["patch"])
    assert count_trainable(model) == 128 * 5 + 5  # the head only


def test_vpt_model_trains_only_the_tuner_and_backbone_stays_eval(backbone):
    model = PEFTClassifier(backbone, num_classes=5, prompt_length=10, head="cosine")
    model.train()
    assert not backbone.training and model.tuner.training
    loss = model(torch.randn(2, 3, 28, 28)).logsumexp(1).sum()
    loss.backward()
    assert model.tuner["prompts"].prompts.grad is not None and model.tuner["head"].weight.grad is not None
    assert all(p.grad is None for p in backbone.parameters())
    assert count_trainable(model) == 6 * 10 * 128 + 5 * 128
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if n.startswith("tuner.")
    }


def test_vpt_initialisation_bound():
    p = DeepPrompts(12, 10, 768, patch_size=16).prompts
    bound = (6 / (3 * 16 * 16 + 768)) ** 0.5
    assert p.abs().max() <= bound and p.abs().max() > 0.9 * bound
