import itertools

import pydantic
import pytest
import yaml

from lptlib import config
from lptlib.config import ConfigError, parse
from lptlib.data.config import MINIATURE_DATASET
from lptlib.sections import PEFT_METHODS

PRESETS = ("miniature", "cifar100_lt", "places_lt", "imagenet_lt", "inat2018")
DATA_PATHS = ["data.root=/data/x", "data.split_dir=/data/splits"]


def test_partial_sections_keep_the_other_defaults():
    cfg = parse(backbones={"vision_language": {"weights": "x.safetensors"}}, data={"imbalance": 10})
    assert cfg.backbones.vision_language.name == "clip-mini"  # not the BackboneConfig class default
    assert cfg.backbones.visual.weights == "outputs/pretrain/vit-mini.safetensors"
    assert cfg.data.imbalance == 10.0 and isinstance(cfg.data.imbalance, float)
    assert cfg.data.crop_scale == (0.7, 1.0)
    # a nested section given in part keeps its parent's default for the rest (vpt_study.linear_probe.lr = 2.0)
    assert parse(vpt_study={"linear_probe": {"epochs": 3}}).vpt_study.linear_probe.lr == 0.5


def test_params_yaml_is_accepted_and_is_the_miniature(root):
    cfg = config.load(root / "params.yaml")
    assert cfg.data.name == MINIATURE_DATASET and cfg.preset == "miniature"
    assert cfg.backbones.visual.name == "vit-mini" and cfg.backbones.vision_language.name == "clip-mini"
    raw = yaml.safe_load((root / "params.yaml").read_text())
    assert set(raw) == set(config.SECTIONS)  # every section present (DVC tracks them), most of them empty
    tuned = config.load_tuned("miniature", root)  # the generated tuned layer (arm_lr, arm_cosine_scale) only
    assert cfg == config.Config(**tuned), "the committed params.yaml names only values equal to the defaults"


def test_dotted_keys_and_set_strings_and_yaml_1_1_exponents():
    assert parse(**{"lpt.stage1.lr": 0.3}).lpt.stage1.lr == 0.3
    assert config.compose({}, ["lpt.stage1.lr=5e-1"]).lpt.stage1.lr == 0.5  # YAML 1.1 reads 5e-1 as a string
    assert config.compose({"lpt": {"stage1": {"lr": 0.1}}}, {"lpt.stage1.lr": 0.2}).lpt.stage1.lr == 0.2


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_composes_and_validates(root, name):
    cfg = config.compose({"preset": name}, [] if name == "miniature" else DATA_PATHS)
    assert cfg.preset == name and cfg.data.name in (name, MINIATURE_DATASET)
    if name != "miniature":
        assert cfg.backbones.visual.name == "timm:vit_base_patch16_224.augreg_in21k"
        assert cfg.backbones.vision_language.tag == "openai" and cfg.data.image_size == 224


def test_presets_listed(root):
    assert set(config.list_presets(root)) == set(PRESETS)
    assert yaml.safe_load((root / "presets" / "miniature.yaml").read_text()) == {}, "the miniature is the defaults"


def test_switching_presets_in_any_order_and_back_gives_exactly_the_defaults():
    """Presets are overlays merged at load time, so no order of switching leaves anything behind."""
    defaults = config.Config(**config.load_tuned("miniature"))  # the defaults and the miniature's tuned layer
    for order in itertools.permutations(PRESETS[1:], 2):
        for name in order:
            config.compose({"preset": name}, DATA_PATHS)
        assert config.compose({"preset": "miniature"}) == defaults
    places = config.compose({"preset": "places_lt"}, DATA_PATHS)
    config.compose({"preset": "cifar100_lt"}, ["data.root=/x"])
    assert config.compose({"preset": "places_lt"}, DATA_PATHS) == places


def test_user_keys_win_over_the_preset():
    cfg = config.compose({"preset": "places_lt", "lpt": {"stage2": {"epochs": 3}}}, DATA_PATHS)
    assert cfg.lpt.stage2.epochs == 3 and cfg.lpt.stage2.batch_size == 256  # the rest of the preset's section


