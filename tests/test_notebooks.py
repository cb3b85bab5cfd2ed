"""Every notebook executed by papermill with tiny parameters, as the DVC stages run them.

The golden check: every metrics file these runs write is compared with the one recorded in `tests/golden/` (timings
left out). On the platform that recorded them (CPU model, torch and numpy versions) the numbers must be equal
exactly, so a refactor that changes any result fails here; on another platform float results differ in their last
bits and only the structure (keys, list lengths, strings) is compared. Record anew, after a change that is meant
to move results, with `LPTLIB_GOLDEN=write pytest -m notebook tests/test_notebooks.py`.
"""

import json
import os
import platform
import re
from pathlib import Path

import papermill as pm
import pytest
from conftest import notebook_parameters

from lptlib.measure.metrics import POSTHOC_TAUS
from lptlib.sections import ARMS, EXTRA_ARMS

ROOT = Path(__file__).resolve().parents[1]
TINY_DATA = {"max_test_per_class": 20}
TINY_RUN = {"epochs": 1, "max_images": 256, "batch_size": 64, "warmup_steps": 1}
GOLDEN = ROOT / "tests" / "golden"
TIMING = re.compile(r"seconds|latency|_ms\b|_ms_")


def _platform() -> str:
    import numpy
    import torch

    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln),
        platform.processor(),
    )
    return f"{platform.machine()} | {cpu} | torch {torch.__version__} | numpy {numpy.__version__}"


def _comparable(value):
    """The metrics without timings."""
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items() if not TIMING.search(str(k))}
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return value


def _shape(value):
    """Keys, list lengths and strings: what must agree on any platform."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return value if isinstance(value, str | bool) or value is None else type(value).__name__.replace("int", "float")


def check_golden(key: str, metrics: dict) -> None:
    """`metrics` equal to the recorded `tests/golden/<key>.json` (see the module docstring)."""
    path = GOLDEN / f"{key}.json"
    found = _comparable(metrics)
    if os.environ.get("LPTLIB_GOLDEN") == "write":
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(json.dumps({"platform": _platform(), "metrics": found}, indent=1, sort_keys=True) + "\n")
        return
    golden = json.loads(path.read_text())
    if golden["platform"] == _platform():
        assert found == golden["metrics"], f"{key}: the metrics differ from the golden record {path}"
    else:
        assert _shape(found) == _shape(golden["metrics"]), f"{key}: the metrics' structure differs from {path}"


def run(name: str, tmp_path: Path, golden: str | None = None, **params) -> dict:
    """Execute notebook `name` with `params`; its metrics, checked against `tests/golden/<golden>.json` if named."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = tmp_path / "out"
    params = {"out_dir": str(out), "metrics_path": str(out / "metrics.json"), "fig_dir": str(out / "figures"), **params}
    notebook = ROOT / "notebooks" / f"{name}.ipynb"
    pm.execute_notebook(
        str(notebook),
        str(tmp_path / f"{name}.ipynb"),
        parameters=notebook_parameters(notebook, **params),
        kernel_name="python3",
        progress_bar=False,
        cwd=str(ROOT),
    )
    assert (Path(params["out_dir"]) / "config.yaml").is_file(), "the resolved config is saved next to the outputs"
    metrics = json.loads(Path(params["metrics_path"]).read_text())
    if golden:
        check_golden(golden, metrics)
    return metrics


@pytest.mark.notebook
def test_00_data(tmp_path):
    m = run("00_data", tmp_path, golden="00_data", data=TINY_DATA)
    assert m["train_images"] == 1_236 and m["val_images"] == 1_000 and m["test_images"] == 200
    assert (m["n_many"], m["n_medium"], m["n_few"]) == (4, 3, 3)
    assert m["imbalance"] == 100.0
    figs = {p.name for p in (tmp_path / "out" / "figures").iterdir()}
    assert figs == {"class_counts.png", "samples.png"}
    assert (tmp_path / "out" / "class_counts.csv").read_text().startswith("label,class,train,group,val,test")


