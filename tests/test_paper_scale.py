"""A user's first paper-scale run does not die on a shape or a path.

For each paper-scale on-disk format (CIFAR-100's python pickles, the OLTR split files of Places-LT, ImageNet-LT
and iNaturalist 2018, iNat's official json) a handful of images is written to a temporary folder in that
format; the preset overlay is composed (`config.compose`) with `--set`-style overrides (data paths,
`weights: random`, tiny schedules), the data is built with `build_data` and the preset's real transforms
(224 px), and each stage's code path runs once on the preset's architectures (ViT-B/16 and CLIP ViT-B/16,
random weights, nothing downloaded), calling the library functions the notebooks call:

- CIFAR-100-LT: the TEA member (LoRA + PEA/PG/TEC, text-initialised head over the 100 class names);
- Places-LT: LPT stage 1, its file, stage 2 loading it, key usage;
- ImageNet-LT (class-names file, grayscale and CMYK JPEGs, 2 loader workers): LPT++ phases 1 and 2 for both
  experts, then phase 3 (cache, MoE scorer, evaluation);
- iNaturalist 2018 (8,142 classes, original category ids): the VPT study (linear probe and VPT-deep, the
  features of Table 2 and the LDA figure); the official json reads too.

ViT-B/16 costs about a second per image forward + backward on one core, so every split holds a few images,
every schedule is one epoch, the frequency-aware losses only run where every class has a training image, and
the CLIP text tower only runs over CIFAR-100's 100 names (never over iNat's 8,142). Each backbone is built once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

from lptlib import stage
from lptlib.config import ConfigError, parse
from lptlib.data import build_data, build_transforms, lt_counts, make_loader
from lptlib.data.datasets import LTData
from lptlib.measure.analysis import lda_projection
from lptlib.measure.metrics import shot_groups
from lptlib.models.backbones import Backbone, BackboneConfig, create_backbone
from lptlib.models.heads import check_classnames
from lptlib.models.peft import count_trainable
from lptlib.recipes import lptpp as lpp
from lptlib.recipes.lpt import build_lpt, key_usage, load_stage1, save_stage1, train_stage, usage_entropy
from lptlib.recipes.tea import build_model, inference_latency, member_name, train_member
from lptlib.recipes.vpt_study import cls_features, feature_sample, feature_table, row_name, run_table1
from lptlib.report.plots import plot_lda

VIT_B16 = "timm:vit_base_patch16_224.augreg_in21k"
CLIP_B16 = "open_clip:ViT-B-16"
RANDOM_WEIGHTS = ["backbones.visual.weights=random", "backbones.vision_language.weights=random"]


# ----------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def backbones() -> dict[str, Backbone]:
    """The presets' two architectures with random weights, built once (every preset names the same two)."""
    plain = resolved("places_lt", ["data.root=/x", "data.split_dir=/y", *RANDOM_WEIGHTS])
    torch.manual_seed(0)
    cfg = parse(backbones=plain["backbones"]).backbones
    built = {role: create_backbone(getattr(cfg, role)) for role in ("visual", "vision_language")}
    assert built["visual"].name == VIT_B16 and built["vision_language"].name == CLIP_B16
    return built


def backbone_for(backbones: dict[str, Backbone], cfg: BackboneConfig) -> Backbone:
    """What `create_backbone(cfg)` would build: the module's backbone of that name (checked to be the same)."""
    assert cfg.weights == "random", "the test never downloads weights"
    matches = [b for b in backbones.values() if b.name == cfg.name]
    assert matches, f"no backbone built for {cfg.name}"
    return matches[0]


def resolved(name: str, sets: list[str]) -> dict:
    """The resolved configuration (plain data) of params.yaml `preset: name` with the keys `sets`."""
    from lptlib import config

    return config.to_dict(config.compose({"preset": name}, sets))


def paper_params(name: str, root: Path, split_dir: Path | None = None, *sets: str) -> dict:
    """The resolved sections of params.yaml `preset: name` with the data paths and `sets` (random weights)."""
    overrides = [f"data.root={root}", "data.num_workers=0", *RANDOM_WEIGHTS]
    if split_dir is not None:
        overrides.append(f"data.split_dir={split_dir}")
    return resolved(name, [*overrides, *sets])


def start(stage_name: str, out_dir: Path, plain: dict, *sections: str):
    """`stage.start` as the notebook of `stage_name` calls it, the sections given as its overrides."""
    overrides = {k: plain[k] for k in ("seed", "preset", "data", "backbones", *sections)}
    return stage.start(stage_name, str(out_dir), "", overrides)