def test_an_error_in_a_preset_value_names_the_preset(root, tmp_path):
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "bad.yaml").write_text("lpt:\n  stage1:\n    epochs: 0\n")
    with pytest.raises(ConfigError, match=r"lpt\.stage1\.epochs: must be >= 1, got 0 \(set by preset bad\)"):
        config.compose({"preset": "bad"}, root=tmp_path)
    (tmp_path / "presets" / "named.yaml").write_text("preset: x\n")
    with pytest.raises(ConfigError, match=r"a preset must not name `preset`"):
        config.compose({"preset": "named"}, root=tmp_path)


def test_the_tuned_layer_sits_between_the_preset_and_params_yaml(tmp_path):
    from lptlib.engine import schedule_of

    (tmp_path / "presets" / "tuned").mkdir(parents=True)
    (tmp_path / "presets" / "mini.yaml").write_text("lpt:\n  stage1:\n    lr: 0.3\n")
    assert config.compose({"preset": "mini"}, root=tmp_path).arm_lr == {}  # never tuned: no layer
    tuned = tmp_path / "presets" / "tuned" / "mini.yaml"
    tuned.write_text("arm_lr:\n  lpt_stage1: 0.7\n  ladder/agcl: 0.2\n")
    cfg = config.compose({"preset": "mini", "arm_lr": {"ladder/agcl": 0.9}}, root=tmp_path)
    assert cfg.arm_lr == {"lpt_stage1": 0.7, "ladder/agcl": 0.9}  # params.yaml's key wins, the other stays
    assert cfg.lpt.stage1.lr == 0.3  # the schedule keeps the preset's rate; the row reads the tuned one
    assert schedule_of(cfg, "lpt_stage1", cfg.lpt.stage1).lr == 0.7
    assert schedule_of(cfg, "ladder/cosine_head", cfg.lpt.stage1) is cfg.lpt.stage1  # a row never tuned
    assert schedule_of(cfg, "lpt_stage1", cfg.lpt.stage1).model_dump(exclude={"lr"}) == cfg.lpt.stage1.model_dump(
        exclude={"lr"}
    )
    tuned.write_text("arm_lr:\n  ladder/cosine: 0.7\n")
    with pytest.raises(ConfigError, match=r"unknown row 'ladder/cosine'.*\(set by tuned layer presets/tuned/mini"):
        config.compose({"preset": "mini"}, root=tmp_path)
    tuned.write_text("lpt:\n  stage1:\n    lr: 0.7\n")
    with pytest.raises(ConfigError, match=r"a tuned layer holds only arm_lr.*lptlib.tune adopt"):
        config.compose({"preset": "mini"}, root=tmp_path)


def test_save_resolved_round_trips(tmp_path):
    cfg = parse(seed=3, data={"imbalance": 50})
    path = config.save_resolved(cfg, tmp_path / "config.yaml", stage="unit")
    doc = yaml.safe_load(path.read_text())
    assert doc["stage"] == "unit" and "git_revision" in doc
    doc.pop("stage"), doc.pop("git_revision")
    assert parse(**doc) == cfg


def test_describe_lists_every_leaf():
    keys = [k for k, *_ in config.describe()]
    assert "data.imbalance" in keys and "pretrain.vit_mini.epochs" in keys and "backbones.visual.tag" in keys
    assert len(keys) == len(set(keys))
    assert all(h for *_, h in config.describe()), "every parameter has a help text"
    defaults = dict((k, v) for k, v, *_ in config.describe())
    assert defaults["vpt_study.linear_probe.lr"] == "0.5"  # the section's own default, not Schedule's


def test_parameters_doc_is_generated_from_the_models(root):
    text = (root / "docs" / "parameters.md").read_text()
    assert config.render_docs(text) == text, "docs/parameters.md is stale: run `python -m lptlib.config docs`"


def test_configs_are_frozen():
    cfg = parse()
    with pytest.raises(pydantic.ValidationError):
        cfg.data.name = "x"