@pytest.mark.notebook
def test_00_pretrain(tmp_path):
    weights = {
        "visual": {"name": "vit-mini", "weights": str(tmp_path / "vit-mini.safetensors")},
        "vision_language": {"name": "clip-mini", "weights": str(tmp_path / "clip-mini.safetensors")},
    }
    m = run(
        "00_pretrain",
        tmp_path,
        golden="00_pretrain",
        data=TINY_DATA,
        backbones=weights,
        pretrain={"vit_mini": TINY_RUN, "clip_mini": TINY_RUN},
    )
    assert set(m) == {"vit-mini", "clip-mini"}
    assert 0 <= m["vit-mini"]["coarse_val_acc"] <= 1 and 0 <= m["clip-mini"]["zero_shot_test_acc"] <= 1
    assert m["vit-mini"]["train_images"] == 256
    assert (tmp_path / "vit-mini.safetensors").is_file() and (tmp_path / "clip-mini.safetensors").is_file()
    assert (tmp_path / "out" / "figures" / "training_loss.png").is_file()


@pytest.mark.notebook
def test_01_vpt_study(tmp_path):
    tiny = {"epochs": 1, "batch_size": 128}
    m = run(
        "01_vpt_study",
        tmp_path,
        golden="01_vpt_study",
        data={"max_test_per_class": 10},
        backbones={"visual": {"name": "vit-mini", "weights": "random"}},
        vpt_study={"linear_probe": tiny, "vpt_deep": tiny, "feature_images_per_class": 5},
        features_metrics_path=str(tmp_path / "out" / "features.json"),
    )
    assert list(m) == [
        "linear_probe/instance_balanced",
        "linear_probe/class_balanced",
        "linear_probe_la/instance_balanced",
        "crt/class_balanced",
        "vpt_deep/instance_balanced",
        "vpt_deep/class_balanced",
        "vpt_deep_replica/class_balanced",
    ]
    for name in ("linear_probe/class_balanced", "linear_probe_la/instance_balanced", "crt/class_balanced"):
        assert m[name]["trainable_params"] == 128 * 10 + 10  # a head on cached features
    assert m["vpt_deep/class_balanced"]["trainable_params"] == 6 * 10 * 128 + 128 * 10 + 10
    for row in m.values():
        assert all(0 <= row[k] <= 1 for k in ("overall", "many", "medium", "few", "val_overall"))
        assert row["epochs"] == 1 and row["val_best_epoch"] == 0 and "best_epoch" not in row
    features = json.loads((tmp_path / "out" / "features.json").read_text())
    assert set(features) == {"frozen", "vpt_deep/instance_balanced", "vpt_deep/class_balanced"}  # no replica
    assert all(v["gamma"] > 0 and 0 <= v["knn_acc"] <= 1 for v in features.values())
    figs = {p.name for p in (tmp_path / "out" / "figures").iterdir()}
    assert figs == {"table1_shot_accuracy.png", "lda.png"}
    assert len(list((tmp_path / "out" / "checkpoints").glob("*.pt"))) == 3  # the end-to-end (VPT-deep) runs


@pytest.mark.notebook
def test_01_vpt_study_probes(tmp_path):
    """The probe-only stage of one more seed: the cached-feature rows of Table 1 (no cRT: it needs VPT-deep), the
    same structure as `01_vpt_study`'s, with the same tiny parameters."""
    tiny = {"epochs": 1, "batch_size": 128}
    m = run(
        "01_vpt_study_probes",
        tmp_path,
        seed=5,
        data={"max_test_per_class": 10},
        backbones={"visual": {"name": "vit-mini", "weights": "random"}},
        vpt_study={"linear_probe": tiny, "feature_views": 1},
    )
    assert list(m) == [
        "linear_probe/instance_balanced",
        "linear_probe/class_balanced",
        "linear_probe_la/instance_balanced",
    ]
    golden = json.loads((GOLDEN / "01_vpt_study.json").read_text())["metrics"]
    for key, row in m.items():
        assert row["trainable_params"] == 128 * 10 + 10 and row["epochs"] == 1
        assert set(row) == set(golden[key]), key  # the rows 01_vpt_study writes for the same methods
        assert all(0 <= row[k] <= 1 for k in ("overall", "many", "medium", "few", "val_overall"))
    assert {p.name for p in (tmp_path / "out" / "figures").iterdir()} == {"probes_shot_accuracy.png"}


