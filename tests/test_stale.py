"""No stale result: a change to the code, a setting or the data is never answered with a result of the old state.

- DVC: every stage depends on its notebook, the whole `lptlib` package and `presets/` (checked on `dvc.yaml`), and
  `dvc status` reports a stage stale after a one-constant change in `lptlib` (checked with DVC in a copy of the
  repository); interpreter caches (`__pycache__`) do not make a stage stale.
- Resume: a checkpoint made by other code (one constant changed in `lptlib/objectives.py`) or with another data
  setting is not continued, and the new run's metrics are the new code's (checked on notebook 02 in the copy).
- `resume: <path>` continues a checkpoint made at another path when it matches.
- The LPT++ phase-3 cache is keyed like a checkpoint: rebuilt after a test-transform change.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import fit_classifier, notebook_parameters
from torch.nn import functional as F

from lptlib import config

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_every_stage_depends_on_its_notebook_the_package_and_the_presets():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    signature = stages.pop("preflight")  # no notebook: the models checked, the data and weight files digested
    assert signature["always_changed"] and signature["outs"] == ["outputs/data_signature.json"]
    for name, stage in stages.items():
        deps = stage.get("do", stage)["deps"]
        reads_data = name not in ("tea_report", "report")  # these read metrics/ and expert files only
        assert ("outputs/data_signature.json" in deps) == reads_data, f"{name}: the data signature dependency"
    for name, stage in stages.items():
        per_seed = "foreach" in stage
        if per_seed:  # one stage per seed: the seed list comes from params.yaml, the seed from ${item}
            assert stage["foreach"].startswith("${seeds."), name
            stage = stage["do"]
            assert '-y "{overrides: {seed: ${item}}}"' in " ".join(stage["cmd"]), name
        deps = stage["deps"]
        notebooks = [d for d in deps if d.startswith("notebooks/")]
        assert len(notebooks) == 1 and notebooks[0] in " ".join(stage["cmd"]), name
        assert "lptlib" in deps and "presets" in deps, f"{name} must depend on the whole lptlib package and presets/"
        assert not [d for d in deps if d.startswith("lptlib/")], f"{name}: lptlib is one dependency, not a list"
        params = stage.get("params", [])
        sections = {p.split(".", 1)[0] for p in params}
        assert sections <= set(config.SECTIONS), name
        if per_seed:  # a per-seed run depends on neither the top-level seed nor the seed lists nor `workers`
            assert "preset" in params and not sections & {"seed", "seeds", "workers"}, name
        elif name in ("data", "pretrain"):
            assert {"seed", "preset"} <= set(params), name
        else:  # aggregates over seeds: the seed lists (the report reads metrics files only)
            assert "seeds" in sections, name


def _copy_repo(dest: Path) -> Path:
    """The tracked files of this checkout in a new git repository (so DVC and git see a clean clone)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"],
    ):
        subprocess.run(cmd, cwd=dest, check=True, capture_output=True)
    return dest


def _dvc(repo: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    out = subprocess.run([str(BIN / "dvc"), *args], cwd=repo, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def _papermill(repo: Path, out: Path, **overrides) -> str:
    """Notebook 02 (LPT stage 1) of the copy, tiny: one epoch; returns the executed notebook's text."""
    params = {
        "data": {"max_test_per_class": 20, "val_per_class": 5, **overrides.get("data", {})},
        "lpt": {"stage1": {"epochs": 1, "batch_size": 32}, "arms": []},  # stage 1 only
        "out_dir": str(out),
        "stage1_path": str(out / "stage1.safetensors"),
        "metrics_path": str(out / "metrics.json"),
        "fig_dir": str(out / "figures"),
    }
    out.mkdir(parents=True, exist_ok=True)
    params = notebook_parameters(repo / "notebooks" / "02_lpt_stage1.ipynb", **params)
    (out / "params.json").write_text(json.dumps(params))
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "LPTLIB_PROGRESS": "0"}
    env.pop("LPTLIB_ROOT", None)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "papermill",
            "notebooks/02_lpt_stage1.ipynb",
            str(out / "executed.ipynb"),
            "-k",
            "python3",
            "-f",
            str(out / "params.json"),
            "--cwd",
            str(repo),
            "--log-level",
            "WARNING",
        ],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    return (out / "executed.ipynb").read_text()


