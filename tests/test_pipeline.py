"""The DVC pipeline on a fresh copy of the repository with tiny parameters: `dvc repro` runs every
stage to completion offline, writes the declared metrics/figures, and leaves nothing out of date."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

ARMS_RUN = ("ladder/linear_head", "lpt_stage1_without/agcl")  # the ladder's first rung and one ablation

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def sh(*args, cwd):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """Tracked and untracked-but-not-ignored files copied into a new git repository (a fresh clone)."""
    dst = tmp_path_factory.mktemp("clone")
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)
    yaml = YAML()
    params = yaml.load((dst / "params.yaml").read_text())

    def section(*keys):  # params.yaml names only the user's keys: create the nested sections the test sets
        node = params
        for key in keys:
            node = node.setdefault(key, {})
        return node

    section("data").update(max_test_per_class=20, val_per_class=10)
    params["seeds"] = {"vpt_study": [0, 1], "vpt_study_probes": [2], "lpt": [0, 1], "tea": [0], "lptpp": [0]}
    params["workers"] = 1
    for run in ("vit_mini", "clip_mini"):
        section("pretrain", run).update(epochs=1, max_images=256, batch_size=64, warmup_steps=1)
    for run in ("linear_probe", "vpt_deep"):
        section("vpt_study", run).update(epochs=1, batch_size=128)
    section("vpt_study").update(feature_images_per_class=5, feature_views=1)
    for run in ("stage1", "stage2"):
        section("lpt", run).update(epochs=1, batch_size=128)
    section("lpt")["arms"] = list(ARMS_RUN)  # two arms: the notebook test runs them all
    section("tea", "lora").update(epochs=1, batch_size=128)
    section("tea")["latency_batches"] = 2
    section("tea", "matrix").update(peft=["lora"], loss=["la"], tea=["none", "pea_pg_tec"])
    for run in ("phase1", "phase2"):
        section("lptpp", run).update(epochs=1, batch_size=128)
    section("lptpp", "scorer")["epochs"] = 2
    with open(dst / "params.yaml", "w") as f:
        yaml.dump(params, f)
    for f in (dst / "metrics").glob("**/*.json"):
        f.unlink()  # a fresh clone of a repo whose metrics were never produced
    sh("git", "init", "-q", cwd=dst)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A", cwd=dst)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "clone", cwd=dst)
    return dst


@pytest.mark.notebook
def test_dvc_repro_from_a_fresh_clone(clone):
    sh("dvc", "repro", cwd=clone)
    data = json.loads((clone / "metrics" / "data.json").read_text())
    pretrain = json.loads((clone / "metrics" / "pretrain.json").read_text())
    assert data["train_images"] == 1_236 and set(pretrain) == {"vit-mini", "clip-mini"}
    for seed in (0, 1):
        study = json.loads((clone / "metrics" / "vpt_study" / f"seed_{seed}.json").read_text())
        assert len(study) == 7 and (clone / "metrics" / "vpt_study_features" / f"seed_{seed}.json").is_file()
        stage1 = json.loads((clone / "metrics" / "lpt_stage1" / f"seed_{seed}.json").read_text())
        assert list(stage1) == [*ARMS_RUN, "lpt_stage1"]
    seed0 = json.loads((clone / "metrics" / "vpt_study" / "seed_0.json").read_text())
    assert seed0 != study  # each seed is its own split and run
    assert (clone / "outputs" / "pretrain" / "vit-mini.safetensors").is_file()
    assert (clone / "figures" / "data" / "class_counts.png").is_file()
    assert _stale(clone) == []  # the grid (tuning/dvc.yaml) is apart
    shown = json.loads(sh("dvc", "metrics", "show", "--json", cwd=clone))
    assert shown  # DVC reads the metrics it declared
    dag = sh("dvc", "dag", "--md", cwd=clone)
    assert all(stage in dag for stage in ("data", "pretrain", "vpt_study@1", "lpt_stage1@1", "lpt_stage2@1"))
    stage2 = json.loads((clone / "metrics" / "lpt_stage2" / "seed_1.json").read_text())
    assert stage2["lpt_stage2"]["key_usage"]
    claims = json.loads((clone / "metrics" / "claims.json").read_text())
    assert claims  # the claims table was written from the per-seed metrics
    assert "tea@0" in dag and "tea_report" in dag and "lptpp_phase3@0" in dag
    tea = json.loads((clone / "metrics" / "tea" / "seed_0.json").read_text())
    assert set(tea) == {"zero_shot_clip", "tea/lora-la-none", "tea/lora-la-pea_pg_tec"}
    report = json.loads((clone / "metrics" / "tea_report.json").read_text())
    assert set(report["members"]) >= {"lora-la-none", "lora-la-pea_pg_tec"}
    assert (clone / "figures" / "tea" / "tea_gains.png").is_file()
    lptpp = json.loads((clone / "metrics" / "lptpp" / "seed_0.json").read_text())
    assert {"lptpp/moe", "lptpp/uniform", "info"} <= set(lptpp)
    report = json.loads((clone / "metrics" / "report.json").read_text())
    assert {"lpt_stage2", "ladder/linear_head", "crt/class_balanced", "lptpp/moe"} <= set(report["rows"])
    assert report["seeds"]["vpt_study"] == [0, 1] and report["seeds"]["vpt_study_probes"] == [2]
    assert report["rows"]["linear_probe/class_balanced"]["seeds"] == [0, 1, 2]  # the probe-only seed merged in
    assert report["rows"]["crt/class_balanced"]["seeds"] == [0, 1]
    assert {p.name for p in (clone / "figures" / "report").iterdir()} == {
        "shot_accuracy.png",
        "claims.png",
        "per_class_vs_count.png",
        "confusion.png",
    }
    assert "report" in dag and "metrics/claims.json" in sh("dvc", "metrics", "show", cwd=clone)
    assert _stale(clone) == []
    again = sh("dvc", "repro", cwd=clone)  # only the data signature runs; unchanged data re-run nothing
    assert "Running stage 'preflight'" in again and again.count("Running stage") == 1, again


def _stale(clone) -> list[str]:
    """Stages `dvc status` lists, apart from `preflight` being 'always changed' (it always runs)."""
    text = sh("dvc", "status", "dvc.yaml", cwd=clone)
    if "up to date" in text:
        return []
    blocks = [b for b in text.replace("\t", "").split("\n") if b.strip()]
    return [b for b in blocks if b.endswith(":") and b != "preflight:"] + [
        b for b in blocks if not b.endswith(":") and b.strip() != "always changed"
    ]
