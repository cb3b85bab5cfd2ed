"""Reliability: every bad input the project handles fails with a clear error, and a training stage of the
miniature is deterministic and resumes exactly after being killed.

1. `test_bad_input_fails_with_a_clear_error`: one table of every bad input the project handles (config keys,
   presets, data files, weight files, checkpoints, LPT stage-1 files, LPT++ experts and caches, TEA members,
   non-finite losses, ...). Each row is (a params override for `config.parse`, or a callable of the workspace
   `w` that triggers the error; the exact exception type; a regex of the message naming the problem and,
   where the library gives one, the fix). Every row is cheap: no training beyond a step or two, no papermill.
   `FIXED_GAPS` are inputs that raised unclear errors when the table was written (a damaged checkpoint or
   safetensors file, NaN / inf parameters, a --set value that is not YAML) and now fail clearly.
2. `test_stage_is_deterministic_and_resumes_after_sigkill`: three runs of notebook 02_lpt_stage1 (papermill
   subprocesses, tiny parameters): fresh A, fresh B (A == B: determinism on CPU) and C, SIGKILLed with its kernel
   once the checkpoint of its first epoch exists and re-run with the same command (A == C: resume), comparing the
   metrics JSON byte for byte and the saved stage-1 tensors.
"""

import gzip
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import open_clip
import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import fit_classifier, notebook_parameters, process_alive
from safetensors.torch import save_file

from lptlib import config, stage
from lptlib.config import ConfigError, parse
from lptlib.data import (
    ArrayDataset,
    ClassAwareSampler,
    DataError,
    FileListDataset,
    Normalization,
    build_data,
    build_transforms,
    find_fashion_mnist,
    lt_counts,
    lt_subsample,
    make_loader,
    make_sampler,
    read_idx,
    read_split_file,
)
from lptlib.data import datasets as ds
from lptlib.data.signature import signature
from lptlib.engine import CheckpointError, NonFiniteLossError, check_finite
from lptlib.install import ensure_fashion_mnist
from lptlib.measure.metrics import per_class_accuracy, shot_groups
from lptlib.models import Backbone, WeightsError, create_backbone, load_weight_file, save_weights
from lptlib.models.backbones import BackboneConfig
from lptlib.models.blocks import run_blocks, tuned_block
from lptlib.models.heads import build_head, check_classnames, text_head_weights
from lptlib.models.miniature import VIT_MINI
from lptlib.models.peft import LPT, AdaptFormer, LoRA, PEFTClassifier
from lptlib.models.prompts import DeepPrompts
from lptlib.objectives import build_loss, gate_probabilities, variant_parts
from lptlib.paths import repo_root
from lptlib.preflight import PreflightError, preflight
from lptlib.recipes.lpt import load_stage1, save_stage1
from lptlib.recipes.lptpp import (
    ExpertCache,
    ExpertError,
    build_cache,
    build_expert,
    load_expert,
    save_expert,
    train_scorer,
)
from lptlib.recipes.pretrain import run_pretraining
from lptlib.recipes.tea import build_model, check_member
from lptlib.report.tea import load_members
from lptlib.utils import METADATA_KEY

ROOT = Path(__file__).resolve().parents[1]
RANDOM = {
    "visual": {"name": "vit-mini", "weights": "random"},
    "vision_language": {"name": "clip-mini", "weights": "random"},
}


# =============================================================================================== workspace
class Work:
    """What a row needs: `tmp` (a fresh folder), `mp` (monkeypatch), and artefacts built on first use and shared
    by every row of the module (`cached`): random miniature backbones, a weight file, a finished one-epoch run
    with its checkpoint, LPT stage-1 and LPT++ expert files."""

    def __init__(self, tmp: Path, mp: pytest.MonkeyPatch, tiny_lt, shared: dict, shared_dir: Path):
        self.tmp, self.mp, self._tiny_lt, self._shared, self._dir = tmp, mp, tiny_lt, shared, shared_dir

    def cached(self, key: str, build):
        if key not in self._shared:
            self._shared[key] = build(self._dir / key)
        return self._shared[key]

    # -- models ----------------------------------------------------------------------------------------
    def vit(self) -> Backbone:
        return self.cached("vit", lambda _: _seeded(create_backbone, BackboneConfig("vit-mini", "random")))

    def clip(self) -> Backbone:
        return self.cached("clip", lambda _: _seeded(create_backbone, BackboneConfig("clip-mini", "random")))

    def vit_file(self) -> Path:
        """A vit-mini weight file as 00_pretrain saves it (with its 4-way coarse head)."""
        return self.cached(
            "vit-mini.safetensors", lambda p: save_weights(_seeded(timm.create_model, VIT_MINI, num_classes=4), p)
        )

    def edited_vit_file(self, edit, suffix=".safetensors") -> Path:
        state = load_weight_file(self.vit_file())
        edit(state)
        path = self.tmp / f"edited{suffix}"
        save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
        return path

    # -- data --------------------------------------------------------------------------------------------
    def fashion_mnist(self, per_class=6, labels_short=False, bad_label: str | None = None) -> Path:
        """Four idx files of a fake Fashion-MNIST (per_class train / 1 test image per class); `bad_label`: the
        split ('train' or 't10k') whose last label is 10, out of range."""
        folder = self.tmp / "fm"
        folder.mkdir(exist_ok=True)
        for split, n in (("train", per_class), ("t10k", 1)):
            labels = np.tile(np.arange(10), n)
            if split == bad_label:
                labels[-1] = 10
            _write_idx(folder / f"{split}-images-idx3-ubyte.gz", np.zeros((len(labels), 28, 28)))
            _write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels[:-1] if labels_short else labels)
        return folder

    def oltr(
        self, name="places_lt", train_lines=("train/a/0.jpg 0", "train/b/0.jpg 1", "train/c/0.jpg 2"), test_lines=None
    ):
        """OLTR split files of `name` with the given train lines (and one image for the first of them); the other
        splits list `test_lines` (default: the train lines)."""
        root, splits = self.tmp / "images", self.tmp / "splits"
        splits.mkdir(exist_ok=True)
        for split, fname in ds.OLTR_SPLIT_FILES[name].items():
            lines = train_lines if split == "train" or test_lines is None else test_lines
            (splits / fname).write_text("\n".join(lines) + "\n")
        first = root / train_lines[0].split()[0]
        first.parent.mkdir(parents=True, exist_ok=True)
        first.write_bytes(b"")
        return {"name": name, "root": str(root), "split_dir": str(splits)}

    # -- training engine ---------------------------------------------------------------------------------
    def engine(self):
        """(make_model, loaders, fit kwargs, checkpoint of a finished one-epoch run) of a tiny 3-class problem."""

        def build(path):
            def make_model(prompt_length=2):
                vit = self.vit()  # built (and its RNG draws made) before the seed, so every call starts alike
                torch.manual_seed(0)
                return PEFTClassifier(vit, 3, prompt_length=prompt_length)

            rng = np.random.default_rng(0)
            y = np.repeat(np.arange(3), [6, 3, 2])
            train_tf, test_tf = build_transforms(parse().data, Normalization((0.5,) * 3, (0.5,) * 3))
            images = ArrayDataset(rng.integers(0, 255, (len(y), 28, 28), dtype=np.uint8), y)
            loaders = (
                make_loader(images.with_transform(train_tf), 4, ClassAwareSampler(y, 2, seed=0)),
                make_loader(images.with_transform(test_tf), 16),
                make_loader(images.with_transform(test_tf), 16),
            )
            kw = dict(
                epochs=1, lr=0.05, weight_decay=1e-4, momentum=0.9, warmup_epochs=1, shot_counts=np.array([150, 50, 5])
            )
            fit_classifier(make_model(), *loaders, _ce, checkpoint=path, resume="never", **kw)
            return SimpleNamespace(model=make_model, loaders=loaders, kw=kw, checkpoint=path)

        return self.cached("engine.pt", build)

    # -- LPT and LPT++ -------------------------------------------------------------------------------------
    def stage1_file(self) -> Path:
        """An LPT stage-1 file of vit-mini (10 classes)."""
        return self.cached("stage1.safetensors", lambda p: save_stage1(LPT(self.vit(), 10, stage=1), p))

    def lptpp_cfg(self, pool_size=4):
        return parse(backbones=RANDOM, lpt={"pool_size": pool_size, "prompt_length": 2})

    def expert_file(self, phase=1) -> Path:
        """A vision_language (clip-mini) expert file of LPT++ phase `phase` on `tiny()`."""
        return self.cached(
            f"vl-phase{phase}.safetensors",
            lambda p: save_expert(
                build_expert("vision_language", self.tiny(), self.lptpp_cfg(), phase), p, self.tiny(), phase
            ),
        )

    def cache(self):
        """(visual phase-2 expert, its file, its cache file) built on `tiny()`."""

        def build(path):
            model = build_expert("visual", self.tiny(), self.lptpp_cfg(), phase=2)
            expert = save_expert(model, path.with_name("visual-phase2.safetensors"), self.tiny(), phase=2)
            build_cache(model, "visual", self.tiny(), self.lptpp_cfg(), path, expert)
            return model, expert, path

        return self.cached("cache.safetensors", build)

    def tiny(self, names=("t-shirt", "trouser", "bag"), counts=(12, 4, 2)):
        """conftest's 3-class long-tailed LTData of random images."""
        return self._tiny_lt(names, counts)


