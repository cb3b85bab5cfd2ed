import dataclasses

import pytest
import yaml

from lptlib import config
from lptlib.config import ConfigError, parse
from lptlib.presets import apply_preset, list_presets


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


# ------------------------------------------------------------------------- paper-scale presets
PAPER_PRESETS = ("cifar100_lt", "places_lt", "imagenet_lt", "inat2018")
TRAINING_SECTIONS = ("vpt_study", "lpt", "tea", "lptpp")
#: LIFT's AdaptFormer bottleneck 2^floor(log2(C / 2L)) for each benchmark's class count C (L = 12)
LIFT_BOTTLENECK = {"cifar100_lt": 4, "places_lt": 8, "imagenet_lt": 32, "inat2018": 256}


def paper_hyperparameters(name: str) -> dict:
    """The hyperparameters the papers / official code give (METHODS §5-§8, papers-and-numbers.md), by dotted key."""
    expected = {"vpt_study.backbone": "visual", "vpt_study.samplings": ("instance_balanced", "class_balanced")}
    for method in ("linear_probe", "vpt_deep"):  # LPT Sec. 3 on Places-LT: 20 epochs, SGD lr 0.02, wd 1e-4
        expected.update({f"vpt_study.{method}.epochs": 20, f"vpt_study.{method}.lr": 0.02,
                         f"vpt_study.{method}.weight_decay": 1e-4, f"vpt_study.{method}.momentum": 0.9})
    expected.update({  # LPT's official defaults
        "lpt.backbone": "visual", "lpt.prompt_length": 10, "lpt.cosine_scale": 20.0, "lpt.head_dropout": 0.1,
        "lpt.num_samples_cls": 4, "lpt.eta": 0.5, "lpt.pool_size": 20, "lpt.top_k": 2, "lpt.share_blocks": 6,
        "lpt.match_weight": 0.5, "lpt.agcl.alpha": 0.5, "lpt.agcl.margin": 0.1, "lpt.agcl.scale": 20.0,
        "lpt.agcl.smoothing": 0.1, "lpt.agcl.class_balanced": (0.0, 4.0), "lpt.agcl.instance_balanced": (0.5, 8.0),
        "lpt.stage2.epochs": 90, "lpt.stage2.batch_size": 256, "lpt.stage2.lr": 0.02 * 256 / 256,
        "lpt.stage2.weight_decay": 0.01, "lpt.stage2.momentum": 0.9, "lpt.stage2.warmup_epochs": 1.0,
        "lpt.stage1.weight_decay": 0.01,
    })
    expected.update({"tea.backbone": "vision_language", "tea.head_init": "text", "tea.cosine_scale": 25.0,
                     "tea.sampling": "instance_balanced", "tea.la_tau": 1.0, "tea.templates": ("a photo of a {name}.",),
                     "tea.bottleneck": LIFT_BOTTLENECK[name], "lptpp.bottleneck": LIFT_BOTTLENECK[name]})
    for peft in config.PEFT_METHODS:  # LIFT's recipe
        expected.update({f"tea.{peft}.epochs": 20 if name == "inat2018" else 10, f"tea.{peft}.batch_size": 128,
                         f"tea.{peft}.lr": 0.01, f"tea.{peft}.weight_decay": 5e-4, f"tea.{peft}.momentum": 0.9,
                         f"tea.{peft}.warmup_epochs": 0.0})
    return expected


def _get(obj, dotted: str):
    for key in dotted.split("."):
        obj = getattr(obj, key)
    return obj


def _leaves(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1], tree


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_paper_presets_carry_the_papers_hyperparameters(root, name):
    """Every paper-scale preset applies and validates without writing params.yaml, holds every training section,
    and each value it documents (in particular the papers' numbers) lands in the parsed Config."""
    before = (root / "params.yaml").read_text()
    plain = apply_preset(name, ["data.root=/data/x", "data.split_dir=/data/splits"], write=False)
    assert (root / "params.yaml").read_text() == before
    cfg = parse(**plain)
    preset = yaml.safe_load((root / "presets" / f"{name}.yaml").read_text())
    assert set(TRAINING_SECTIONS) <= set(preset)
    resolved = config.to_dict(cfg)
    for key, value in _leaves({k: v for k, v in preset.items() if k != "data"}):
        got = _get(cfg, key)
        assert config.to_dict(got) == value or got == value, f"{name}: {key} = {value!r} in the preset, {got!r} parsed"
    assert resolved["data"]["name"] == name and cfg.data.image_size == 224
    for key, value in paper_hyperparameters(name).items():
        assert _get(cfg, key) == pytest.approx(value) if isinstance(value, float) else _get(cfg, key) == value, key
    for train in (cfg.lpt.stage1, cfg.lpt.stage2, cfg.lptpp.phase1, cfg.lptpp.phase2):  # LPT's lr = 0.02 B / 256
        assert train.lr == pytest.approx(0.02 * train.batch_size / 256)


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_paper_preset_values_name_their_source(root, name):
    """Every key with a value in a training section says where it comes from."""
    tags = ("[paper]", "[code default]", "(our choice)", "(our reading)")
    section = None
    for line in (root / "presets" / f"{name}.yaml").read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            section = line.split(":", 1)[0]
            continue
        key, _, rest = line.strip().partition(":")
        value = rest.split("#", 1)[0].strip()
        if section in TRAINING_SECTIONS and key and not key.startswith("#") and value:
            assert any(t in line for t in tags), f"presets/{name}.yaml, {section}: {line.strip()!r} gives no source"


def test_presets_must_give_whole_sections(root, tmp_path):
    """A preset replaces whole sections, so a key it leaves out is an error naming the key (it would otherwise
    fall back to the miniature's code default)."""
    (tmp_path / "presets").mkdir()
    preset = yaml.safe_load((root / "presets" / "places_lt.yaml").read_text())
    del preset["lpt"]["stage1"]["batch_size"]
    (tmp_path / "presets" / "partial.yaml").write_text(yaml.safe_dump({**preset, "preset": "partial"}))
    with pytest.raises(ConfigError, match=r"preset 'partial' .*section 'lpt' lacks lpt\.stage1\.batch_size;"):
        apply_preset("partial", ["data.root=/x", "data.split_dir=/y"], params=root / "params.yaml", root=tmp_path,
                     write=False)
    (tmp_path / "presets" / "bare.yaml").write_text("preset: bare\nlpt:\n  stage1:\n    epochs: 3\n")
    with pytest.raises(ConfigError, match=r"section 'lpt' lacks lpt\.backbone, .* \(20 in all\)"):
        apply_preset("bare", [], params=root / "params.yaml", root=tmp_path, write=False)