# ------------------------------------------------------------------------- paper-scale presets
PAPER_PRESETS = ("cifar100_lt", "places_lt", "imagenet_lt", "inat2018")
TRAINING_SECTIONS = ("vpt_study", "lpt", "tea", "lptpp")
#: LIFT's AdaptFormer bottleneck 2^floor(log2(C / 2L)) for each benchmark's class count C (L = 12)
LIFT_BOTTLENECK = {"cifar100_lt": 4, "places_lt": 8, "imagenet_lt": 32, "inat2018": 256}


def paper_hyperparameters(name: str) -> dict:
    """The hyperparameters the papers / official code give (docs/methods.md, docs/paper-scale.md#hyperparameter-sources), by dotted key."""
    expected = {"vpt_study.backbone": "visual", "vpt_study.samplings": ("instance_balanced", "class_balanced")}
    for method in ("linear_probe", "vpt_deep"):  # LPT Sec. 3 on Places-LT: 20 epochs, SGD lr 0.02, wd 1e-4
        expected.update(
            {
                f"vpt_study.{method}.epochs": 20,
                f"vpt_study.{method}.lr": 0.02,
                f"vpt_study.{method}.weight_decay": 1e-4,
                f"vpt_study.{method}.momentum": 0.9,
            }
        )
    expected.update(
        {  # LPT's official defaults
            "lpt.backbone": "visual",
            "lpt.prompt_length": 10,
            "lpt.cosine_scale": 20.0,
            "lpt.head_dropout": 0.1,
            "lpt.num_samples_cls": 4,
            "lpt.eta": 0.5,
            "lpt.pool_size": 20,
            "lpt.top_k": 2,
            "lpt.share_blocks": 6,
            "lpt.match_weight": 0.5,
            "lpt.agcl.alpha": 0.5,
            "lpt.agcl.margin": 0.1,
            "lpt.agcl.scale": 20.0,
            "lpt.agcl.smoothing": 0.1,
            "lpt.agcl.class_balanced": (0.0, 4.0),
            "lpt.agcl.instance_balanced": (0.5, 8.0),
            "lpt.stage2.epochs": 90,
            "lpt.stage2.batch_size": 256,
            "lpt.stage2.lr": 0.02 * 256 / 256,
            "lpt.stage2.weight_decay": 0.01,
            "lpt.stage2.momentum": 0.9,
            "lpt.stage2.warmup_epochs": 1.0,
            "lpt.stage1.weight_decay": 0.01,
        }
    )
    expected.update(
        {
            "tea.backbone": "vision_language",
            "tea.head_init": "text",
            "tea.cosine_scale": 25.0,
            "tea.sampling": "instance_balanced",
            "tea.la_tau": 1.0,
            "tea.templates": ("a photo of a {name}.",),
            "tea.bottleneck": LIFT_BOTTLENECK[name],
            "lptpp.bottleneck": LIFT_BOTTLENECK[name],
        }
    )
    for peft in PEFT_METHODS:  # LIFT's recipe
        expected.update(
            {
                f"tea.{peft}.epochs": 20 if name == "inat2018" else 10,
                f"tea.{peft}.batch_size": 128,
                f"tea.{peft}.lr": 0.01,
                f"tea.{peft}.weight_decay": 5e-4,
                f"tea.{peft}.momentum": 0.9,
                f"tea.{peft}.warmup_epochs": 0.0,
            }
        )
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
    """Every paper-scale preset composes and validates, names every training section, and each value it names
    (in particular the papers' numbers) lands in the resolved Config."""
    cfg = config.compose({"preset": name}, DATA_PATHS)
    preset = config.load_preset(name, root)  # presets/base/paper.yaml <- presets/<name>.yaml
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
    """Every key with a value in a training section says where it comes from, in every file of the preset."""
    tags = ("[paper]", "[code default]", "(our choice)", "(our reading)")
    section = None
    lines = [ln for path in config.preset_files(name, root) for ln in path.read_text().splitlines()]
    for line in lines:
        if line and not line.startswith((" ", "#")):
            section = line.split(":", 1)[0]
            continue
        key, _, rest = line.strip().partition(":")
        value = rest.split("#", 1)[0].strip()
        if section in TRAINING_SECTIONS and key and not key.startswith("#") and value:
            assert any(t in line for t in tags), f"preset {name}, {section}: {line.strip()!r} gives no source"


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_paper_presets_name_only_differences_or_published_values(root, name):
    """An overlay names a key only when its value differs from the default, or when it is a published value
    ([paper], [code default]) pinned so that retuning the miniature never changes a paper-scale run."""
    defaults = config.to_dict(config.Config())
    for path in config.preset_files(name, root):  # each file of the composition on its own
        lines = path.read_text().splitlines()
        preset = {k: v for k, v in yaml.safe_load("\n".join(lines)).items() if k != "base"}
        for key, value in _leaves(preset):
            default = defaults
            for part in key.split("."):
                default = default[part]
            if value != default and not (isinstance(value, (int, float)) and value == pytest.approx(default)):
                continue
            leaf = key.rsplit(".", 1)[-1]
            line = next(li for li in lines if li.strip().startswith(f"{leaf}:"))
            assert "[paper]" in line or "[code default]" in line, f"{path} names {key} = its default"