@pytest.fixture(scope="module")
def _shared(tmp_path_factory):
    return {}, tmp_path_factory.mktemp("reliability")


@pytest.fixture
def work(tmp_path, monkeypatch, tiny_lt, _shared):
    return Work(tmp_path, monkeypatch, tiny_lt, *_shared)


def _seeded(fn, *args, **kwargs):
    torch.manual_seed(0)
    return fn(*args, **kwargs)


def _ce(model, batch, epoch):
    return F.cross_entropy(model(batch[0]), batch[1])


def _write_idx(path: Path, array) -> None:
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def _write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _own_preset(w: Work, text: str, params: dict | None = None) -> None:
    """Compose with a preset file of this text (presets/own.yaml in a scratch root)."""
    (w.tmp / "presets").mkdir(exist_ok=True)
    (w.tmp / "presets" / "own.yaml").write_text(text)
    config.compose({"preset": "own", **(params or {})}, root=w.tmp)


def _preset(w: Work, name: str, sets: list[str]) -> None:
    """Compose params.yaml `preset: name` with `--set` overrides; params.yaml is only ever read."""
    original = (ROOT / "params.yaml").read_text()
    try:
        config.compose({"preset": name}, sets, root=ROOT)
    finally:
        assert (ROOT / "params.yaml").read_text() == original


def _stage_start(w: Work, **sections) -> None:
    """stage.start (the first line of every notebook) must fail before it writes the resolved config."""
    out = w.tmp / "out"
    try:
        stage.start("unit", str(out), "", sections)
    finally:
        assert not (out / "config.yaml").exists(), "a bad parameter must fail before config.yaml is written"


def _missing_fashion_mnist(w: Work):
    w.mp.setattr(ds, "DEBIAN_FASHION_MNIST", w.tmp / "debian")
    w.mp.setenv("LPTLIB_DATA", str(w.tmp / "env"))
    w.mp.setenv("HOME", str(w.tmp / "home"))
    find_fashion_mnist(None)


def _fashion_mnist_root(w: Work, files: int) -> None:
    """A data.root holding `files` of the four idx files (-1: no folder at all), with the system copy present."""
    root = w.tmp / "root"
    if files >= 0:
        root.mkdir()
    for stem in list(ds.FASHION_MNIST_FILES.values())[: max(files, 0)]:
        _write(root / stem, b"")
    find_fashion_mnist(str(root))


