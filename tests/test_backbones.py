import open_clip
import pytest
import timm
import torch

from lptlib.config import parse
from lptlib.models import Backbone, WeightsError, create_backbone, load_weight_file, save_weights
from lptlib.models import backbones as bb
from lptlib.models.backbones import BackboneConfig
from lptlib.models.miniature import CLIP_MINI, VIT_MINI

X = torch.randn(2, 3, 28, 28)


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory):
    torch.manual_seed(0)
    model = timm.create_model(VIT_MINI, num_classes=4)  # as pretrained: with its 4-way coarse head
    return model, save_weights(model, tmp_path_factory.mktemp("w") / "vit-mini.safetensors")


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    torch.manual_seed(0)
    model = bb.build_open_clip(CLIP_MINI)
    return model, save_weights(model, tmp_path_factory.mktemp("w") / "clip-mini.safetensors")


def test_timm_file_round_trip_and_features(vit_file):
    model, path = vit_file
    b = create_backbone(BackboneConfig("vit-mini", str(path)))
    assert isinstance(b, Backbone) and b.family == "timm" and b.depth == 6 and b.embed_dim == 128
    model.eval()
    with torch.no_grad():
        feats = b.forward_features(X)
        ref = model.forward_head(model.forward_features(X), pre_logits=True)
        ref_tokens = model.forward_features(X)
    torch.testing.assert_close(feats["cls"], ref, rtol=0, atol=0)
    torch.testing.assert_close(feats["patch"], ref_tokens[:, 1:], rtol=0, atol=0)
    assert feats["patch"].shape == (2, 16, 128)
    assert b.normalization.mean == (0.5, 0.5, 0.5) and b.image_size == 28


def test_open_clip_file_round_trip_and_features(clip_file):
    model, path = clip_file
    b = create_backbone(BackboneConfig("clip-mini", str(path)))
    assert b.family == "open_clip" and b.is_vision_language and len(b.blocks) == 6
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(b.project(b(X)), model.encode_image(X), rtol=0, atol=0)
        text = b.encode_text(["a photo of a bag."])
        ref = model.encode_text(open_clip.get_tokenizer(CLIP_MINI)(["a photo of a bag."]), normalize=True)
    torch.testing.assert_close(text, ref)
    assert b.normalization.interpolation == "bicubic" and b.normalization.mean[0] == pytest.approx(0.48145466)


def test_per_block_access_reproduces_the_forward(vit_file, clip_file):
    for spec in (BackboneConfig("vit-mini", str(vit_file[1])), BackboneConfig("clip-mini", str(clip_file[1]))):
        b = create_backbone(spec)
        with torch.no_grad():
            tokens = b.embed(X)
            assert tokens.shape == (2, 1 + 16, 128)
            for block in b.blocks:
                tokens = block(tokens)
            torch.testing.assert_close(b.final_norm(tokens)[:, 0], b(X), rtol=0, atol=0)


def test_backbone_is_frozen_and_stays_in_eval(vit_file):
    b = create_backbone(BackboneConfig("vit-mini", str(vit_file[1])))
    assert not any(p.requires_grad for p in b.parameters())
    b.train()
    assert not b.training and not any(m.training for m in b.modules())


def test_wrapped_torch_checkpoints_are_unwrapped(vit_file, tmp_path):
    state = load_weight_file(vit_file[1])
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pth")  # wrapped checkpoint: unwrapped
    b = create_backbone(BackboneConfig("vit-mini", str(tmp_path / "ckpt.pth")))
    assert b.depth == 6  # (pickled objects, files without tensors, damaged files: tests/test_reliability.py)


def test_paper_scale_local_files_load_strictly(tmp_path):
    """A timm-format file of a real architecture (random weights; with its 21k-class head) loads by name."""
    torch.manual_seed(0)
    arch = "vit_tiny_patch16_224.augreg_in21k"
    model = timm.create_model(arch, num_classes=21843)
    save_weights(model, tmp_path / "model.safetensors")
    spec = parse(backbones={"visual": {"name": f"timm:{arch}", "weights": str(tmp_path / "model.safetensors")}})
    b = create_backbone(spec.backbones.visual)
    assert b.embed_dim == 192 and b.image_size == 224 and b.normalization.mean == (0.5, 0.5, 0.5)
    x = torch.randn(1, 3, 224, 224)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(b(x), model.forward_head(model.forward_features(x), pre_logits=True))


def test_openai_tag_uses_quick_gelu(monkeypatch):
    seen = {}

    def fake(name, pretrained=None, force_quick_gelu=False, **kw):
        seen.update(name=name, pretrained=pretrained, quick_gelu=force_quick_gelu)
        raise OSError("stop here")

    monkeypatch.setattr(open_clip, "create_model", fake)
    with pytest.raises(WeightsError):
        create_backbone(BackboneConfig("open_clip:ViT-B-16", "hub", "openai"))
    assert seen == {"name": "ViT-B-16", "pretrained": "openai", "quick_gelu": True}
