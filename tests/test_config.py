import dataclasses

import pytest
import yaml

from lptlib import config
from lptlib.config import ConfigError, parse
from lptlib.presets import apply_preset, list_presets


@pytest.mark.parametrize("sections,message", [
    (dict(data={"nme": "x"}), r"data\.nme: unknown key \(did you mean 'name'\?\); allowed keys: name, root"),
    (dict(data={"imbalance": "high"}), r"data\.imbalance: expected a number, got str"),
    (dict(data={"n_max": 1.5}), r"data\.n_max: expected an integer"),
    (dict(pretrain={"vit_mini": {"epochs": -1}}), r"pretrain\.vit_mini\.epochs: must be >= 0, got -1"),
    (dict(data={"name": "cifar10"}), r"data\.name: 'cifar10' is not one of: fashion_mnist_lt, cifar100_lt"),
    (dict(data={"shot_convention": "bbn"}), r"data\.shot_convention: 'bbn' is not one of: decoupling, oltr, lpt"),
    (dict(data={"crop_scale": [0.9, 0.2]}), r"data\.crop_scale: need 0 < min <= max <= 1"),
    (dict(data={"name": "places_lt"}), r"data\.root: places_lt needs the folder"),
    (dict(data={"name": "places_lt", "root": "/x"}), r"data\.split_dir"),
    (dict(backbones={"visual": {"name": "resnet50"}}), r"backbones\.visual\.name: .*vit-mini, clip-mini"),
    (dict(backbones={"visual": {"name": "timm:vit_bse_patch16_224"}}), r"timm has no model 'vit_bse_patch16_224'.*vit_base_patch16_224"),
    (dict(backbones={"visual": {"name": "timm:vit_base_patch16_224", "weights": "hub"}}), r"full timm tag"),
    (dict(backbones={"visual": {"name": "timm:vit_base_patch16_224.nope", "weights": "hub"}}), r"no pretrained tag .*augreg_in21k"),
    (dict(backbones={"vision_language": {"name": "open_clip:ViT-B-16", "weights": "hub"}}), r"needs? a pretrained tag"),
    (dict(backbones={"vision_language": {"name": "open_clip:ViT-B-16", "weights": "hub", "tag": "nope"}}), r"tags: .*openai"),
    (dict(backbones={"vision_language": {"name": "open_clip:ViT-Q-99"}}), r"open_clip has no model 'ViT-Q-99'"),
    (dict(backbones={"visual": {"name": "vit-mini", "weights": "hub"}}), r"pretrained by this pipeline"),
    (dict(pretrain={"caption_templates": ["a photo"]}), r"no '\{name\}' placeholder"),
    (dict(lr=0.1), r"lr: unknown params.yaml section; allowed: seed, preset, data"),
    (dict(data=[1, 2]), r"data: expected a mapping"),
    (dict(data={"download": "yes"}), r"data\.download: expected true or false"),
])
def test_bad_parameters_are_named(sections, message):
    with pytest.raises(ConfigError, match=message):
        parse(**sections)


def test_partial_sections_keep_the_other_defaults():
    cfg = parse(backbones={"vision_language": {"weights": "x.safetensors"}}, data={"imbalance": 10})
    assert cfg.backbones.vision_language.name == "clip-mini"  # not the BackboneConfig class default
    assert cfg.backbones.visual.weights == "outputs/pretrain/vit-mini.safetensors"
    assert cfg.data.imbalance == 10.0 and isinstance(cfg.data.imbalance, float)
    assert cfg.data.crop_scale == (0.7, 1.0)


def test_params_yaml_is_accepted_and_is_the_miniature(root):
    cfg = config.load(root / "params.yaml")
    assert cfg.data.name == config.MINIATURE_DATASET
    assert cfg.backbones.visual.name == "vit-mini" and cfg.backbones.vision_language.name == "clip-mini"
    raw = yaml.safe_load((root / "params.yaml").read_text())
    assert set(raw) == set(config.SECTIONS)  # every section documented in params.yaml


def test_params_yaml_restates_the_code_defaults(root):
    """params.yaml is the miniature default: it must agree with the dataclass defaults it documents."""
    assert config.load(root / "params.yaml") == config.Config()


@pytest.mark.parametrize("name", ["miniature", "cifar100_lt", "places_lt", "imagenet_lt", "inat2018"])
def test_every_preset_applies_and_validates(root, tmp_path, name):
    params = tmp_path / "params.yaml"
    params.write_text((root / "params.yaml").read_text())
    sets = [] if name == "miniature" else ["data.root=/data/x", "data.split_dir=/data/splits"]
    plain = apply_preset(name, sets, params=params, root=root)
    cfg = parse(**plain)
    assert cfg.preset == name and cfg.data.name in (name, config.MINIATURE_DATASET)
    assert "# Every knob of the pipeline" in params.read_text()  # comments survive
    if name != "miniature":
        assert cfg.backbones.visual.name == "timm:vit_base_patch16_224.augreg_in21k"
        assert cfg.backbones.vision_language.tag == "openai" and cfg.data.image_size == 224


def test_presets_listed(root):
    assert set(list_presets(root)) == {"miniature", "cifar100_lt", "places_lt", "imagenet_lt", "inat2018"}


def test_preset_errors_leave_params_untouched(root, tmp_path):
    params = tmp_path / "params.yaml"
    original = (root / "params.yaml").read_text()
    params.write_text(original)
    with pytest.raises(ConfigError, match="data.root"):
        apply_preset("places_lt", [], params=params, root=root)
    with pytest.raises(ConfigError, match="unknown preset 'places'"):
        apply_preset("places", [], params=params, root=root)
    with pytest.raises(ConfigError, match="key=value"):
        apply_preset("miniature", ["data.root"], params=params, root=root)
    assert params.read_text() == original


def test_save_resolved_round_trips(tmp_path):
    cfg = parse(seed=3, data={"imbalance": 50})
    path = config.save_resolved(cfg, tmp_path / "config.yaml", stage="unit")
    doc = yaml.safe_load(path.read_text())
    assert doc["stage"] == "unit" and "git_revision" in doc
    doc.pop("stage"), doc.pop("git_revision")
    assert parse(**doc) == cfg


def test_describe_lists_every_leaf():
    keys = [k for k, _, _ in config.describe()]
    assert "data.imbalance" in keys and "pretrain.vit_mini.epochs" in keys and "backbones.visual.tag" in keys
    assert len(keys) == len(set(keys))
    assert all(h for _, _, h in config.describe()), "every parameter has a help text"


def test_configs_are_frozen():
    cfg = parse()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.data.name = "x"