def _injected(text: str) -> None:
    """papermill's injected cell `text` after notebook 02's parameters cell, as the guard cell checks it."""
    nb = json.loads((ROOT / "notebooks" / "02_lpt_stage1.ipynb").read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    problem = stage.injected_problem(stage.INJECTED_HEADER + text, "".join(cell["source"]))
    if problem:
        raise ConfigError(problem)


def _clone_marker(w: Work) -> None:
    """Another clone: a folder with dvc.yaml and params.yaml."""
    (w.tmp / "other").mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        _write(w.tmp / "other" / name, "stages: {}\n" if name == "dvc.yaml" else "preset: miniature\n")


def _damaged_metadata(w: Work, name: str, text: str) -> Path:
    """A safetensors file whose lptlib metadata is `text`."""
    path = w.tmp / name
    save_file({"x": torch.zeros(1)}, str(path), metadata={METADATA_KEY: text})
    return path


def _evil_pickle(w: Work) -> Path:
    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    with open(w.tmp / "evil.pth", "wb") as f:
        pickle.dump({"x": Evil()}, f)
    return w.tmp / "evil.pth"


def _offline(*args, **kwargs):
    raise OSError("no network")


def _hub(w: Work, module, spec: BackboneConfig):
    w.mp.setattr(module, "create_model", _offline)
    create_backbone(spec)


def _resume(w: Work, model=None, **kw):
    e = w.engine()
    fit_classifier(model or e.model(), *e.loaders, _ce, **{**e.kw, "resume": str(e.checkpoint), **kw})


def _other_start(w: Work):
    """The same model with another starting state (e.g. another stage-1 state loaded before stage 2)."""
    model = w.engine().model()
    with torch.no_grad():
        model.tuner["prompts"].prompts.add_(1.0)
    return model


def _caches(counts=(6, 3, 2)) -> list[ExpertCache]:
    labels = {s: torch.cat([torch.full((n,), c) for c, n in enumerate(counts)]) for s in ("train", "val", "test")}
    return [
        ExpertCache(
            {s: torch.randn(len(y), 4) for s, y in labels.items()},
            {s: torch.randn(len(y), 3) for s, y in labels.items()},
            labels,
        )
    ]


def _with_source(data):
    data.source = data.train  # as if it had the miniature's source pool
    return data


def _lptpp_phase2(w: Work, role="vision_language", pool_size=4):
    return build_expert(role, w.tiny(), w.lptpp_cfg(pool_size), phase=2)


# ================================================================================== the table of bad inputs
def case(id: str, trigger, error: type[BaseException], message: str, marks=()):
    """A row: its id, the trigger (a dict: a params.yaml override passed to `config.parse`; a callable: called with
    the workspace `w`), the exact exception type and a regex of its message (the problem and, if given, the fix)."""
    return pytest.param(trigger, error, message, id=id, marks=marks)


CASES = [
    # ---------------------------------------------------------------- config: keys, types, ranges, enums
    case(
        "config-unknown-key",
        dict(data={"nme": "x"}),
        ConfigError,
        r"data\.nme: unknown key \(did you mean 'name'\?\); allowed keys: name, root",
    ),
    case(
        "config-unknown-section",
        dict(lr=0.1),
        ConfigError,
        r"lr: unknown params.yaml section; allowed: seed, seeds, workers, preset, data",
    ),
    case("config-section-not-a-mapping", dict(data=[1, 2]), ConfigError, r"data: expected a mapping"),
    case(
        "config-file-not-a-mapping",
        lambda w: config.load(_write(w.tmp / "p.yaml", "- 1\n- 2\n")),
        ConfigError,
        r"p\.yaml: expected a mapping of sections at the top level",
    ),
    case(
        "config-not-a-number",
        dict(data={"imbalance": "high"}),
        ConfigError,
        r"data\.imbalance: expected a number, got str",
    ),
    case("config-not-an-int", dict(data={"n_max": 1.5}), ConfigError, r"data\.n_max: expected an integer"),
    case("config-not-a-bool", dict(data={"download": "yes"}), ConfigError, r"data\.download: expected true or false"),
    case(
        "config-not-a-string",
        dict(data={"name": 5}),
        ConfigError,
        r"data\.name: 5 is not one of: fashion_mnist_lt, cifar100_lt",
    ),
    case(
        "config-not-a-list",
        dict(data={"crop_scale": "0.5"}),
        ConfigError,
        r"data\.crop_scale: expected a list, got str",
    ),
    case(
        "config-list-length",
        dict(lpt={"agcl": {"class_balanced": [0.0]}}),
        ConfigError,
        r"lpt\.agcl\.class_balanced: too few values \(position 1 is missing\)",
    ),
    case(
        "config-below-min",
        dict(pretrain={"vit_mini": {"epochs": -1}}),
        ConfigError,
        r"pretrain\.vit_mini\.epochs: must be >= 1, got -1",
    ),
    case(
        "config-above-max",
        dict(lpt={"stage1": {"momentum": 1.5}}),
        ConfigError,
        r"lpt\.stage1\.momentum: must be <= 1\.0, got 1\.5",
    ),
    case(
        "config-agcl-smoothing-above-max",
        dict(lpt={"agcl": {"smoothing": 2}}),
        ConfigError,
        r"lpt\.agcl\.smoothing: must be <= 1\.0",
    ),
    case(
        "config-unknown-dataset",
        dict(data={"name": "cifar10"}),
        ConfigError,
        r"data\.name: 'cifar10' is not one of: fashion_mnist_lt, cifar100_lt",
    ),
    case(
        "config-unknown-shot-convention",
        dict(data={"shot_convention": "bbn"}),
        ConfigError,
        r"data\.shot_convention: 'bbn' is not one of: decoupling, oltr, lpt",
    ),
    case(
        "config-crop-scale-order",
        dict(data={"crop_scale": [0.9, 0.2]}),
        ConfigError,
        r"data\.crop_scale: need 0 < min <= max <= 1",
    ),
    case(
        "config-paper-dataset-without-root",
        dict(data={"name": "places_lt"}),
        ConfigError,
        r"data\.root: places_lt needs the folder holding its images; set it in params\.yaml",
    ),
    case(
        "config-oltr-without-split-dir",
        dict(data={"name": "places_lt", "root": "/x"}),
        ConfigError,
        r"data\.split_dir: places_lt needs the folder with its OLTR split files",
    ),
    case(
        "config-pretrain-template-placeholder",
        dict(pretrain={"caption_templates": ["a photo"]}),
        ConfigError,
        r"pretrain\.caption_templates: template 'a photo' has no '\{name\}' placeholder",
    ),
    case(
        "config-pretrain-no-templates",
        dict(pretrain={"zero_shot_templates": []}),
        ConfigError,
        r"pretrain\.zero_shot_templates: give at least one template",
    ),
    # backbones
    case(
        "config-backbone-name",
        dict(backbones={"visual": {"name": "resnet50"}}),
        ConfigError,
        r"backbones\.visual\.name: backbone name 'resnet50': use a miniature \(vit-mini, clip-mini\) or "
        r"'timm:<model>",
    ),
    case(
        "config-timm-typo",
        dict(backbones={"visual": {"name": "timm:vit_bse_patch16_224"}}),
        ConfigError,
        r"timm has no model 'vit_bse_patch16_224'; close names: .*vit_base_patch16_224",
    ),
    case(
        "config-timm-hub-untagged",
        dict(backbones={"visual": {"name": "timm:vit_base_patch16_224", "weights": "hub"}}),
        ConfigError,
        r"give the full timm tag, e\.g\. timm:vit_base_patch16_224\.augreg_in21k",
    ),
    case(
        "config-timm-hub-unknown-tag",
        dict(backbones={"visual": {"name": "timm:vit_base_patch16_224.nope", "weights": "hub"}}),
        ConfigError,
        r"timm has no pretrained tag 'vit_base_patch16_224\.nope'; tags of vit_base_patch16_224: "
        r".*augreg_in21k",
    ),
    case(
        "config-open-clip-hub-without-tag",
        dict(backbones={"vision_language": {"name": "open_clip:ViT-B-16", "weights": "hub"}}),
        ConfigError,
        r"backbones\.vision_language\.tag: open_clip weights from the hub need a pretrained tag \(e\.g\. "
        r"openai\)",
    ),
    case(
        "config-open-clip-unknown-tag",
        dict(backbones={"vision_language": {"name": "open_clip:ViT-B-16", "weights": "hub", "tag": "nope"}}),
        ConfigError,
        r"open_clip has no tag 'nope' for ViT-B-16; tags: .*openai",
    ),
    case(
        "config-open-clip-unknown-model",
        dict(backbones={"vision_language": {"name": "open_clip:ViT-Q-99"}}),
        ConfigError,
        r"open_clip has no model 'ViT-Q-99'; close names",
    ),
    case(
        "config-miniature-from-hub",
        dict(backbones={"visual": {"name": "vit-mini", "weights": "hub"}}),
        ConfigError,
        r"backbones\.visual\.weights: vit-mini is pretrained by this pipeline \(00_pretrain\), not "
        r"downloadable; give its weight file",
    ),
    # a boolean is never a number, a size is bounded before anything is allocated, a rate or scale is never 0
    case(
        "config-lr-true",
        dict(lpt={"stage1": {"lr": True}}),
        ConfigError,
        r"lpt\.stage1\.lr: expected a number, got a boolean",
    ),
    case(
        "config-epochs-true",
        dict(tea={"lora": {"epochs": True}}),
        ConfigError,
        r"tea\.lora\.epochs: expected a number, got a boolean \(true/false is not a number; write the number\)",
    ),
    case("config-seed-true", dict(seed=True), ConfigError, r"^seed: expected a number, got a boolean"),
    case(
        "config-seeds-bool-item",
        dict(seeds={"lpt": [0, False]}),
        ConfigError,
        r"seeds\.lpt\[1\]: expected a number, got a boolean",
    ),
    case(
        "config-arm-lr-true",
        dict(arm_lr={"lpt_stage1": True}),
        ConfigError,
        r"arm_lr\.lpt_stage1: expected a number, got a boolean",
    ),
    case("config-lr-zero", dict(lpt={"stage1": {"lr": 0}}), ConfigError, r"lpt\.stage1\.lr: must be > 0\.0, got 0"),
    case(
        "config-lr-huge",
        dict(vpt_study={"vpt_deep": {"lr": 1e6}}),
        ConfigError,
        r"vpt_study\.vpt_deep\.lr: must be <= 100",
    ),
    case("config-scorer-lr-zero", dict(lptpp={"scorer": {"lr": 0}}), ConfigError, r"lptpp\.scorer\.lr: must be > 0"),
    case(
        "config-pretrain-epochs-zero",
        dict(pretrain={"clip_mini": {"epochs": 0}}),
        ConfigError,
        r"pretrain\.clip_mini\.epochs: must be >= 1, got 0",
    ),
    case(
        "config-pretrain-lr-zero",
        dict(pretrain={"vit_mini": {"lr": 0}}),
        ConfigError,
        r"pretrain\.vit_mini\.lr: must be > 0",
    ),
    case(
        "config-epochs-unbounded",
        dict(lpt={"stage2": {"epochs": 10**7}}),
        ConfigError,
        r"lpt\.stage2\.epochs: must be <= 10000",
    ),
    case(
        "config-warmup-unbounded",
        dict(lpt={"stage1": {"epochs": 5, "warmup_epochs": 6}}),
        ConfigError,
        r"lpt\.stage1\.warmup_epochs: 6\.0 warm-up epochs exceed the 5 training epochs",
    ),
    case(
        "config-batch-unbounded",
        dict(tea={"lora": {"batch_size": 10**8}}),
        ConfigError,
        r"tea\.lora\.batch_size: must be <= 65536",
    ),
    case(
        "config-lpt-prompt-length-zero",
        dict(lpt={"prompt_length": 0}),
        ConfigError,
        r"lpt\.prompt_length: must be >= 1, got 0",
    ),
    case(
        "config-cosine-scale-zero",
        dict(lpt={"cosine_scale": 0}),
        ConfigError,
        r"lpt\.cosine_scale: must be > 0\.0, got 0",
    ),
    case("config-tea-cosine-scale-zero", dict(tea={"cosine_scale": 0}), ConfigError, r"tea\.cosine_scale: must be > 0"),
    case(
        "config-agcl-scale-zero",
        dict(lpt={"agcl": {"scale": 0}}),
        ConfigError,
        r"lpt\.agcl\.scale: must be > 0\.0, got 0",
    ),
    case(
        "config-agcl-margin-negative",
        dict(lpt={"agcl": {"margin": -50}}),
        ConfigError,
        r"lpt\.agcl\.margin: must be >= 0\.0, got -50",
    ),
    case(
        "config-agcl-focusing-negative",
        dict(tea={"agcl": {"class_balanced": [0, -1]}}),
        ConfigError,
        r"tea\.agcl\.class_balanced\[1\]: must be >= 0",
    ),
    case(
        "config-head-dropout-one",
        dict(lpt={"head_dropout": 1.0}),
        ConfigError,
        r"lpt\.head_dropout: must be < 1\.0, got 1\.0",
    ),
    case(
        "config-num-workers-unbounded",
        dict(data={"num_workers": 10000}),
        ConfigError,
        r"data\.num_workers: must be <= 64, got 10000",
    ),
    case("config-workers-unbounded", dict(workers=10000), ConfigError, r"workers: must be <= 64, got 10000"),
    case("config-knn-k-unbounded", dict(vpt_study={"knn_k": 10**9}), ConfigError, r"vpt_study\.knn_k: must be <= 1000"),
    case(
        "config-test-resize-ratio-unbounded",
        dict(data={"test_resize_ratio": 1000}),
        ConfigError,
        r"data\.test_resize_ratio: must be <= 2\.0, got 1000",
    ),
    case(
        "config-image-size-unbounded",
        dict(data={"image_size": 100000}),
        ConfigError,
        r"data\.image_size: must be <= 1024",
    ),
    case(
        "config-pool-size-unbounded",
        dict(lpt={"pool_size": 10**7}),
        ConfigError,
        r"lpt\.pool_size: must be <= 4096, got 10000000",
    ),
    case(
        "config-tea-bottleneck-unbounded",
        dict(tea={"bottleneck": 10**6}),
        ConfigError,
        r"tea\.bottleneck: must be <= 4096, got 1000000",
    ),
    case(
        "config-lptpp-bottleneck-unbounded",
        dict(lptpp={"bottleneck": 10**6}),
        ConfigError,
        r"lptpp\.bottleneck: must be <= 4096",
    ),
    case(
        "config-scorer-hidden-unbounded",
        dict(lptpp={"scorer": {"hidden": 10**6}}),
        ConfigError,
        r"lptpp\.scorer\.hidden: must be <= 4096",
    ),
    case("config-lora-rank-unbounded", dict(tea={"lora_rank": 10**6}), ConfigError, r"tea\.lora_rank: must be <= 4096"),
    case("config-seed-beyond-numpy", dict(seed=2**32), ConfigError, r"seed: must be <= 2147483647, got 4294967296"),
    case(
        "config-split-seed-beyond-numpy",
        dict(data={"split_seed": 2**40}),
        ConfigError,
        r"data\.split_seed: must be <= 2147483647",
    ),
    case(
        "config-seeds-beyond-numpy",
        dict(seeds={"tea": [0, 2**33]}),
        ConfigError,
        r"seeds\.tea\[1\]: must be <= 2147483647",
    ),
    case(
        "config-pretrain-seed-beyond-numpy",
        dict(pretrain={"seed": 2**32}),
        ConfigError,
        r"pretrain\.seed: must be <= 2147483647",
    ),
    case(
        "config-template-positional-placeholder",
        dict(tea={"templates": ["{name} {0}"]}),
        ConfigError,
        r"tea\.templates: template '\{name\} \{0\}' cannot be filled with a class name \(IndexError",
    ),
    case(
        "config-template-unknown-placeholder",
        dict(lptpp={"templates": ["a {name} of {kind}"]}),
        ConfigError,
        r"lptpp\.templates: template .* cannot be filled with a class name \(KeyError: 'kind'\).*'\{\{' and '\}\}'",
    ),
    case(
        "config-template-unbalanced-brace",
        dict(pretrain={"caption_templates": ["a {name} }"]}),
        ConfigError,
        r"pretrain\.caption_templates: template 'a \{name\} \}' cannot be filled",
    ),
    # vpt_study
    case(
        "config-vpt-prompt-length",
        dict(vpt_study={"prompt_length": -1}),
        ConfigError,
        r"vpt_study\.prompt_length: must be >= 1, got -1",
    ),
    case(
        "config-vpt-sampling-mode",
        dict(vpt_study={"samplings": ["square_root"]}),
        ConfigError,
        r"vpt_study\.samplings\[0\]: 'square_root' is not one of: instance_balanced, class_balanced",
    ),
    case(
        "config-vpt-no-sampling",
        dict(vpt_study={"samplings": []}),
        ConfigError,
        r"vpt_study\.samplings: give at least one sampling mode",
    ),
    case(
        "config-vpt-prompt-form",
        dict(vpt_study={"prompt_form": "prefix"}),
        ConfigError,
        r"vpt_study\.prompt_form: 'prefix' is not one of: kv, concat",
    ),
    case(
        "config-vpt-epochs",
        dict(vpt_study={"vpt_deep": {"epochs": -2}}),
        ConfigError,
        r"vpt_study\.vpt_deep\.epochs: must be >= 1",
    ),
    case(
        "config-train-zero-epochs",
        dict(tea={"lora": {"epochs": 0}}),
        ConfigError,
        r"tea\.lora\.epochs: must be >= 1, got 0",
    ),
    case(
        "config-resume-typo",
        dict(lpt={"resume": "atuo"}),
        ConfigError,
        r"lpt\.resume: 'atuo' is neither 'auto', 'never' nor an existing checkpoint file \(did you mean 'auto'\?\)",
    ),
    case(
        "config-inf",
        dict(lpt={"stage1": {"lr": float("inf")}}),
        ConfigError,
        r"lpt\.stage1\.lr: expected a finite number, got inf",
    ),
    case(
        "config-vpt-backbone-role",
        dict(vpt_study={"backbone": "audio"}),
        ConfigError,
        r"vpt_study\.backbone: 'audio' is not one of: visual, vision_language",
    ),
    # lpt
    case(
        "config-lpt-top-k-above-pool",
        dict(lpt={"top_k": 21}),
        ConfigError,
        r"lpt\.top_k: 21 keys cannot be picked from a pool of 20",
    ),
    case("config-lpt-share-blocks", dict(lpt={"share_blocks": -1}), ConfigError, r"lpt\.share_blocks: must be >= 0"),
    case("config-lpt-epochs", dict(lpt={"stage2": {"epochs": -1}}), ConfigError, r"lpt\.stage2\.epochs: must be >= 1"),
    # tea
    case(
        "config-tea-gate-max-above-1",
        dict(tea={"gate_max": 1.5}),
        ConfigError,
        r"tea\.gate_max: must be <= 1\.0, got 1\.5",
    ),
    case(
        "config-tea-gate-max-below-0",
        dict(tea={"gate_max": -0.5}),
        ConfigError,
        r"tea\.gate_max: must be >= 0\.0, got -0\.5",
    ),
    case(
        "config-tea-matrix-peft",
        dict(tea={"matrix": {"peft": ["vpt_deep", "ssf"]}}),
        ConfigError,
        r"tea\.matrix\.peft\[1\]: 'ssf' is not one of: vpt_deep, adaptformer, lora",
    ),
    case(
        "config-tea-matrix-loss",
        dict(tea={"matrix": {"loss": ["ldam"]}}),
        ConfigError,
        r"tea\.matrix\.loss\[0\]: 'ldam' is not one of: ce, la, bs, agcl",
    ),
    case(
        "config-tea-matrix-repeats",
        dict(tea={"matrix": {"loss": ["ce", "ce"]}}),
        ConfigError,
        r"tea\.matrix\.loss: \['ce', 'ce'\] repeats a value",
    ),
    case(
        "config-tea-matrix-variant",
        dict(tea={"matrix": {"tea": ["pea_tec"]}}),
        ConfigError,
        r"tea\.matrix\.tea\[0\]: 'pea_tec' is not one of: none, pea, pea_pg, pea_pg_tec",
    ),
    case(
        "config-tea-matrix-empty",
        dict(tea={"matrix": {"peft": []}}),
        ConfigError,
        r"tea\.matrix\.peft: give at least one value",
    ),
    case(
        "config-tea-template-placeholder",
        dict(tea={"templates": ["a photo"]}),
        ConfigError,
        r"tea\.templates: template 'a photo' has no '\{name\}' placeholder",
    ),
    case(
        "config-tea-no-templates",
        dict(tea={"templates": []}),
        ConfigError,
        r"tea\.templates: give at least one template",
    ),
    case(
        "config-tea-sampling",
        dict(tea={"sampling": "square_root"}),
        ConfigError,
        r"tea\.sampling: 'square_root' is not one of: instance_balanced, class_balanced",
    ),
    case(
        "config-tea-head-init",
        dict(tea={"head_init": "zeros"}),
        ConfigError,
        r"tea\.head_init: 'zeros' is not one of: text, class_mean",
    ),
    # lptpp
    case(
        "config-lptpp-expert",
        dict(lptpp={"experts": ["visual", "text"]}),
        ConfigError,
        r"lptpp\.experts\[1\]: 'text' is not one of: visual, vision_language",
    ),
    case(
        "config-lptpp-expert-repeats",
        dict(lptpp={"experts": ["visual", "visual"]}),
        ConfigError,
        r"lptpp\.experts: \['visual', 'visual'\] repeats an expert",
    ),
    case(
        "config-lptpp-no-experts", dict(lptpp={"experts": []}), ConfigError, r"lptpp\.experts: give at least one expert"
    ),
    case(
        "config-lptpp-template",
        dict(lptpp={"templates": ["{label}"]}),
        ConfigError,
        r"lptpp\.templates: template '\{label\}' has no '\{name\}' placeholder",
    ),
    # a notebook's first line validates before it writes anything (the papermill run: test_notebooks.py)
    case(
        "stage-start-validates-first",
        lambda w: _stage_start(w, pretrain={"vit_mini": {"epochs": -3}}),
        ConfigError,
        r"pretrain\.vit_mini\.epochs: must be >= 1, got -3",
    ),
    # papermill's injected cell: values for the declared names only (the papermill runs: test_notebooks.py)
    case(
        "papermill-parameter-typo",
        lambda w: _injected("metrics_pth = 'm.json'\n"),
        ConfigError,
        r"papermill parameter 'metrics_pth' is not a parameter of this notebook \(did you mean 'metrics_path'\?\); "
        r"its parameters: fig_dir, metrics_path, out_dir, overrides, params, stage1_path",
    ),
    case(
        "papermill-parameter-params-key",
        lambda w: _injected("sed = 1\n"),
        ConfigError,
        r"'sed' .* \(did you mean the params\.yaml key 'seed'\? set it through `overrides`, e\.g\. -y "
        r"'\{overrides: \{seed: \.\.\.\}\}'\)",
    ),
    case(
        "papermill-parameter-params-section",
        lambda w: _injected("data = {'root': '/x'}\n"),
        ConfigError,
        r"'data' is not a parameter of this notebook \('data' is a params\.yaml key: set it through `overrides`.*"
        r"never `-f params\.yaml`",
    ),
    case(
        "papermill-parameter-code-value",
        lambda w: _injected("out_dir = __import__('os').getcwd()\n"),
        ConfigError,
        r"papermill parameter 'out_dir' is code, not a value",
    ),
    case(
        "papermill-parameter-code-statement",
        lambda w: _injected("import os; os.system('touch x'); y = 1\n"),
        ConfigError,
        r"papermill's injected parameters hold code, not a value: 'import os'",
    ),
    case(
        "papermill-parameter-not-a-name",
        lambda w: _injected("a-b = 1\n"),
        ConfigError,
        r"papermill's injected parameters are not plain assignments",
    ),
    # ----------------------------------------------------------------------------------------- presets
    case(
        "preset-unknown",
        lambda w: _preset(w, "places", []),
        ConfigError,
        r"preset: unknown preset 'places'; available: cifar100_lt, .*places_lt",
    ),
    case(
        "preset-missing-required-key",
        lambda w: _preset(w, "places_lt", []),
        ConfigError,
        r"data\.root: places_lt needs the folder",
    ),
    case(
        "preset-set-not-key-value",
        lambda w: _preset(w, "miniature", ["data.root"]),
        ConfigError,
        r"--set 'data\.root': expected key=value, e\.g\. data\.root=/data/places365",
    ),
    case(
        "preset-set-unknown-section",
        lambda w: _preset(w, "miniature", ["dta.root=/x"]),
        ConfigError,
        r"dta: unknown params\.yaml section \(did you mean 'data'\?\)",
    ),
    case(
        "preset-set-through-a-value",
        lambda w: _preset(w, "miniature", ["data.root.x=/x"]),
        ConfigError,
        r"data\.root: expected a string, got dict",
    ),
    case(
        "preset-set-unknown-nested-key",
        lambda w: _preset(w, "miniature", ["lpt.stage1.lrr=0.1"]),
        ConfigError,
        r"lpt\.stage1\.lrr: unknown key \(did you mean 'lr'\?\)",
    ),
    case(
        "preset-value-out-of-range-names-the-preset",
        lambda w: _own_preset(w, "lpt: {stage1: {epochs: 0}}\n"),
        ConfigError,
        r"lpt\.stage1\.epochs: must be >= 1, got 0 \(set by preset own\)",
    ),
    case(
        "preset-unknown-key",
        lambda w: _own_preset(w, "lpt: {stage_1: {epochs: 3}}\n"),
        ConfigError,
        r"lpt\.stage_1: unknown key \(did you mean 'stage1'\?\).*\(set by preset own\)",
    ),
    case(
        "preset-names-preset",
        lambda w: _own_preset(w, "preset: miniature\n"),
        ConfigError,
        r"own\.yaml: a preset must not name `preset`",
    ),
    case(
        "preset-not-a-mapping",
        lambda w: _own_preset(w, "- 1\n"),
        ConfigError,
        r"own\.yaml: a preset is a mapping of params\.yaml sections, got list",
    ),
    case(
        "params-preset-not-a-name",
        lambda w: config.compose({"preset": 3}),
        ConfigError,
        r"preset: expected a preset name, got int 3",
    ),
    case(
        "params-top-level-not-a-mapping",
        lambda w: config.compose([1, 2]),
        ConfigError,
        r"params: expected a mapping of params\.yaml sections",
    ),
    case(
        "preset-set-unknown-key",
        lambda w: _preset(w, "miniature", ["data.nme=x"]),
        ConfigError,
        r"data\.nme: unknown key",
    ),
    # ----------------------------------------------------------------------------------------------- data
    case(
        "data-fashion-mnist-missing",
        _missing_fashion_mnist,
        DataError,
        r"(?s)Fashion-MNIST not found\..*/env/fashion-mnist\n.*/debian\n.*Fix: `sudo "
        r"apt-get install dataset-fashion-mnist`.*data\.download: true",
    ),
    case(
        "data-root-missing",
        lambda w: _fashion_mnist_root(w, -1),
        DataError,
        r"(?s)data\.root '.*/root': the Fashion-MNIST idx files are not there \(it does not exist\).*"
        r"set data\.root: null to use the installed copy.*another copy is never used in its place",
    ),
    case(
        "data-root-empty",
        lambda w: _fashion_mnist_root(w, 0),
        DataError,
        r"data\.root '.*/root': the Fashion-MNIST idx files are not there \(it holds none of them\)",
    ),
    case(
        "data-root-three-of-four",
        lambda w: _fashion_mnist_root(w, 3),
        DataError,
        r"data\.root .*: the Fashion-MNIST idx files are not there \(.*/root holds 3 of the 4 files \(missing: "
        r"t10k-labels-idx1-ubyte\)\)",
    ),
    case(
        "data-root-not-installed-over",
        lambda w: ensure_fashion_mnist(str(w.tmp / "nowhere"), prefix=lambda: pytest.fail("would install")),
        DataError,
        r"data\.root '.*/nowhere': the Fashion-MNIST idx files are not there",
    ),
    case(
        "data-idx-bad-magic",
        lambda w: read_idx(_write(w.tmp / "x-idx3-ubyte", b"\x00\x00\x09\x03" + b"\x00" * 12)),
        DataError,
        r"x-idx3-ubyte: not an unsigned-byte idx1/idx3 file \(bad magic number\)",
    ),
    case(
        "data-idx-truncated",
        lambda w: read_idx(_write(w.tmp / "s-idx1-ubyte", bytes([0, 0, 8, 1, 0, 0, 0, 10, 0, 0, 0]))),
        DataError,
        r"header says shape \(10,\) but the file holds 3 bytes",
    ),
    case(
        "data-idx-damaged-gzip",
        lambda w: read_idx(_write(w.tmp / "d-idx1-ubyte.gz", b"not gzip")),
        DataError,
        r"d-idx1-ubyte\.gz: cannot read .*the file is damaged, reinstall it",
    ),
    case(
        "data-fashion-mnist-counts-differ",
        lambda w: build_data(parse(data={"root": str(w.fashion_mnist(labels_short=True))}).data),
        DataError,
        r"Fashion-MNIST image and label counts differ",
    ),
    case(
        "data-fashion-mnist-train-label-out-of-range",
        lambda w: build_data(parse(data={"root": str(w.fashion_mnist(bad_label="train"))}).data),
        DataError,
        r"train-labels-idx1-ubyte\.gz: 1 labels outside 0\.\.9 \(the first at index 59: 10\); the file is damaged",
    ),
    case(
        "data-fashion-mnist-test-label-out-of-range",
        lambda w: build_data(parse(data={"root": str(w.fashion_mnist(bad_label="t10k"))}).data),
        DataError,
        r"t10k-labels-idx1-ubyte\.gz: 1 labels outside 0\.\.9 \(the first at index 9: 10\)",
    ),
    case(
        "data-image-size-not-the-backbones",
        lambda w: build_transforms(parse(data={"image_size": 32}).data, w.vit().normalization),
        ConfigError,
        r"data\.image_size: 32, but the backbone takes 28-pixel images; set data\.image_size: 28",
    ),
    case(
        "data-miniature-pool-too-small",
        lambda w: build_data(parse(data={"root": str(w.fashion_mnist()), "n_max": 3, "imbalance": 1}).data),
        DataError,
        r"class 0: n_max/val_per_class ask for 103 images but the target pool has 3; lower data\.n_max or "
        r"data\.val_per_class",
    ),
    case(
        "data-cifar100-missing",
        lambda w: build_data(parse(data={"name": "cifar100_lt", "root": str(w.tmp)}).data),
        DataError,
        r"CIFAR-100 not found or corrupted under .*Fix: point data\.root at the folder that contains "
        r"cifar-100-python/",
    ),
    case(
        "data-cifar100-class-too-small",
        lambda w: lt_subsample(np.array([0, 0, 1]), [3, 1]),
        DataError,
        r"class 0: 3 images asked for, 2 available",
    ),
    case(
        "data-split-file-missing",
        lambda w: build_data(parse(data={"name": "imagenet_lt", "root": str(w.tmp), "split_dir": str(w.tmp)}).data),
        DataError,
        r"split file .*ImageNet_LT_train\.txt does not exist; set data\.split_dir to the folder holding it",
    ),
    case(
        "data-split-line-without-label",
        lambda w: read_split_file(_write(w.tmp / "Places_LT_train.txt", "train/a/1.jpg 0\n\ntrain/a/2.jpg\n")),
        DataError,
        r"Places_LT_train\.txt:3: expected '<relative/path> <label>' with a label >= 0, got "
        r"'train/a/2\.jpg'",
    ),
    case(
        "data-split-line-bad-label",
        lambda w: read_split_file(_write(w.tmp / "Places_LT_val.txt", "train/a/1.jpg zero\n")),
        DataError,
        r"Places_LT_val\.txt:1: expected '<relative/path> <label>'",
    ),
    case(
        "data-split-file-empty",
        lambda w: read_split_file(_write(w.tmp / "Places_LT_test.txt", "\n\n")),
        DataError,
        r"split file .*Places_LT_test\.txt lists no images",
    ),
    case(
        "data-wrong-image-root",
        lambda w: build_data(parse(data={**w.oltr(), "root": str(w.tmp / "elsewhere")}).data),
        DataError,
        r"train/a/0\.jpg does not exist: data\.root \(.*elsewhere\) must be the folder the split-file "
        r"paths are relative to",
    ),
    case(
        "data-split-label-only-in-test",
        lambda w: build_data(parse(data=w.oltr(test_lines=("train/a/0.jpg 0", "test/d/0.jpg 3"))).data),
        DataError,
        r"split files in .*splits: labels 3 are in val/test but have no training image \(labels are class ids "
        r"0\.\.C-1; train has 3 distinct labels\)",
    ),
    case(
        "data-split-label-huge",
        lambda w: build_data(
            parse(
                data=w.oltr(train_lines=("train/a/0.jpg 0", "train/z/0.jpg 99999999"), test_lines=("t/0.jpg 0",))
            ).data
        ),
        DataError,
        r"split files in .*: the largest label is 99999999, over 100,000 classes",
    ),
    case(
        "data-split-labels-only-in-val",
        lambda w: build_data(
            parse(data=w.oltr(test_lines=("v/b/0.jpg 1", "v/d/0.jpg 3", "v/e/0.jpg 4", "v/g/0.jpg 6"))).data
        ),
        DataError,
        r"labels 3-4, 6 are in val/test but have no training image",
    ),
    case(
        "preflight-class-without-training-image",
        lambda w: preflight(
            parse(
                data=w.oltr(train_lines=("train/a/0.jpg 0", "train/c/0.jpg 2"), test_lines=("t/0.jpg 0",)),
                lpt={"arms": []},
                tea={"head_init": "random"},
            )
        ),
        PreflightError,
        r"tea member vpt_deep-la-none: every class needs at least one training image for a frequency-aware loss",
    ),
    case(
        "data-split-path-leaves-root",
        lambda w: build_data(parse(data=w.oltr(test_lines=("train/a/0.jpg 0", "../../etc/passwd 1"))).data),
        DataError,
        r"val split in .*splits: path '\.\./\.\./etc/passwd' leaves data\.root \(paths are relative to it, without '\.\.'\)",
    ),
    case(
        "data-signature-image-missing",
        lambda w: FileListDataset(w.tmp, ["train/a/gone.jpg"], [0]).content_digest(),
        DataError,
        r".*train/a/gone\.jpg: no such file .*: an image listed in the split file is missing; is data\.root the folder",
    ),
    case(
        "data-signature-weights-missing",
        lambda w: signature(
            parse(backbones={"visual": {"name": "vit-mini", "weights": str(w.tmp / "gone.safetensors")}})
        ),
        DataError,
        r"gone\.safetensors: no such file \(a data or weight file the run reads\)",
    ),
    case(
        "data-listed-image-missing",
        lambda w: FileListDataset(w.tmp, ["train/a/gone.jpg"], [0]).load(0),
        DataError,
        r"image .*train/a/gone\.jpg listed in the split file does not exist; is data\.root the folder",
    ),
    case(
        "data-classnames-count",
        lambda w: build_data(
            parse(data={**w.oltr(), "classnames_file": str(_write(w.tmp / "names.txt", "air field\nalley way\n"))}).data
        ),
        DataError,
        r"names\.txt has 2 names; the dataset has 3 classes \(one name per line, in label order\)",
    ),
    case(
        "data-classnames-file-missing",
        lambda w: build_data(parse(data={**w.oltr(), "classnames_file": str(w.tmp / "none.txt")}).data),
        DataError,
        r"data\.classnames_file .*none\.txt does not exist",
    ),
    case(
        "data-inat-json-malformed",
        lambda w: build_data(
            parse(
                data={
                    "name": "inat2018",
                    "root": str(w.tmp),
                    "split_dir": str(_write(w.tmp / "train2018.json", "{}").parent),
                }
            ).data
        ),
        DataError,
        r"train2018\.json: not an iNaturalist 2018 annotation file \(KeyError",
    ),
    case(
        "data-images-labels-differ",
        lambda w: ArrayDataset(np.zeros((3, 28, 28)), [0, 1]),
        ValueError,
        r"3 images but 2 labels",
    ),
    case("data-profile", lambda w: lt_counts(500, 0.5, 10), ValueError, r"need n_max >= 1, imbalance >= 1"),
    case(
        "data-interpolation",
        lambda w: Normalization((0.5,) * 3, (0.5,) * 3, "lanczos5"),
        ValueError,
        r"interpolation 'lanczos5': use one of .*bicubic",
    ),
    case(
        "data-sampling-mode",
        lambda w: make_sampler("square_root", np.array([0, 1])),
        ValueError,
        r"unknown sampling mode 'square_root'; use one of instance_balanced, class_balanced",
    ),
    case(
        "data-class-aware-samples-per-class",
        lambda w: ClassAwareSampler([0, 1], num_samples_cls=0),
        ValueError,
        r"num_samples_cls must be >= 1, got 0",
    ),
    # ------------------------------------------------------------------------------------------- metrics
    case(
        "metrics-shot-convention",
        lambda w: shot_groups([1, 2], "bbn"),
        ValueError,
        r"unknown shot convention 'bbn'; use one of decoupling",
    ),
    case(
        "metrics-shape",
        lambda w: per_class_accuracy([0, 1], [0], 2),
        ValueError,
        r"preds \(2,\) and labels \(1,\) differ in shape",
    ),
    # ------------------------------------------------------------------------------------------- weights
    case(
        "weights-file-missing",
        lambda w: create_backbone(BackboneConfig("vit-mini", str(w.tmp / "nothing.safetensors"))),
        WeightsError,
        r"weight file .*nothing\.safetensors does not exist\. For the miniature backbones run the "
        r"pretraining stage \(`dvc repro pretrain`\)",
    ),
    case(
        "weights-file-of-another-backbone",
        lambda w: create_backbone(BackboneConfig("clip-mini", str(w.vit_file()))),
        WeightsError,
        r"(?s)does not match the model:\n  missing keys: ln_final\.bias.*\n  unexpected keys: "
        r"blocks\.0\.attn\.proj\.bias.*\(80 in all\)\n  Is the file for this backbone name",
    ),
    case(
        "weights-missing-and-unexpected-keys",
        lambda w: create_backbone(
            BackboneConfig(
                "vit-mini",
                str(
                    w.edited_vit_file(
                        lambda s: (s.pop("blocks.3.attn.qkv.weight"), s.update({"blocks.0.extra": torch.zeros(1)}))
                    )
                ),
            )
        ),
        WeightsError,
        r"missing keys: blocks\.3\.attn\.qkv\.weight\n  unexpected keys: blocks\.0\.extra",
    ),
    case(
        "weights-shape-mismatch",
        lambda w: create_backbone(
            BackboneConfig(
                "vit-mini", str(w.edited_vit_file(lambda s: s.update(pos_embed=torch.zeros(1, 50, 128)), suffix=".pth"))
            )
        ),
        WeightsError,
        r"shape mismatches: pos_embed \(1, 50, 128\) vs model \(1, 17, 128\)",
    ),
    case(
        "weights-pickled-code",
        lambda w: load_weight_file(_evil_pickle(w)),
        WeightsError,
        r"(?s)evil\.pth: cannot be read safely as a tensor file .*Save weights as safetensors",
        marks=pytest.mark.filterwarnings("ignore:Detected pickle protocol"),
    ),
    case(
        "weights-not-tensors",
        lambda w: load_weight_file(torch.save({"x": [1, 2]}, w.tmp / "x.pth") or w.tmp / "x.pth"),
        WeightsError,
        r"x\.pth: expected a mapping of parameter names to tensors",
    ),
    case(
        "weights-damaged-safetensors",
        lambda w: load_weight_file(_write(w.tmp / "bad.safetensors", b"garbage")),
        WeightsError,
        r"bad\.safetensors: not a readable safetensors file",
    ),
    case(
        "weights-timm-hub-offline",
        lambda w: _hub(w, timm, BackboneConfig("timm:vit_base_patch16_224.augreg_in21k", "hub")),
        WeightsError,
        r"could not get timm weights 'vit_base_patch16_224\.augreg_in21k' from the hub \(OSError: no "
        r"network\)\. Without a network, download the weight file elsewhere and set weights to its path",
    ),
    case(
        "weights-open-clip-hub-offline",
        lambda w: _hub(w, open_clip, BackboneConfig("open_clip:ViT-B-16", "hub", "openai")),
        WeightsError,
        r"could not get open_clip weights ViT-B-16/openai from the hub .*set weights to its path",
    ),
    case(
        "weights-timm-not-cls-pooled",
        lambda w: Backbone(
            timm.create_model(VIT_MINI, global_pool="avg"), "vit-gap", "timm", Normalization((0.5,) * 3, (0.5,) * 3)
        ),
        WeightsError,
        r"vit-gap: only CLS-token ViTs \(global_pool='token'\) are supported",
    ),
    case(
        "backbone-text-of-visual-only",
        lambda w: w.vit().encode_text(["x"]),
        TypeError,
        r"vit-mini is a visual-only backbone; it has no text tower",
    ),
    case(
        "backbone-text-head-of-visual-only",
        lambda w: text_head_weights(w.vit(), ["a"], ("a {name}.",)),
        TypeError,
        r"visual-only",
    ),
    # ------------------------------------------------------------------------------- PEFT modules, heads
    case("peft-prompt-length", lambda w: DeepPrompts(12, -1, 8), ValueError, r"prompt length must be >= 0, got -1"),
    case("peft-lora-rank", lambda w: LoRA(8, 0), ValueError, r"LoRA rank must be >= 1, got 0"),
    case(
        "peft-prompt-form-block",
        lambda w: tuned_block(torch.nn.Identity(), torch.zeros(1, 2, 3), torch.zeros(1, 1, 3), "prefix"),
        ValueError,
        r"unknown prompt form 'prefix'; use one of kv, concat",
    ),
    case(
        "peft-prompt-form-run",
        lambda w: run_blocks([torch.nn.Identity()], torch.zeros(1, 2, 8), form="prefix"),
        ValueError,
        r"unknown prompt form 'prefix'",
    ),
    case(
        "peft-kv-form-unsupported-block",
        lambda w: tuned_block(torch.nn.Identity(), torch.zeros(1, 2, 3), torch.zeros(1, 1, 3), "kv"),
        NotImplementedError,
        r"the kv prompt form is not defined for Identity blocks; use prompt_form: concat",
    ),
    case(
        "peft-adapter-unsupported-block",
        lambda w: tuned_block(torch.nn.Identity(), torch.zeros(1, 2, 8), adapter=AdaptFormer(8, 2)),
        NotImplementedError,
        r"adapters and LoRA is not defined for Identity blocks",
    ),
    case("head-kind", lambda w: build_head("mlp", 4, 3), ValueError, r"unknown head 'mlp'; use one of linear, cosine"),
    # -------------------------------------------------------------------------------------------- losses
    case("loss-unknown", lambda w: build_loss("ldam", [3, 1]), ValueError, r"unknown loss 'ldam'; use one of .*agcl"),
    case("loss-without-counts", lambda w: build_loss("la"), ValueError, r"loss 'la' needs the training class counts"),
    case(
        "loss-empty-class",
        lambda w: build_loss("bs", [3, 0]),
        ValueError,
        r"every class needs at least one training image for a frequency-aware loss",
    ),
    # ------------------------------------------------------------------- training engine and checkpoints
    case(
        "engine-non-finite-loss-check",
        lambda w: check_finite(torch.tensor(float("nan")), 3, 17),
        NonFiniteLossError,
        r"non-finite loss nan at epoch 3, step 17; lower the learning rate or check the inputs",
    ),
    case(
        "engine-non-finite-loss-fit",
        lambda w: fit_classifier(
            w.engine().model(),
            *w.engine().loaders,
            lambda m, b, e: m(b[0]).sum() * float("nan"),
            resume="never",
            **w.engine().kw,
        ),
        NonFiniteLossError,
        r"non-finite loss nan at epoch 0, step 0; .*the last checkpoint is kept",
    ),
    case(
        "checkpoint-missing",
        lambda w: fit_classifier(
            w.engine().model(), *w.engine().loaders, _ce, resume=str(w.tmp / "missing.pt"), **w.engine().kw
        ),
        CheckpointError,
        r"resume checkpoint .*missing\.pt does not exist",
    ),
    case(
        "checkpoint-other-config",
        lambda w: _resume(w, lr=0.1),
        CheckpointError,
        r"engine\.pt was made by other code, settings or data \(differs in: optim\.lr\)",
    ),
    case(
        "checkpoint-other-model",
        lambda w: _resume(w, model=w.engine().model(prompt_length=5)),
        CheckpointError,
        r"other code, settings or data \(differs in: .*shapes\.prompts",
    ),
    case(
        "checkpoint-other-starting-state",
        lambda w: _resume(w, model=_other_start(w)),
        CheckpointError,
        r"other code, settings or data \(differs in: initial_state\)",
    ),
    # ----------------------------------------------------------------------------- LPT and LPT stage-1
    case(
        "lpt-top-k",
        lambda w: LPT(w.vit(), 10, stage=2, top_k=21),
        ValueError,
        r"lpt\.top_k must be between 1 and lpt\.pool_size \(20\), got 21",
    ),
    case(
        "lpt-share-blocks",
        lambda w: LPT(w.vit(), 10, stage=2, share_blocks=12),
        ValueError,
        r"lpt\.share_blocks \(K\) must be in \[0, 5\] for a 6-block backbone",
    ),
    case("lpt-stage", lambda w: LPT(w.vit(), 10, stage=3), ValueError, r"LPT has stages 1 and 2, got 3"),
    case(
        "lpt-stage1-prompt-length",
        lambda w: LPT(w.vit(), 10, stage=2).load_stage1_state(
            LPT(w.vit(), 10, stage=1, prompt_length=5).stage1_state()
        ),
        ValueError,
        r"shared_prompts\.prompts: \(6, 5, 128\) vs this model's \(6, 10, 128\)",
    ),
    case(
        "lpt-stage1-classes",
        lambda w: LPT(w.vit(), 10, stage=2).load_stage1_state(LPT(w.vit(), 7, stage=1).stage1_state()),
        ValueError,
        r"head\.weight: \(7, 128\) vs this model's \(10, 128\)",
    ),
    case(
        "lpt-stage1-adapters",
        lambda w: LPT(w.vit(), 5, stage=2, prompt_length=3, pool_size=4).load_stage1_state(
            LPT(w.vit(), 5, stage=1, prompt_length=3, adapter=True).stage1_state()
        ),
        ValueError,
        r"adapters on in one and off in the other",
    ),
    case(
        "lpt-stage1-file-missing",
        lambda w: load_stage1(LPT(w.vit(), 10, stage=2), w.tmp / "stage1.safetensors"),
        FileNotFoundError,
        r"stage-1 checkpoint .*stage1\.safetensors does not exist; run stage 1 first \(`dvc repro "
        r"lpt_stage1`\)",
    ),
    case(
        "lpt-stage1-of-another-backbone",
        lambda w: load_stage1(LPT(w.clip(), 10, stage=2), w.stage1_file()),
        ValueError,
        r"stage-1 checkpoint .* was trained on backbone 'vit-mini', this run uses 'clip-mini'",
    ),
    # ----------------------------------------------------------------------------- LPT++ experts, caches
    case(
        "expert-missing",
        lambda w: load_expert(_lptpp_phase2(w), w.tmp / "missing.safetensors", w.tiny(), phase=1),
        ExpertError,
        r"expert checkpoint .*missing\.safetensors does not exist; run LPT\+\+ phase 1 first \(`dvc "
        r"repro lptpp_phase1`\)",
    ),
    case(
        "expert-of-another-backbone",
        lambda w: load_expert(_lptpp_phase2(w, "visual"), w.expert_file(), w.tiny(), phase=1),
        ExpertError,
        r"was trained on backbone 'clip-mini', this expert uses 'vit-mini'",
    ),
    case(
        "expert-of-another-class-list",
        lambda w: load_expert(_lptpp_phase2(w), w.expert_file(), w.tiny(("trouser", "t-shirt", "bag")), phase=1),
        ExpertError,
        r"was trained on another class list or label order .*re-run its phases on this data",
    ),
    case(
        "expert-of-another-phase",
        lambda w: load_expert(_lptpp_phase2(w), w.expert_file(), w.tiny(), phase=2),
        ExpertError,
        r"vl-phase1\.safetensors is from phase 1, expected phase 2",
    ),
    case(
        "expert-other-pool-size",
        lambda w: load_expert(_lptpp_phase2(w, pool_size=3), w.expert_file(phase=2), w.tiny(), phase=2),
        ExpertError,
        r"(?s)vl-phase2\.safetensors does not fit this expert: .*size mismatch for group_pool\.keys",
    ),
    case(
        "expert-caches-disagree",
        lambda w: train_scorer(_caches() + _caches((6, 4, 1)), parse()),
        ExpertError,
        r"the experts' caches hold different train labels; rebuild them from the same data",
    ),
    # ------------------------------------------------------------------------------------- TEA members
    case(
        "tea-member-peft",
        lambda w: check_member("prefix", "ce", "none"),
        ConfigError,
        r"unknown PEFT method 'prefix'; use one of vpt_deep, adaptformer, lora",
    ),
    case(
        "tea-member-loss",
        lambda w: check_member("lora", "ldam", "none"),
        ConfigError,
        r"unknown loss 'ldam'; use one of ce, la",
    ),
    case(
        "tea-member-variant",
        lambda w: check_member("lora", "ce", "pg"),
        ConfigError,
        r"unknown TEA variant 'pg'; use one of none, pea, pea_pg, pea_pg_tec",
    ),
    case(
        "tea-model-peft",
        lambda w: build_model(w.clip(), w.tiny(), parse(), "ssf"),
        ConfigError,
        r"unknown PEFT method 'ssf'; use one of vpt_deep",
    ),
    case(
        "tea-variant", lambda w: variant_parts("tec"), ValueError, r"unknown TEA variant 'tec'; use one of .*pea_pg_tec"
    ),
    case(
        "tea-gate-below-0",
        lambda w: gate_probabilities([5, 1], -0.1),
        ValueError,
        r"the gate maximum is a probability and must be in \[0, 1\], got -0\.1",
    ),
    case("tea-gate-above-1", lambda w: gate_probabilities([5, 1], 1.5), ValueError, r"must be in \[0, 1\], got 1\.5"),
    case(
        "tea-classnames-count",
        lambda w: check_classnames(["a", "b"], 3),
        ConfigError,
        r"2 class names for 3 classes; give them with data\.classnames_file",
    ),
    case(
        "tea-classnames-placeholder",
        lambda w: check_classnames(["a", "class 1", "c"], 3),
        ConfigError,
        r"class names missing for labels \[1\] \(empty or a 'class N' placeholder\); give them with "
        r"data\.classnames_file",
    ),
    case(
        "tea-classnames-none",
        lambda w: check_classnames([], 3),
        ConfigError,
        r"needs the class names and the dataset has none; give them with data\.classnames_file",
    ),
    case(
        "tea-model-blank-classname",
        lambda w: build_model(w.clip(), w.tiny(("a", " ", "c")), parse(), "lora"),
        ConfigError,
        r"class names missing for labels \[1\]",
    ),
    case(
        "tea-text-head-on-visual-backbone",
        lambda w: build_model(w.vit(), w.tiny(), parse(), "lora"),
        ConfigError,
        r"tea\.head_init: text needs a vision-language backbone; vit-mini is visual-only \(use "
        r"class_mean or random",
    ),
    case(
        "tea-report-member-missing",
        lambda w: load_members(
            w.tmp, parse(tea={"matrix": {"peft": ["lora"], "loss": ["ce"], "tea": ["none"]}}).tea.matrix, (0,)
        ),
        FileNotFoundError,
        r"no TEA metrics for seed\(s\) 0 in .* \(seed_0\.json\); run them first \(`dvc repro tea@0`\)",
    ),
    # ------------------------------------------------------------------------------- pretraining, paths
    case(
        "pretrain-without-source-pool",
        lambda w: run_pretraining(w.tiny(), parse()),
        ValueError,
        r"vit-mini, clip-mini are pretrained on the miniature's source pool, which fashion_mnist_lt does "
        r"not have",
    ),
    case(
        "pretrain-without-weight-path",
        lambda w: run_pretraining(_with_source(w.tiny()), parse(backbones=RANDOM)),
        ValueError,
        r"backbones: vit-mini needs a weight file path to be saved to, got weights: random",
    ),
    case(
        "pretrain-would-overwrite-users-weights",
        lambda w: run_pretraining(
            _with_source(w.tiny()),
            parse(backbones={"visual": {"name": "vit-mini", "weights": str(_write(w.tmp / "mine.safetensors", b"x"))}}),
        ),
        ValueError,
        r"backbones\.visual\.weights: .*mine\.safetensors exists outside outputs/, so it is yours, and pretraining "
        r"would overwrite it\. Fix: name a path under outputs/",
    ),
    case(
        "stage-lptlib-of-another-clone",
        lambda w: (_clone_marker(w), w.mp.setenv("LPTLIB_ROOT", str(w.tmp / "other")), stage.check_origin()),
        ConfigError,
        r"this run imports lptlib from .* but writes into the repository .*/other \(LPTLIB_ROOT=.*/other\): its "
        r"results would mix two clones' code and outputs\. Fix: run from the clone whose lptlib you use",
    ),
    case(
        "paths-no-repository-root",
        lambda w: (w.mp.delenv("LPTLIB_ROOT", raising=False), repo_root(w.tmp)),
        FileNotFoundError,
        r"no repository root \(a folder with dvc\.yaml and params\.yaml\) at or above .*; run from "
        r"inside the repository or set LPTLIB_ROOT",
    ),
]


FIXED_GAPS = [  # inputs that raised unclear errors when this table was written; fixed since
    case(
        "checkpoint-damaged",
        lambda w: fit_classifier(
            w.engine().model(),
            *w.engine().loaders,
            _ce,
            **w.engine().kw,
            resume=str(_write(w.tmp / "damaged.pt", b"garbage")),
        ),
        CheckpointError,
        r"checkpoint .*damaged\.pt is damaged .*set resume: never to start over",
    ),
    case(
        "stage1-metadata-damaged",
        lambda w: load_stage1(LPT(w.vit(), 10, stage=2), _damaged_metadata(w, "s1.safetensors", "{not json")),
        ValueError,
        r"stage-1 checkpoint .*s1\.safetensors has damaged metadata \(not a JSON mapping: .*\); delete it and re-run",
    ),
    case(
        "expert-metadata-not-a-mapping",
        lambda w: load_expert(_lptpp_phase2(w), _damaged_metadata(w, "e.safetensors", "[1, 2]"), w.tiny(), phase=1),
        ExpertError,
        r"expert checkpoint .*e\.safetensors has damaged metadata \(not a JSON mapping: \[1, 2\]\)",
    ),
    case(
        "expert-classnames-damaged",
        lambda w: load_expert(
            _lptpp_phase2(w),
            _damaged_metadata(w, "e2.safetensors", json.dumps({"backbone": "clip-mini", "classnames": "[oops"})),
            w.tiny(),
            phase=1,
        ),
        ExpertError,
        r"expert checkpoint .*e2\.safetensors has damaged metadata \(its class list is not JSON\)",
    ),
    case(
        "expert-damaged",
        lambda w: load_expert(_lptpp_phase2(w), _write(w.tmp / "e.safetensors", b"garbage"), w.tiny(), phase=1),
        ExpertError,
        r"expert checkpoint .*e\.safetensors is not a readable safetensors file",
    ),
    case(
        "config-nan",
        dict(data={"imbalance": float("nan")}),
        ConfigError,
        r"data\.imbalance: expected a finite number, got nan",
    ),
    case(
        "preset-set-bad-yaml",
        lambda w: _preset(w, "miniature", ["data.root=[x"]),
        ConfigError,
        r"--set 'data\.root=\[x': the value is not valid YAML",
    ),
]


@pytest.mark.parametrize("trigger, error, message", CASES + FIXED_GAPS)
def test_bad_input_fails_with_a_clear_error(trigger, error, message, work):
    with pytest.raises(error, match=message) as info:
        parse(**trigger) if isinstance(trigger, dict) else trigger(work)
    assert type(info.value) is error, f"{type(info.value).__name__}, a subclass of {error.__name__}"


def test_the_table_ids_are_unique_and_it_does_not_shrink():
    ids = [c.id for c in CASES + FIXED_GAPS]
    assert len(ids) == len(set(ids))
    assert len(CASES) >= 141  # it must not shrink (it replaced unit tests that held 106 error cases)


# ============================================================ determinism and resume of a real stage notebook
NOTEBOOK = ROOT / "notebooks" / "02_lpt_stage1.ipynb"
EPOCHS = 3  # about 2 s per epoch on one CPU thread: the kill lands well inside the second epoch
TIMING = re.compile(r"seconds|latency|duration|time", re.I)  # metrics fields that are timings (none here today)


def _params(out: Path) -> dict:
    return {
        "data": {"max_test_per_class": 10, "val_per_class": 5, "n_max": 60, "imbalance": 10},  # 240 train images
        "backbones": {"visual": {"name": "vit-mini", "weights": "random"}},
        "lpt": {"stage1": {"epochs": EPOCHS, "batch_size": 32}, "arms": []},  # stage 1 only
        "out_dir": str(out),
        "stage1_path": str(out / "stage1.safetensors"),
        "metrics_path": str(out / "metrics.json"),
        "fig_dir": str(out / "figures"),
    }


def _start(out: Path) -> subprocess.Popen:
    """papermill on the stage notebook in a new session; one thread, so the runs take one core (and compute alike)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "params.json").write_text(json.dumps(notebook_parameters(NOTEBOOK, **_params(out))))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "LPTLIB_PROGRESS": "0"}
    log = open(out / "papermill.log", "ab")
    try:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "papermill",
                str(NOTEBOOK),
                str(out / "executed.ipynb"),
                "-k",
                "python3",
                "-f",
                str(out / "params.json"),
                "--cwd",
                str(ROOT),
                "--log-level",
                "WARNING",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        log.close()


def _log(out: Path) -> str:
    return (out / "papermill.log").read_text(errors="replace")[-3000:]


def _run(out: Path) -> None:
    proc = _start(out)
    try:
        rc = proc.wait(timeout=300)
    finally:
        _kill_tree(proc)
    assert rc == 0, f"papermill failed ({rc}):\n{_log(out)}"


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # fields: state, ppid, pgrp, ...
            kids.append(int(stat.parent.name))
    return kids


def _tree(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += _children(p)
    return found


def _kill_tree(proc: subprocess.Popen) -> list[int]:
    """SIGKILL the process group of `proc` and of every descendant (jupyter starts the kernel in a session of its
    own, so killing papermill's group alone would leave the kernel training); returns the killed pids."""
    pids = _tree(proc.pid) if proc.poll() is None else []
    groups = set()
    for pid in pids:
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:  # ended meanwhile
            pass
    groups.discard(os.getpgrp())
    for group in sorted(groups, key=lambda g: g != proc.pid):  # the kernel's group first
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while any(process_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(process_alive(p) for p in pids), "processes survived SIGKILL"
    return pids


def _killed_after_first_epoch(out: Path) -> None:
    checkpoint = out / "checkpoints" / "lpt_stage1.pt"  # notebook 02: checkpoints/<row key>.pt
    proc = _start(out)
    deadline = time.monotonic() + 300
    while not checkpoint.exists():  # written atomically (rename) at the end of every epoch
        assert proc.poll() is None, f"papermill ended before the first checkpoint ({proc.returncode}):\n{_log(out)}"
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.02)
    pids = _kill_tree(proc)
    assert proc.returncode == -signal.SIGKILL and len(pids) >= 2, "papermill and its kernel were killed"
    epoch = torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"]
    assert epoch == 0, f"killed after epoch {epoch}: the kill should land before the second epoch ends"
    assert not (out / "metrics.json").exists() and not (out / "stage1.safetensors").exists(), "killed before the end"


def _metrics(path: Path) -> bytes:
    """The metrics file's bytes; with timing fields (none today), the JSON without them."""

    def drop(obj):
        if isinstance(obj, dict):
            return {k: drop(v) for k, v in obj.items() if not TIMING.search(k)}
        return [drop(v) for v in obj] if isinstance(obj, list) else obj

    raw = path.read_bytes()
    doc = json.loads(raw)
    return raw if drop(doc) == doc else json.dumps(drop(doc), sort_keys=True).encode()


def _state(path: Path) -> tuple[dict, bytes]:
    """A safetensors file as (its header, parsed, and the tensor bytes): safetensors writes the metadata keys in
    an order that changes from process to process, so the files of identical states differ in their header bytes."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


@pytest.mark.notebook
def test_stage_is_deterministic_and_resumes_after_sigkill(tmp_path, subtests):
    """Fresh runs A and B, and run C SIGKILLed after its first epoch then re-run with the same command: A == B is
    determinism on CPU, A == C is resume (the metrics JSON byte for byte; the saved stage-1 tensors byte for
    byte, with the same metadata)."""
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _run(a)
    _killed_after_first_epoch(c)
    _run(c)  # the same command again: resume 'auto' continues the checkpoint of epoch 0
    _run(b)
    executed = (c / "executed.ipynb").read_text()
    assert re.search(r"resumed from \S*stage1\.pt after epoch 0", executed), "the re-run did not resume"
    assert "resumed from" not in (a / "executed.ipynb").read_text()
    first = json.loads((a / "metrics.json").read_text())["lpt_stage1"]
    assert 0 <= first["overall"] <= 1 and first["val_best_epoch"] in range(EPOCHS)
    with subtests.test("two fresh runs give identical metrics"):
        assert _metrics(b / "metrics.json") == _metrics(a / "metrics.json")
        assert _state(b / "stage1.safetensors") == _state(a / "stage1.safetensors")
    with subtests.test("the killed and resumed run gives the metrics of an uninterrupted one"):
        assert _metrics(c / "metrics.json") == _metrics(a / "metrics.json")
        assert _state(c / "stage1.safetensors") == _state(a / "stage1.safetensors")