@pytest.mark.notebook
def test_02_and_03_lpt_stages(tmp_path):
    tiny = {"epochs": 1, "batch_size": 128}
    common = dict(
        data={"max_test_per_class": 10},
        backbones={"visual": {"name": "vit-mini", "weights": "random"}},
        lpt={"stage1": tiny, "stage2": tiny, "pool_size": 4},
    )
    stage1 = tmp_path / "stage1.safetensors"
    m1 = run("02_lpt_stage1", tmp_path / "s1", golden="02_lpt_stage1", stage1_path=str(stage1), **common)
    assert list(m1) == [*EXTRA_ARMS, "lpt_stage1"]  # every ladder and ablation arm by default
    linear = {k for k, arm in ARMS.items() if arm.head == "linear"}
    assert all(row["trainable_params"] == 6 * 10 * 128 + 10 * 128 + 10 * (k in linear) for k, row in m1.items())
    assert all(row["posthoc_tau"] in POSTHOC_TAUS and 0 <= row["posthoc_overall"] <= 1 for row in m1.values())
    assert stage1.is_file() and (tmp_path / "s1" / "out" / "figures" / "history.png").is_file()
    both = run("03_lpt_stage2", tmp_path / "s2", golden="03_lpt_stage2", stage1_path=str(stage1), **common)
    assert list(both) == ["lpt_stage2", "lpt_stage1_continued"]
    assert both["lpt_stage1_continued"]["trainable_params"] == 6 * 10 * 128 + 10 * 128  # stage 1 trained on
    m2 = both["lpt_stage2"]
    assert m2["trainable_params"] == 4 * 3 * 10 * 128 + 4 * 128 + 10 * 128  # group prompts in blocks 4-6
    assert len(m2["key_usage"]) == 4 and sum(m2["key_usage"]) == 2 * 100  # top-2 picks of 100 test images
    assert 0 <= m2["key_usage_entropy"] <= 1 and 0 <= m2["overall"] <= 1
    assert (tmp_path / "s2" / "out" / "figures" / "key_usage.png").is_file()