def jpeg(path: Path, rng: np.random.Generator, mode: str = "RGB", size: tuple[int, int] = (40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path, format="JPEG")  # L: grayscale, CMYK: as some ImageNet files


def write_split_files(
    root: Path,
    split_dir: Path,
    splits: dict[str, list[tuple[str, int]]],
    rng: np.random.Generator,
    modes: dict[str, str] | None = None,
) -> None:
    """OLTR split files (`relative/path.jpg label` per line) under `split_dir`, and their JPEGs under `root`."""
    split_dir.mkdir(parents=True, exist_ok=True)
    for fname, lines in splits.items():
        (split_dir / fname).write_text("".join(f"{p} {y}\n" for p, y in lines))
        for p, _ in lines:
            jpeg(root / p.lstrip("/"), rng, (modes or {}).get(p, "RGB"))


def shrink(lt: LTData, train: list[int] | None = None, test: list[int] | None = None) -> LTData:
    """The same benchmark (classes, names, shot counts) with a few of its training / test images."""
    return dataclasses.replace(
        lt,
        train=lt.train.subset(train) if train is not None else lt.train,
        test=lt.test.subset(test) if test is not None else lt.test,
    )


def check_result(result, num_classes: int) -> None:
    assert all(np.isfinite(row["loss"]) for row in result.history)
    assert len(result.test["per_class"]) == num_classes
    assert 0.0 <= result.test["overall"] <= 1.0


# ------------------------------------------------------------------------------ CIFAR-100-LT
CIFAR100_CLASSES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm"
).split()


