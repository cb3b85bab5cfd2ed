"""AdaptFormer and LoRA on timm and open_clip blocks: identity at initialisation, equivalence to a reference
computation (merged LoRA weights; the adapter added to the MLP branch through hooks), composition with
VPT-deep prompts in both forms, and the text-initialised head."""

import copy

import pytest
import torch

from lptlib.models import create_backbone
from lptlib.models.backbones import BackboneConfig
from lptlib.models.heads import ZeroShotCLIP, text_head_weights, zero_shot_weights
from lptlib.models.peft import AdaptFormer, LoRA, PEFTClassifier, adapter_bottleneck, count_trainable


@pytest.fixture(scope="module", params=["vit-mini", "clip-mini"])
def backbone(request):
    torch.manual_seed(0)
    return create_backbone(BackboneConfig(request.param, "random"))


def _randomise(model: PEFTClassifier, std: float = 0.1) -> None:
    """Move every PEFT tensor away from its identity initialisation."""
    torch.manual_seed(5)
    with torch.no_grad():
        for name, p in model.tuner.named_parameters():
            if not name.startswith("head."):
                p.add_(torch.randn_like(p) * std)


def _qkv_weight(block):
    return block.attn.qkv.weight if hasattr(block.attn, "qkv") else block.attn.in_proj_weight


@pytest.mark.parametrize("kind", ["adaptformer", "lora"])
def test_peft_modules_start_as_the_identity(backbone, kind):
    model = PEFTClassifier(backbone, 5, adapter=kind == "adaptformer", lora_rank=4 if kind == "lora" else 0)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        tuned, frozen = model.forward_features(x), backbone.forward_features(x)
    torch.testing.assert_close(tuned["cls"], frozen["cls"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tuned["patch"], frozen["patch"], rtol=1e-5, atol=1e-5)


def test_lora_equals_the_merged_weights(backbone):
    """LoRA through the runner = the plain backbone with W_qkv + [B_q A_q; 0; B_v A_v] / r merged in."""
    model = PEFTClassifier(backbone, 5, lora_rank=3)
    _randomise(model)
    merged = copy.deepcopy(backbone)
    with torch.no_grad():
        for block, lora in zip(merged.blocks, model.tuner["lora"]):
            _qkv_weight(block).add_(lora.delta())
        x = torch.randn(2, 3, 28, 28)
        got, ref = model.forward_features(x)["cls"], merged.forward_features(x)["cls"]
    assert (got - backbone.forward_features(x)["cls"]).abs().max() > 1e-2
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_lora_delta_leaves_keys_untouched():
    lora = LoRA(8, 2)
    torch.nn.init.normal_(lora.b)
    delta = lora.delta()
    assert delta.shape == (24, 8) and torch.equal(delta[8:16], torch.zeros(8, 8))
    torch.testing.assert_close(delta[:8], lora.b[0] @ lora.a[0] / 2)


def test_adaptformer_equals_the_mlp_branch_plus_adapter(backbone):
    """Reference: the plain blocks, with hooks adding s * up(ReLU(down(LN h))) of the post-attention residual h to
    the MLP's output (layer scale and drop path are identities in these backbones)."""
    model = PEFTClassifier(backbone, 5, adapter=True, bottleneck=6)
    _randomise(model)
    handles = []
    for block, adapter in zip(backbone.blocks, model.tuner["adapters"]):
        norm2 = block.norm2 if hasattr(block, "norm2") else block.ln_2
        seen = {}
        handles.append(norm2.register_forward_pre_hook(lambda m, args, seen=seen: seen.update(h=args[0])))
        handles.append(block.mlp.register_forward_hook(lambda m, args, out, seen=seen, a=adapter: out + a(seen["h"])))
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        ref = backbone.forward_features(x)["cls"]
        for h in handles:
            h.remove()
        got = model.forward_features(x)["cls"]
        plain = backbone.forward_features(x)["cls"]
    assert (got - plain).abs().max() > 1e-2
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_prompts_adapters_and_lora_compose_in_both_forms(backbone):
    torch.manual_seed(3)
    models = {
        form: PEFTClassifier(backbone, 5, prompt_length=4, prompt_form=form, adapter=True, lora_rank=2)
        for form in ("kv", "concat")
    }
    models["concat"].tuner.load_state_dict(models["kv"].tuner.state_dict())
    for m in models.values():
        _randomise(m)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        kv, cat = (models[f].forward_features(x) for f in ("kv", "concat"))
    torch.testing.assert_close(kv["cls"], cat["cls"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(kv["patch"], cat["patch"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["adaptformer", "lora"])
def test_only_the_tuner_trains(backbone, kind):
    model = PEFTClassifier(
        backbone, 5, adapter=kind == "adaptformer", lora_rank=4 if kind == "lora" else 0, head="cosine"
    )
    model.train()
    assert not backbone.training
    model(torch.randn(2, 3, 28, 28)).logsumexp(1).sum().backward()
    assert all(p.grad is None for p in backbone.parameters())
    grads = {n: p.grad for n, p in model.tuner.named_parameters() if p.numel()}  # (the empty prompt tensor)
    assert all(g is not None for g in grads.values())
    # zero-initialised up-projections / B matrices get gradients, so training leaves the identity
    key = "adapters.0.up.weight" if kind == "adaptformer" else "lora.0.b"
    assert grads[key].abs().sum() > 0
    per_block = 2 * 128 + (128 * 4 + 4) + (4 * 128 + 128) + 1 if kind == "adaptformer" else 2 * 2 * 4 * 128
    assert count_trainable(model) == 6 * per_block + 5 * 128


def test_adapter_bottleneck_rule():
    assert [adapter_bottleneck(c) for c in (768, 1024, 512, 128, 48, 30, 16)] == [32, 32, 16, 4, 2, 1, 1]
    assert AdaptFormer(128, 4).up.weight.abs().sum() == 0


def test_text_head_is_zero_shot_mapped_through_the_projection():
    torch.manual_seed(0)
    clip = create_backbone(BackboneConfig("clip-mini", "random"))
    names, templates = ["shirt", "bag", "sandal"], ("a photo of a {name}.", "an image of a {name}.")
    w = text_head_weights(clip, names, templates)
    zs = zero_shot_weights(clip.encode_text, names, templates)
    assert w.shape == (3, clip.embed_dim)
    torch.testing.assert_close(w.norm(dim=1), torch.ones(3))
    # cos(f, P t) and the zero-shot score (P^T f) . t have the same numerator
    f = torch.randn(4, clip.embed_dim)
    num = f @ (w * (zs.float() @ clip.visual.proj.T).norm(dim=1, keepdim=True)).T
    torch.testing.assert_close(num, clip.project(f) @ zs.float().T, rtol=1e-4, atol=1e-5)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        logits = ZeroShotCLIP(clip, names, templates)(x)
        ref = torch.nn.functional.normalize(clip.project(clip(x)), dim=-1) @ zs.T
    torch.testing.assert_close(logits, ref)