@pytest.mark.notebook
def test_04_tea_seeds_and_report(tmp_path):
    """The matrix (one PEFT method and loss, without and with TEA) for two seeds, one of them on two worker
    processes, and the report that aggregates the seeds."""
    clip = {"vision_language": {"name": "clip-mini", "weights": "random"}}
    tiny = {"epochs": 1, "batch_size": 128}
    tea = {
        "lora": tiny,
        "latency_batches": 2,
        "matrix": {"peft": ["lora"], "loss": ["la"], "tea": ["none", "pea_pg_tec"]},
    }
    members = tmp_path / "members"
    data = {"max_test_per_class": 10, "val_per_class": 10}
    for seed, workers in ((0, 2), (1, 1)):
        m = run(
            "04_tea",
            tmp_path / f"seed_{seed}",
            golden=f"04_tea_seed_{seed}",
            seed=seed,
            workers=workers,
            data=data,
            backbones=clip,
            tea=tea,
            metrics_path=str(members / f"seed_{seed}.json"),
        )
        assert set(m) == {"zero_shot_clip", "tea/lora-la-none", "tea/lora-la-pea_pg_tec"}
        row = m["tea/lora-la-pea_pg_tec"]
        assert row["tea"] == "pea_pg_tec" and row["epochs"] == 1 and 0 <= row["val_overall"] <= 1
        assert row["trainable_params"] > 10 * 128 and not any("latency" in k for k in row) and "best_epoch" not in row
        assert m["zero_shot_clip"]["trainable_params"] == 0 and 0 <= m["zero_shot_clip"]["val_overall"] <= 1
        timing = json.loads((tmp_path / f"seed_{seed}" / "out" / "latency.json").read_text())
        assert set(timing["latency_ms_per_image"]) == {"lora-la-none", "lora-la-pea_pg_tec"}
        assert {p.name for p in (tmp_path / f"seed_{seed}" / "out" / "checkpoints").iterdir()} == {
            "lora-la-none.pt",
            "lora-la-pea_pg_tec.pt",
        }
    seed_rows = [json.loads((members / f"seed_{s}.json").read_text()) for s in (0, 1)]
    report = run(
        "04_tea_report",
        tmp_path / "report",
        golden="04_tea_report",
        data=data,
        backbones=clip,
        tea=tea,
        seeds={"tea": [0, 1]},
        members_dir=str(members),
    )
    assert report["seeds"] == [0, 1]
    assert set(report["members"]) == {"zero_shot_clip", "lora-la-none", "lora-la-pea_pg_tec"}
    few = report["members"]["lora-la-pea_pg_tec"]["few"]
    assert few["values"] == [r["tea/lora-la-pea_pg_tec"]["few"] for r in seed_rows] and few["n"] == 2
    gain = next(g for g in report["tea_gains"] if g["group"] == "few")
    diffs = [100 * (r["tea/lora-la-pea_pg_tec"]["few"] - r["tea/lora-la-none"]["few"]) for r in seed_rows]
    assert gain["diffs"] == pytest.approx(diffs) and gain["seeds"] == [0, 1]
    val = {n: sum(r[f"tea/{n}"]["val_overall"] for r in seed_rows) for n in ("lora-la-none", "lora-la-pea_pg_tec")}
    assert report["best_member"] == {"lora": max(val, key=val.get)}
    assert report["best_tea_member"] == {"lora": "lora-la-pea_pg_tec"}
    figs = {p.name for p in (tmp_path / "report" / "out" / "figures").iterdir()}
    assert figs == {"tea_gains.png", "shot_accuracy.png"}
    with pytest.raises(pm.PapermillExecutionError, match=r"`dvc repro tea@2`"):
        run("04_tea_report", tmp_path / "missing", tea=tea, seeds={"tea": [0, 2]}, members_dir=str(members))