def write_cifar100(root: Path, train_counts: list[int], test_per_class: int, rng: np.random.Generator) -> None:
    """torchvision's `cifar-100-python/{train,test,meta}` pickles: rows of 3072 uint8 (R, G, B planes of 32 x 32)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, counts in (("train", train_counts), ("test", [test_per_class] * 100)):
        labels = rng.permutation(np.repeat(np.arange(100), counts))
        entry = {
            "filenames": [f"img_{i}.png" for i in range(len(labels))],
            "batch_label": f"{split} batch",
            "fine_labels": labels.tolist(),
            "coarse_labels": (labels // 5).tolist(),
            "data": rng.integers(0, 256, (len(labels), 3 * 32 * 32), dtype=np.uint8),
        }
        with open(folder / split, "wb") as f:
            pickle.dump(entry, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": CIFAR100_CLASSES, "coarse_label_names": [f"c{i}" for i in range(20)]}, f)


def test_cifar100_lt_tea_member(backbones, tmp_path, monkeypatch):
    """CIFAR-100-LT from the pickles (the preset's seed-0 IF-100 profile: 10,847 images), then one TEA member on
    CLIP ViT-B/16: LoRA + PEA/PG/TEC with the text-initialised head over the 100 names; latency timing."""
    import torchvision.datasets.cifar as tv_cifar

    assert len(CIFAR100_CLASSES) == 100
    # torchvision checks the real files' md5 sums, which synthetic files cannot match; keep the existence check
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    rng = np.random.default_rng(0)
    profile = lt_counts(500, 100, 100)
    write_cifar100(tmp_path / "cifar", profile, test_per_class=1, rng=rng)
    plain = paper_params(
        "cifar100_lt", tmp_path / "cifar", None, "tea.lora.epochs=1", "tea.lora.batch_size=2", "tea.latency_batches=1"
    )
    peft, loss, variant = "lora", "ce", "pea_pg_tec"  # CE: the shrunk train set lacks most classes (LA needs all)
    out = tmp_path / "out" / "tea"
    cfg = start("tea", out, plain, "tea")
    assert (out / "config.yaml").is_file()
    lt = build_data(cfg.data)
    assert (len(lt.train), len(lt.test), lt.val, lt.num_classes) == (10847, 100, None, 100)
    assert lt.train_counts.tolist() == profile and lt.shot_counts.tolist() == profile
    assert lt.classnames[:2] == ["apple", "aquarium fish"]
    train_tf, test_tf = build_transforms(cfg.data, backbones["vision_language"].normalization)
    x, _ = lt.train.with_transform(train_tf)[0]
    assert tuple(x.shape) == (3, 224, 224) and tuple(lt.test.with_transform(test_tf)[0][0].shape) == (3, 224, 224)

    head, tail = int(np.flatnonzero(lt.train.targets == 0)[0]), int(np.flatnonzero(lt.train.targets == 99)[0])
    small = shrink(lt, train=[head, tail], test=[0, 1])
    backbone = backbone_for(backbones, getattr(cfg.backbones, cfg.tea.backbone))
    model = build_model(backbone, small, cfg, peft)
    assert tuple(model.tuner["head"].weight.shape) == (100, 768)
    assert torch.isfinite(model.tuner["head"].weight).all()
    checkpoint = out / "checkpoints" / f"{member_name(peft, loss, variant)}.pt"
    result = train_member(model, small, cfg, peft, loss, variant, checkpoint)
    check_result(result, 100)
    images = next(iter(make_loader(small.test.with_transform(test_tf), cfg.tea.lora.eval_batch_size)))[0][:64]
    latency = inference_latency(model, images, repeats=cfg.tea.latency_batches)
    assert latency > 0
    row = result.row(count_trainable(model))
    assert row["trainable_params"] == 12 * 2 * (2 * 4 * 768) + 100 * 768  # LoRA r = 4 on q and v, and the head


# -------------------------------------------------------------------------------- Places-LT
def test_places_lt_lpt_stages(backbones, tmp_path):
    """Places-LT from its OLTR split files (places365_standard layout), then LPT stage 1, its file, and stage 2."""
    rng = np.random.default_rng(1)
    root, splits = tmp_path / "places365_standard", tmp_path / "Places_LT"
    classes = ["airfield", "apartment_building-outdoor"]
    write_split_files(
        root,
        splits,
        {
            "Places_LT_train.txt": [
                ("train/airfield/00000001.jpg", 0),
                ("/train/airfield/00000002.jpg", 0),
                ("train/apartment_building-outdoor/00000001.jpg", 1),
            ],
            "Places_LT_val.txt": [(f"train/{c}/00000100.jpg", y) for y, c in enumerate(classes)],
            "Places_LT_test.txt": [(f"val/{c}/Places365_val_0000000{y + 1}.jpg", y) for y, c in enumerate(classes)],
        },
        rng,
    )
    plain = paper_params(
        "places_lt",
        root,
        splits,
        "lpt.stage1.epochs=1",
        "lpt.stage1.batch_size=3",
        "lpt.stage2.epochs=1",
        "lpt.stage2.batch_size=3",
    )
    out1, out2 = tmp_path / "out" / "stage1", tmp_path / "out" / "stage2"
    cfg = start("lpt_stage1", out1, plain, "lpt")
    lt = build_data(cfg.data)
    assert (len(lt.train), len(lt.val), len(lt.test)) == (3, 2, 2)
    assert lt.classnames == ["airfield", "apartment building-outdoor"] and lt.train_counts.tolist() == [2, 1]
    backbone = backbone_for(backbones, getattr(cfg.backbones, cfg.lpt.backbone))

    model = build_lpt(backbone, lt.num_classes, cfg.lpt, stage=1)
    assert tuple(model.tuner["shared_prompts"].prompts.shape) == (12, 10, 768)
    check_result(train_stage(model, lt, cfg, out1 / "checkpoints" / "stage1.pt"), 2)
    stage1_file = save_stage1(model, out1 / "lpt_stage1.safetensors")

    cfg = start("lpt_stage2", out2, plain, "lpt")
    model2 = build_lpt(backbone, lt.num_classes, cfg.lpt, stage=2)
    load_stage1(model2, stage1_file)
    assert torch.equal(model2.tuner["shared_prompts"].prompts, model.tuner["shared_prompts"].prompts)
    pool = model2.tuner["group_pool"]
    assert tuple(pool.prompts.shape) == (20, 6, 10, 768) and tuple(pool.keys.shape) == (20, 768)
    check_result(train_stage(model2, lt, cfg, out2 / "checkpoints" / "stage2.pt"), 2)
    _, test_tf = build_transforms(cfg.data, backbone.normalization)
    usage = key_usage(model2, make_loader(lt.test.with_transform(test_tf), cfg.lpt.stage2.eval_batch_size))
    assert usage.shape == (20,) and usage.sum() == len(lt.test) * cfg.lpt.top_k
    assert 0.0 <= usage_entropy(usage) <= 1.0


# ------------------------------------------------------------------------------ ImageNet-LT
def test_imagenet_lt_lptpp_phases(backbones, tmp_path, monkeypatch):
    """ImageNet-LT from its OLTR split files (wnid folders, .JPEG, a grayscale and a CMYK image, names from
    data.classnames_file), then LPT++: phases 1 and 2 for both experts, and phase 3 (cache, scorer, evaluation)."""
    rng = np.random.default_rng(2)
    root, splits = tmp_path / "imagenet", tmp_path / "ImageNet_LT"
    wnids = ["n01440764", "n01443537"]
    test_files = [f"val/{w}/ILSVRC2012_val_0000000{y + 1}.JPEG" for y, w in enumerate(wnids)]
    write_split_files(
        root,
        splits,
        {
            "ImageNet_LT_train.txt": [(f"train/{w}/{w}_10026.JPEG", y) for y, w in enumerate(wnids)],
            "ImageNet_LT_val.txt": [(f"train/{w}/{w}_20000.JPEG", y) for y, w in enumerate(wnids)],
            "ImageNet_LT_test.txt": list(zip(test_files, range(2))),
        },
        rng,
        modes={test_files[0]: "L", test_files[1]: "CMYK"},
    )
    names = tmp_path / "imagenet_lt_classnames.txt"
    names.write_text("tench\ngoldfish\n")
    plain = paper_params(
        "imagenet_lt",
        root,
        splits,
        f"data.classnames_file={names}",
        "data.num_workers=2",
        "lptpp.phase1.epochs=1",
        "lptpp.phase1.batch_size=2",
        "lptpp.phase2.epochs=1",
        "lptpp.phase2.batch_size=2",
        "lptpp.scorer.epochs=2",
    )
    # lptpp builds each expert's backbone with create_backbone: hand it the module's (same name, random weights)
    monkeypatch.setattr(lpp, "create_backbone", lambda cfg: backbone_for(backbones, cfg))
    # without data.classnames_file the names are the folders' WordNet ids: the text-initialised head refuses them
    cfg = parse(**{**plain, "data": {**plain["data"], "classnames_file": None}})
    lt_ids = build_data(cfg.data)
    assert lt_ids.classnames == wnids
    with pytest.raises(ConfigError, match=r"are ids, not names \(e\.g\. 'n01440764'.*data\.classnames_file"):
        lpp.build_expert("vision_language", lt_ids, cfg, phase=1)

    out = tmp_path / "out" / "lptpp"
    phase_dirs = {1: out / "phase1", 2: out / "phase2", 3: out / "phase3"}
    for phase in (1, 2):
        cfg = start(f"lptpp_phase{phase}", phase_dirs[phase], plain, "lpt", "lptpp")
        lt = build_data(cfg.data)
        assert lt.classnames == ["tench", "goldfish"] and (len(lt.train), len(lt.val), len(lt.test)) == (2, 2, 2)
        for role in cfg.lptpp.experts:
            model, result = lpp.train_phase(phase, role, lt, cfg, phase_dirs[phase], phase1_dir=phase_dirs[1])
            check_result(result, 2)
            assert model.tuner["adapters"][0].down.out_features == cfg.lptpp.bottleneck == 32
            assert (phase_dirs[phase] / f"{role}.safetensors").is_file()

    cfg = start("lptpp_phase3", phase_dirs[3], plain, "lpt", "lptpp")
    lt = build_data(cfg.data)
    experts = list(cfg.lptpp.experts)
    caches, models = lpp.cache_all(experts, lt, cfg, phase_dirs[2], out / "cache")
    for role in experts:
        assert tuple(caches[role].features["train"].shape) == (2, 768)
        assert tuple(caches[role].logits["test"].shape) == (2, 2)
    scorer, info = lpp.train_scorer([caches[e] for e in experts], cfg)
    rows, gate_out = lpp.evaluate_rows(caches, scorer, lt)
    assert set(rows) == {"expert: visual", "expert: vision_language", "uniform average", "MoE scorer"}
    assert gate_out["gates"].shape == (2, 2) and np.allclose(gate_out["gates"].sum(1), 1.0, atol=1e-5)
    groups = list(shot_groups(lt.shot_counts, cfg.data.shot_convention))
    assert lpp.gate_weights_by_group(gate_out["gates"], gate_out["labels"], groups, experts)
    assert len(info["history"]) == cfg.lptpp.scorer.epochs and all(np.isfinite(h["loss"]) for h in info["history"])


# ------------------------------------------------------------------------ iNaturalist 2018
INAT_IDS = (0, 4, 8141)


def test_inat2018_vpt_study(backbones, tmp_path):
    """iNaturalist 2018 from its split files (8,142 classes, original ids, the official val split as the test
    set, no val split), then the VPT study: Table 1 (linear probe, VPT-deep), Table 2's features, the LDA."""
    rng = np.random.default_rng(3)
    root, splits = tmp_path / "iNat2018", tmp_path / "iNat2018_splits"

    def path(c: int, i: int) -> str:
        return f"train_val2018/Plantae/{c}/{c:04d}{i:028x}.jpg"

    write_split_files(
        root,
        splits,
        {
            "iNaturalist18_train.txt": [(path(c, 0), c) for c in INAT_IDS],
            "iNaturalist18_val.txt": [(path(c, i), c) for c in INAT_IDS for i in (1, 2)],
        },
        rng,
    )
    plain = paper_params(
        "inat2018",
        root,
        splits,
        "vpt_study.samplings=[class_balanced]",
        "vpt_study.linear_probe.epochs=1",
        "vpt_study.linear_probe.batch_size=3",
        "vpt_study.vpt_deep.epochs=1",
        "vpt_study.vpt_deep.batch_size=3",
        "vpt_study.feature_images_per_class=2",
    )
    out = tmp_path / "out" / "vpt_study"
    cfg = start("vpt_study", out, plain, "vpt_study")
    study = cfg.vpt_study
    lt = build_data(cfg.data)
    assert (lt.num_classes, len(lt.train), lt.val, len(lt.test)) == (8142, 3, None, 6)
    assert [lt.classnames[c] for c in INAT_IDS] == ["0", "4", "8141"]
    with pytest.raises(ConfigError, match="class names missing for labels"):  # no text head on folder ids
        check_classnames(lt.classnames, lt.num_classes)
    backbone = backbone_for(backbones, getattr(cfg.backbones, study.backbone))

    table = run_table1(backbone, lt, cfg, out / "checkpoints")
    rows = table.rows  # no LA probe: most of the 8,142 classes have no training image in this sample
    assert set(rows) == {row_name(m, "class_balanced") for m in ("linear_probe", "vpt_deep")}
    for row in rows.values():
        assert all(np.isfinite(h["loss"]) for h in row["history"])
        assert len(row["per_class"]) == 8142 and 0.0 <= row["overall"] <= 1.0
    assert rows["linear_probe/class_balanced"]["trainable_params"] == 8142 * 768 + 8142
    assert rows["vpt_deep/class_balanced"]["trainable_params"] == 12 * 10 * 768 + 8142 * 768 + 8142

    # Table 2 and the LDA figure, as notebooks/01_vpt_study.ipynb computes them
    extractors = {"frozen": backbone, **{f"VPT-deep ({s})": m for s, m in table.models.items()}}
    _, test_tf = build_transforms(cfg.data, backbone.normalization)
    sets = {"target_train": lt.train, "target_test": feature_sample(lt.test, study.feature_images_per_class, cfg.seed)}
    features = {
        name: {
            s: cls_features(model, ds.with_transform(test_tf), study.vpt_deep.eval_batch_size, cfg.data.num_workers)
            for s, ds in sets.items()
        }
        for name, model in extractors.items()
    }
    assert features["frozen"]["target_test"][0].shape == (6, 768)
    table2 = feature_table(features, study.knn_k)
    for name in extractors:
        assert set(table2[name]) >= {"R", "D", "gamma", "knn_acc"} and np.isfinite(table2[name]["gamma"])
    panels = {}
    for name, sets_ in features.items():
        target, labels = sets_["target_test"]
        panels[name] = {"target domain": (lda_projection(target, labels)[0], labels)}
        assert panels[name]["target domain"][0].shape == (6, 2)
    plt.close(plot_lda(panels, lt.classnames, seed=cfg.seed))

    # the official json annotations (original category ids, names from the categories)
    json_dir = tmp_path / "iNat2018_json"
    json_dir.mkdir()
    for fname, lines in (
        ("train2018.json", [(path(c, 0), c) for c in INAT_IDS]),
        ("val2018.json", [(path(c, i), c) for c in INAT_IDS for i in (1, 2)]),
    ):
        doc = {
            "images": [{"id": i, "file_name": p} for i, (p, _) in enumerate(lines)],
            "annotations": [{"id": i, "image_id": i, "category_id": c} for i, (_, c) in enumerate(lines)],
            "categories": [{"id": c, "name": f"species {c}"} for c in INAT_IDS],
        }
        (json_dir / fname).write_text(json.dumps(doc))
    plain = paper_params("inat2018", root, json_dir)
    lt_json = build_data(parse(data=plain["data"]).data)
    assert lt_json.num_classes == 8142 and lt_json.classnames[8141] == "species 8141"
    assert lt_json.train.targets.tolist() == lt.train.targets.tolist()