def test_dataset_presets_are_short_overlays_of_one_paper_base(root):
    """One shared paper-scale base; each dataset preset names it and adds only what is its own."""
    for name in PAPER_PRESETS:
        files = config.preset_files(name, root)
        assert [p.relative_to(root).as_posix() for p in files] == ["presets/base/paper.yaml", f"presets/{name}.yaml"]
        own = {k: v for k, v in yaml.safe_load(files[-1].read_text()).items() if k != "base"}
        assert set(own) <= {"data", "tea", "lptpp"} and len(files[-1].read_text().splitlines()) <= 20, name
    assert "base" not in config.list_presets(root) and "paper" not in config.list_presets(root)


def test_a_preset_base_that_is_missing_or_circular_is_named(tmp_path):
    (tmp_path / "presets" / "base").mkdir(parents=True)
    (tmp_path / "presets" / "a.yaml").write_text("base: nothing\n")
    with pytest.raises(ConfigError, match=r"a\.yaml: base: unknown base 'nothing' \(presets/base/; available: none\)"):
        config.compose({"preset": "a"}, root=tmp_path)
    (tmp_path / "presets" / "base" / "x.yaml").write_text("base: y\n")
    (tmp_path / "presets" / "base" / "y.yaml").write_text("base: x\nlpt: {pool_size: 5}\n")
    (tmp_path / "presets" / "b.yaml").write_text("base: x\n")
    with pytest.raises(ConfigError, match=r"a circle of bases"):
        config.compose({"preset": "b"}, root=tmp_path)
    (tmp_path / "presets" / "base" / "y.yaml").write_text("lpt: {pool_size: 5, top_k: 3}\n")
    (tmp_path / "presets" / "b.yaml").write_text("base: x\nlpt: {pool_size: 7}\n")
    cfg = config.compose({"preset": "b"}, root=tmp_path)
    assert (cfg.lpt.pool_size, cfg.lpt.top_k) == (
        7,
        3,
    )  # the dataset file wins over its base, the base over the defaults


def test_probe_only_seeds_may_be_empty_and_stay_apart_from_the_vpt_study_seeds():
    assert parse(seeds={"vpt_study_probes": []}).seeds.vpt_study_probes == ()
    with pytest.raises(ConfigError, match=r"seeds.vpt_study_probes: seeds \[3\] are already `vpt_study` seeds"):
        parse(seeds={"vpt_study_probes": [3, 20]})
    with pytest.raises(ConfigError, match="repeats a seed"):
        parse(seeds={"vpt_study_probes": [20, 20]})


def test_a_params_file_elsewhere_reads_this_repositorys_presets(tmp_path):
    """`config check --params /elsewhere/p.yaml` looked for presets beside that file ('unknown preset')."""
    path = tmp_path / "p.yaml"
    path.write_text("preset: cifar100_lt\ndata: {root: /data}\n")
    assert config.load(path).data.name == "cifar100_lt"
    (tmp_path / "presets").mkdir()  # a copy of the repository with its own presets: those
    (tmp_path / "presets" / "cifar100_lt.yaml").write_text("data: {name: cifar100_lt, imbalance: 10}\n")
    assert config.load(path).data.imbalance == 10
