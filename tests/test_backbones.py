import pickle

import open_clip
import pytest
import timm
import torch
from safetensors.torch import save_file

from lptlib.config import BackboneConfig, parse
from lptlib.models import Backbone, WeightsError, create_backbone, load_weight_file, save_weights
from lptlib.models import backbones as bb
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
    assert isinstance(b, Backbone) and b.family == "timm" and b.depth == 12 and b.embed_dim == 128
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
    assert b.family == "open_clip" and b.is_vision_language and len(b.blocks) == 12
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
    with pytest.raises(TypeError, match="visual-only"):
        b.encode_text(["x"])


def test_strict_loading_names_missing_and_unexpected_keys(vit_file, clip_file, tmp_path):
    _, vit_path = vit_file
    with pytest.raises(WeightsError) as e:  # a vit-mini file given as clip-mini
        create_backbone(BackboneConfig("clip-mini", str(vit_path)))
    msg = str(e.value)
    assert "missing keys: ln_final.bias" in msg and "unexpected keys: blocks.0.attn.proj.bias" in msg
    assert "(152 in all)" in msg

    state = load_weight_file(vit_path)
    state.pop("blocks.3.attn.qkv.weight")
    state["blocks.0.extra"] = torch.zeros(1)
    save_file(state, str(tmp_path / "edited.safetensors"))
    with pytest.raises(WeightsError, match=r"missing keys: blocks\.3\.attn\.qkv\.weight[\s\S]*unexpected keys: blocks\.0\.extra"):
        create_backbone(BackboneConfig("vit-mini", str(tmp_path / "edited.safetensors")))


def test_strict_loading_names_shape_mismatches(vit_file, tmp_path):
    state = load_weight_file(vit_file[1])
    state["pos_embed"] = torch.zeros(1, 50, 128)
    torch.save(state, tmp_path / "wrong.pth")
    with pytest.raises(WeightsError, match=r"shape mismatches: pos_embed \(1, 50, 128\) vs model \(1, 17, 128\)"):
        create_backbone(BackboneConfig("vit-mini", str(tmp_path / "wrong.pth")))


def test_torch_files_are_read_without_unpickling_objects(vit_file, tmp_path):
    state = load_weight_file(vit_file[1])
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pth")  # wrapped checkpoint: unwrapped
    b = create_backbone(BackboneConfig("vit-mini", str(tmp_path / "ckpt.pth")))
    assert b.depth == 12

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(WeightsError, match="cannot be read safely"):
        load_weight_file(tmp_path / "evil.pth")
    torch.save({"x": [1, 2]}, tmp_path / "notensor.pth")
    with pytest.raises(WeightsError, match="mapping of parameter names to tensors"):
        load_weight_file(tmp_path / "notensor.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        load_weight_file(tmp_path / "bad.safetensors")


def test_missing_weight_file_names_it_and_the_fix(tmp_path):
    with pytest.raises(WeightsError, match=r"nothing\.safetensors does not exist.*dvc repro pretrain"):
        create_backbone(BackboneConfig("vit-mini", str(tmp_path / "nothing.safetensors")))


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


def test_hub_failures_are_clear(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(WeightsError, match=r"timm weights 'vit_base_patch16_224\.augreg_in21k'.*set weights to its path"):
        create_backbone(BackboneConfig("timm:vit_base_patch16_224.augreg_in21k", "hub"))
    monkeypatch.setattr(open_clip, "create_model", offline)
    with pytest.raises(WeightsError, match=r"open_clip weights ViT-B-16/openai"):
        create_backbone(BackboneConfig("open_clip:ViT-B-16", "hub", "openai"))


def test_openai_tag_uses_quick_gelu(monkeypatch):
    seen = {}

    def fake(name, pretrained=None, force_quick_gelu=False, **kw):
        seen.update(name=name, pretrained=pretrained, quick_gelu=force_quick_gelu)
        raise OSError("stop here")

    monkeypatch.setattr(open_clip, "create_model", fake)
    with pytest.raises(WeightsError):
        create_backbone(BackboneConfig("open_clip:ViT-B-16", "hub", "openai"))
    assert seen == {"name": "ViT-B-16", "pretrained": "openai", "quick_gelu": True}


def test_miniature_registries_agree():
    from lptlib.config import MINIATURE_BACKBONES
    from lptlib.models.miniature import MINIATURE_ARCHS

    assert MINIATURE_BACKBONES == {name: family for name, (family, _) in MINIATURE_ARCHS.items()}
