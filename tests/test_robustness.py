"""Robustness to the pretrained backbone: the pretraining seed, the copy the robustness stage runs, and the claims
marked *holds* / *fragile* across pretrainings."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from lptlib.config import parse
from lptlib.recipes.pretrain import pretrain_seed
from lptlib.report.claims import across_pretraining, claims_markdown
from lptlib.robustness import label, prepare

ROOT = Path(__file__).resolve().parents[1]


def test_the_pretraining_seed_defaults_to_the_run_seed():
    assert pretrain_seed(parse(seed=3)) == 3
    assert pretrain_seed(parse(seed=3, pretrain={"seed": 1})) == 1
    with pytest.raises(Exception, match="pretrain.seed"):
        parse(pretrain={"seed": -1})


def _git(*args, cwd):
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True, capture_output=True
    )


def test_prepare_copies_the_tracked_files_with_the_pretraining_seed(tmp_path):
    root = tmp_path / "repo"
    (root / "lptlib").mkdir(parents=True)
    (root / "params.yaml").write_text("seed: 0\npretrain: {}\nlpt: {stage1: {epochs: 3}}\n")
    (root / "lptlib" / "x.py").write_text("x = 1\n")
    (root / "metrics" / "robustness" / "pretrain_seed_9").mkdir(parents=True)
    (root / "metrics" / "robustness" / "pretrain_seed_9" / "claims.json").write_text("{}")
    (root / "metrics" / "robustness" / "README.md").write_text("kept\n")
    _git("init", "-q", cwd=root)
    _git("add", "-A", cwd=root)
    _git("commit", "-qm", "x", cwd=root)
    (root / "untracked.txt").write_text("not copied")
    (root / "outputs").mkdir()
    (root / "outputs" / "big.pt").write_text("not copied")
    dest = prepare(2, root, tmp_path / "copy")
    params = yaml.safe_load((dest / "params.yaml").read_text())
    assert params == {"seed": 0, "pretrain": {"seed": 2}, "lpt": {"stage1": {"epochs": 3}}}
    assert (dest / "lptlib" / "x.py").read_text() == "x = 1\n"
    assert not (dest / "untracked.txt").exists() and not (dest / "outputs").exists()
    # a copy never reports other pretrainings itself, but keeps the folder: the report stage depends on it
    assert [p.name for p in (dest / "metrics" / "robustness").iterdir()] == ["README.md"]
    log = subprocess.run(["git", "log", "--oneline"], cwd=dest, capture_output=True, text=True, check=True).stdout
    assert "pretrain.seed 2" in log
    assert parse(**params).pretrain.seed == 2
    assert label(2) == "pretrain_seed_2"


def test_a_copy_of_this_repository_has_every_tracked_dependency_of_its_stages(tmp_path):
    """`dvc repro` in the copy fails on a missing dependency (the report's metrics/robustness once did, after
    an hour of training): every dependency the pipeline declares that is tracked here exists in the copy."""
    dest = prepare(1, ROOT, tmp_path / "copy")
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    tracked_dirs = {str(Path(f).parent) for f in tracked.split()} | set(tracked.split())
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    deps = {d for st in stages.values() for d in (st.get("do", st).get("deps") or []) if "${" not in d}
    missing = [d for d in deps if d in tracked_dirs and not (dest / d).exists()]
    assert "metrics/robustness" in deps and missing == []


def _row(cid, metric, verdict):
    return {"id": cid, "metric": metric, "verdict": verdict}


def test_a_verdict_that_differs_on_another_pretraining_is_fragile():
    rows = [_row("a", "overall", "supported"), _row("b", "few", "inconclusive"), _row("c", "overall", "not run")]
    rows += [_row("d", "overall", "contradicted")]
    others = {
        "pretrain_seed_1": [
            _row("a", "overall", "supported"),
            _row("b", "few", "supported"),
            _row("c", "overall", "x"),
        ],
        "pretrain_seed_2": [_row("a", "overall", "supported"), _row("b", "few", "inconclusive")],
    }
    out = {r["id"]: r for r in across_pretraining(rows, others)}
    assert out["a"]["robust"] == "holds" and len(out["a"]["pretrainings"]) == 3
    assert out["b"]["robust"] == "fragile" and out["b"]["pretrainings"]["pretrain_seed_1"] == "supported"
    assert out["c"]["robust"] is None  # not run here
    assert out["d"]["robust"] is None  # no other pretraining ran it
    assert out["a"]["pretrainings"]["this"] == "supported"


def test_the_claims_table_marks_fragile_and_holding_verdicts(tmp_path):
    from lptlib.report.table import collect

    metrics = tmp_path / "metrics"
    shutil.copytree(ROOT / "metrics", metrics, ignore=shutil.ignore_patterns("robustness"))
    plain = collect(metrics).claims()
    assert all("robust" not in r for r in plain)  # no other pretraining: nothing marked
    flipped = [dict(r) for r in plain]
    decisive = next(i for i, r in enumerate(flipped) if r["verdict"] == "supported")
    flipped[decisive]["verdict"] = "inconclusive"
    (metrics / "robustness" / "pretrain_seed_1").mkdir(parents=True)
    (metrics / "robustness" / "pretrain_seed_1" / "claims.json").write_text(json.dumps({"claims": flipped}))
    rows = collect(metrics).claims()
    assert rows[decisive]["robust"] == "fragile"
    assert {r["robust"] for i, r in enumerate(rows) if i != decisive and r["verdict"] != "not run"} == {"holds"}
    table = claims_markdown(rows)
    assert "*fragile* (supported on 1 of 2 pretrainings)" in table and "(holds on 2 pretrainings)" in table
    (metrics / "robustness" / "pretrain_seed_1" / "claims.json").write_text("not json")
    with pytest.raises(Exception, match="not a claims file"):
        collect(metrics)


def test_a_pretraining_run_under_another_configuration_is_left_out(tmp_path):
    """After a tuned rate is adopted (or any setting changes), an earlier robustness run compares other arms: the
    report leaves it out, naming the keys that differ, until it is re-run; the pretraining seed, run seed and
    parallelism may differ."""
    from lptlib.config import load
    from lptlib.report.table import collect, results_markdown
    from lptlib.robustness import comparable_config, keep
    from lptlib.schema import differences

    cfg = load(ROOT / "params.yaml")
    metrics = tmp_path / "metrics"
    shutil.copytree(ROOT / "metrics", metrics, ignore=shutil.ignore_patterns("robustness"))
    work = tmp_path / "copy"
    shutil.copytree(ROOT / "presets", work / "presets")
    shutil.copytree(metrics, work / "metrics")
    (work / "params.yaml").write_text((ROOT / "params.yaml").read_text() + "\npretrain: {seed: 7}\nworkers: 1\n")
    kept = keep(work, metrics / "robustness" / "pretrain_seed_7")
    assert sorted(p.name for p in kept.iterdir()) == ["claims.json", "config.json", "pretrain.json"]
    assert differences(comparable_config(cfg), json.loads((kept / "config.json").read_text())) == []
    rows = collect(metrics, config=cfg).claims()
    assert {r["robust"] for r in rows if r["verdict"] != "not run"} == {"holds"}
    other = cfg.model_copy(update={"arm_lr": {**cfg.arm_lr, "lptpp/moe": 0.5}})
    assert differences(comparable_config(other), comparable_config(cfg)) == ["arm_lr.lptpp/moe"]
    with pytest.warns(UserWarning, match=r"another configuration \(arm_lr.lptpp/moe\).*left out"):
        report = collect(metrics, config=other)
    assert all("robust" not in r for r in report.claims())
    assert (  # and the README says so under the claims table
        "Left out of the holds / fragile marks: `pretrain_seed_7` was run under another configuration "
        "(arm_lr.lptpp/moe)." in results_markdown(report)
    )
    assert "Left out" not in results_markdown(collect(metrics, config=cfg))
    (kept / "config.json").unlink()
    with pytest.warns(UserWarning, match="records no configuration"):
        collect(metrics, config=cfg)
    assert collect(metrics).claims()[0]["robust"] == "holds"  # without a configuration to compare: not checked