@pytest.mark.notebook
def test_a_code_change_makes_the_stage_stale_and_is_never_resumed(tmp_path, root_with_pretrained):
    repo = _copy_repo(tmp_path / "repo")
    # lpt_stage1's inputs as DVC sees them: stand-ins for the upstream and own outputs, then a lock of this state
    (repo / "outputs/pretrain").mkdir(parents=True)
    for name in ("vit-mini.safetensors", "clip-mini.safetensors"):
        shutil.copy2(root_with_pretrained / "outputs/pretrain" / name, repo / "outputs/pretrain" / name)
    for out in (
        "outputs/data_signature.json",
        "outputs/nb/lpt_stage1/seed_0.ipynb",
        "outputs/lpt/stage1/seed_0/lpt_stage1.safetensors",
        "outputs/lpt/stage1/seed_0/checkpoints/stage1.pt",
    ):
        (repo / out).parent.mkdir(parents=True, exist_ok=True)
        (repo / out).write_text("stand-in")
    _dvc(repo, "commit", "-f", "lpt_stage1@0")
    assert "up to date" in _dvc(repo, "status", "lpt_stage1@0")

    first = tmp_path / "run"
    _papermill(repo, first)  # also writes lptlib/__pycache__, which DVC ignores
    assert "up to date" in _dvc(repo, "status", "lpt_stage1@0"), "interpreter caches made the stage stale"
    old_metrics = json.loads((first / "metrics.json").read_text())["lpt_stage1"]

    losses = repo / "lptlib" / "objectives.py"
    text = losses.read_text()
    assert "/ 3.0).clamp(-1.0, 1.0)" in text
    losses.write_text(text.replace("/ 3.0).clamp(-1.0, 1.0)", "/ 1.0).clamp(-1.0, 1.0)"))  # A-GCL's cloud
    status = _dvc(repo, "status", "lpt_stage1@0")
    assert "lpt_stage1" in status and "modified:" in status and "lptlib" in status, status

    executed = _papermill(repo, first)  # the same command: resume 'auto' must not continue the old checkpoint
    assert "resumed from" not in executed
    assert "not resuming" in executed and "differs in: code" in executed
    new_metrics = json.loads((first / "metrics.json").read_text())["lpt_stage1"]
    fresh = tmp_path / "fresh"
    _papermill(repo, fresh)  # the new code from scratch: what the re-run must have reported
    assert new_metrics == json.loads((fresh / "metrics.json").read_text())["lpt_stage1"]
    assert new_metrics["per_class"] != old_metrics["per_class"], "the constant changed nothing; pick another"

    executed = _papermill(repo, first, data={"crop_scale": [0.5, 1.0]})  # a data setting
    assert "resumed from" not in executed and "differs in: config.data.crop_scale" in executed


@pytest.fixture(scope="module")
def root_with_pretrained(tmp_path_factory) -> Path:
    """A folder holding outputs/pretrain/{vit-mini,clip-mini}.safetensors (random weights of the miniatures)."""
    from lptlib.models.backbones import BackboneConfig, create_backbone, save_weights

    folder = tmp_path_factory.mktemp("pretrained")
    torch.manual_seed(0)
    for name in ("vit-mini", "clip-mini"):
        backbone = create_backbone(BackboneConfig(name, "random"))
        save_weights(backbone.model, folder / "outputs/pretrain" / f"{name}.safetensors")
    return folder


def _ce(model, batch, epoch):
    return F.cross_entropy(model(batch[0]), batch[1])