@pytest.mark.notebook
def test_05_lptpp_three_phases(tmp_path):
    """Phase 1 (two experts on two worker processes) -> phase 2 -> phase 3 (cache + MoE scorer), each a separate
    papermill run of one seed as in the DVC stages."""
    experts = {
        "visual": {"name": "vit-mini", "weights": "random"},
        "vision_language": {"name": "clip-mini", "weights": "random"},
    }
    tiny = {"epochs": 1, "batch_size": 128}
    dirs = {
        "phase1_dir": str(tmp_path / "p1"),
        "phase2_dir": str(tmp_path / "p2"),
        "cache_dir": str(tmp_path / "cache"),
    }
    common = dict(
        seed=1,
        data={"max_test_per_class": 10, "val_per_class": 10},
        backbones=experts,
        lpt={"pool_size": 4},
        lptpp={"phase1": tiny, "phase2": tiny, "scorer": {"epochs": 3}},
        **dirs,
    )
    for phase, workers in ((1, 2), (2, 1)):
        m = run(
            "05_lptpp",
            tmp_path / f"run{phase}",
            golden=f"05_lptpp_phase{phase}",
            phase=phase,
            workers=workers,
            **{
                **common,
                "out_dir": dirs[f"phase{phase}_dir"],
                "fig_dir": str(tmp_path / f"fig{phase}"),
                "metrics_path": str(tmp_path / f"phase{phase}.json"),
            },
        )
        assert set(m) == {f"visual/phase{phase}", f"vision_language/phase{phase}"}
        assert (tmp_path / f"p{phase}" / "visual.safetensors").is_file()
        assert all(r["epochs"] == 1 and "best_epoch" not in r and 0 <= r["val_overall"] <= 1 for r in m.values())
    assert m["visual/phase2"]["trainable_params"] < m["visual/phase2"]["module_params"]
    m3 = run(
        "05_lptpp",
        tmp_path / "run3",
        golden="05_lptpp_phase3",
        phase=3,
        **{**common, "metrics_path": str(tmp_path / "lptpp.json")},
        fig_dir=str(tmp_path / "fig3"),
        out_dir=str(tmp_path / "cache"),
    )
    assert set(m3) == {"lptpp/visual", "lptpp/vision_language", "lptpp/uniform", "lptpp/moe", "info"}
    for key in ("lptpp/visual", "lptpp/vision_language", "lptpp/uniform", "lptpp/moe"):
        assert len(m3[key]["confusion"]) == 10 and 0 <= m3[key]["val_overall"] <= 1
    info = m3["info"]
    assert set(info["gate_weights"]) == {"many", "medium", "few"} and set(info["params"]["module"]) == set(experts)
    assert 0 < info["params"]["percent_of_backbones"] < 100
    assert m3["lptpp/moe"]["trainable_params"] == sum(info["params"]["module"].values()) + info["params"]["scorer"]
    assert {p.name for p in (tmp_path / "fig3").iterdir()} == {
        "shot_accuracy.png",
        "gate_weights.png",
        "scorer_history.png",
    }
    assert {p.name for p in (tmp_path / "cache").iterdir()} >= {"visual.safetensors", "vision_language.safetensors"}


@pytest.mark.notebook
def test_bad_parameters_fail_before_any_work(tmp_path):
    """A notebook's first code validates its parameters before it writes anything: the ConfigError surfaces
    through papermill and no config.yaml is left behind. (Every other bad input, without papermill: the table of
    tests/test_reliability.py.)"""
    with pytest.raises(pm.PapermillExecutionError, match=r"pretrain\.vit_mini\.epochs: must be >= 1, got -3"):
        run("00_pretrain", tmp_path, pretrain={"vit_mini": {"epochs": -3}})
    assert not (tmp_path / "out" / "config.yaml").exists()


@pytest.mark.notebook
def test_papermill_parameters_are_values_for_declared_names_only(tmp_path):
    """papermill writes each parameter into the notebook as `name = value`: a typo in `-p` was a warning and a run with
    the defaults, and a params.yaml key holding a statement (`-f params.yaml`) ran as code. The guard cell refuses
    the injected cell before it runs."""
    notebook = str(ROOT / "notebooks" / "00_data.ipynb")
    marker = tmp_path / "ran"
    out = {"out_dir": str(tmp_path / "o"), "metrics_path": str(tmp_path / "m.json"), "fig_dir": str(tmp_path / "f")}
    cases = {
        "typo": (
            {"sed": 1},
            r"papermill parameter 'sed' is not a parameter of this notebook \(did you mean the "
            r"params\.yaml key 'seed'\?",
        ),
        "code": (
            {f"import pathlib; pathlib.Path({str(marker)!r}).touch(); x": 1},
            r"papermill's injected parameters hold code, not a value",
        ),
    }
    for name, (extra, message) in cases.items():
        with pytest.raises(pm.PapermillExecutionError, match=message):
            pm.execute_notebook(
                notebook,
                str(tmp_path / f"{name}.ipynb"),
                parameters={**out, **extra},
                kernel_name="python3",
                progress_bar=False,
                cwd=str(ROOT),
            )
        assert not marker.exists() and not (tmp_path / "o" / "config.yaml").exists(), name