def test_resume_from_an_explicit_path_continues_a_matching_checkpoint(tmp_path, capsys):
    from lptlib.data import ArrayDataset, ClassAwareSampler, Normalization, build_transforms, make_loader
    from lptlib.models.backbones import BackboneConfig, create_backbone
    from lptlib.models.peft import PEFTClassifier

    torch.manual_seed(0)
    vit = create_backbone(BackboneConfig("vit-mini", "random"))

    def model():
        torch.manual_seed(0)
        return PEFTClassifier(vit, 3, prompt_length=2)

    y = np.repeat(np.arange(3), [6, 3, 2])
    images = ArrayDataset(np.random.default_rng(0).integers(0, 255, (len(y), 28, 28), dtype=np.uint8), y)
    _, test_tf = build_transforms(config.parse().data, Normalization((0.5,) * 3, (0.5,) * 3))
    loaders = (
        make_loader(images.with_transform(test_tf), 4, ClassAwareSampler(y, 2, seed=0)),
        make_loader(images.with_transform(test_tf), 16),
        make_loader(images.with_transform(test_tf), 16),
    )
    kw = dict(
        epochs=2,
        lr=0.05,
        weight_decay=1e-4,
        momentum=0.9,
        warmup_epochs=1,
        shot_counts=np.array([150, 50, 5]),
        settings={"run": "unit"},
    )
    whole = fit_classifier(model(), *loaders, _ce, checkpoint=tmp_path / "a.pt", resume="never", **kw)
    # a run elsewhere, told to continue a.pt (made by the same code and settings): it resumes and agrees
    moved = fit_classifier(model(), *loaders, _ce, checkpoint=tmp_path / "b.pt", resume=str(tmp_path / "a.pt"), **kw)
    assert f"resumed from {tmp_path / 'a.pt'} after epoch 1" in capsys.readouterr().out
    assert moved.resumed_from_epoch == 1 and moved.test["overall"] == whole.test["overall"]
    # the params.yaml key accepts the path (resume is not part of the fingerprint, so the value can change)
    cfg = config.parse(lpt={"resume": str(tmp_path / "a.pt")})
    assert config.without_resume(cfg) == config.without_resume(config.parse())


def test_lptpp_cache_is_rebuilt_after_a_test_transform_change(tmp_path, capsys):
    from lptlib.data import ArrayDataset, LTData
    from lptlib.models.backbones import BackboneConfig
    from lptlib.recipes.lptpp import build_cache, build_expert, save_expert

    rng = np.random.default_rng(0)
    split = lambda n: ArrayDataset(rng.integers(0, 255, (3 * n, 28, 28), dtype=np.uint8), np.repeat(np.arange(3), n))  # noqa: E731
    data = LTData("fashion_mnist_lt", ["t-shirt", "trouser", "bag"], split(4), split(2), split(2))
    random = {"visual": {"weights": "random"}, "vision_language": {"weights": "random"}}
    assert isinstance(BackboneConfig(), BackboneConfig)
    cfg = config.parse(backbones=random, lpt={"pool_size": 4, "prompt_length": 2})
    torch.manual_seed(0)
    model = build_expert("visual", data, cfg, phase=2)
    expert = save_expert(model, tmp_path / "visual.safetensors", data, phase=2)
    cache = tmp_path / "cache.safetensors"
    first = build_cache(model, "visual", data, cfg, cache, expert)
    again = build_cache(model, "visual", data, cfg, cache, expert)
    assert "reusing the cache" in capsys.readouterr().out and torch.equal(first.logits["test"], again.logits["test"])
    other = config.parse(backbones=random, lpt={"pool_size": 4, "prompt_length": 2}, data={"test_resize_ratio": 1.5})
    build_cache(model, "visual", data, other, cache, expert)
    assert "was built from other config; rebuilding it" in capsys.readouterr().out
