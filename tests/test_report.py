"""The results report over seeds: per-seed rows from the metrics files only, mean ± std per group, every "best"
chosen on val (never on test), the README block (results + claims) that must agree with metrics/, and clear errors
naming the stage to run when a file is missing."""

import json
import shutil
from pathlib import Path

import numpy as np
import papermill as pm
import pytest
from conftest import notebook_parameters

from lptlib.measure.metrics import shot_groups
from lptlib.measure.stats import format_mean_std
from lptlib.report import (
    ReportError,
    Row,
    collect,
    frequency_ordered_confusion,
    readme_is_current,
    select_by_val,
)
from lptlib.report import table as report
from lptlib.report.claims import claims_json

ROOT = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2)
COUNTS = [50, 20, 5]  # many / medium / few under a toy convention; the report only reads them

# (test overall, val overall or None) of every method key of the per-seed layout, before the per-seed noise.
# Built so that the highest test accuracy is never the highest val accuracy:
#   zero_shot_clip has the best test accuracy but no val; lptpp/moe the best test among rows with val;
#   lptpp/vision_language the best val. In TEA's vpt_deep, `pea` has the better test, `pea_pg_tec` the better val.
VPT_STUDY = {
    "linear_probe/instance_balanced": (0.55, 0.54),
    "linear_probe/class_balanced": (0.60, 0.59),
    "linear_probe_la/instance_balanced": (0.61, 0.60),
    "crt/class_balanced": (0.60, 0.60),
    "vpt_deep/instance_balanced": (0.52, 0.52),
    "vpt_deep/class_balanced": (0.64, 0.63),
    "vpt_deep_replica/class_balanced": (0.64, 0.63),
}
LPT_STAGE1 = {
    "ladder/linear_head": (0.61, 0.60),
    "ladder/cosine_head": (0.62, 0.61),
    "ladder/head_dropout": (0.62, 0.62),
    "ladder/dual_sampling": (0.63, 0.63),
    "ladder/agcl": (0.63, 0.62),
    "lpt_stage1_without/agcl": (0.63, 0.63),
    "lpt_stage1_without/dual_sampling": (0.60, 0.61),
    "lpt_stage1_without/cosine_head": (0.61, 0.61),
    "agcl_part/cloud": (0.62, 0.62),
    "agcl_part/no_cloud": (0.64, 0.63),
    "lpt_stage1": (0.64, 0.64),
}
LPT_STAGE2 = {"lpt_stage2": (0.66, 0.65), "lpt_stage1_continued": (0.65, 0.64)}
TEA = {
    "zero_shot_clip": (0.95, None),
    "tea/vpt_deep-la-none": (0.76, 0.75),
    "tea/vpt_deep-la-pea": (0.80, 0.70),
    "tea/vpt_deep-la-pea_pg_tec": (0.77, 0.77),
    "tea/adaptformer-la-none": (0.79, 0.78),
    "tea/adaptformer-la-pea_pg_tec": (0.80, 0.79),
    "tea/lora-la-none": (0.78, 0.77),
    "tea/lora-la-pea_pg_tec": (0.78, 0.78),
}
LPTPP = {
    "lptpp/visual": (0.62, 0.62),
    "lptpp/vision_language": (0.77, 0.90),
    "lptpp/uniform": (0.76, 0.80),
    "lptpp/moe": (0.85, 0.81),
}
#: LPT Table 2 per feature extractor: (gamma, k-NN accuracy)
FEATURES = (("frozen", 0.36, 0.52), ("vpt_deep/instance_balanced", 0.34, 0.55), ("vpt_deep/class_balanced", 0.35, 0.54))
FILES = {"vpt_study": VPT_STUDY, "lpt_stage1": LPT_STAGE1, "lpt_stage2": LPT_STAGE2, "tea": TEA, "lptpp": LPTPP}


def make_row(test: float, val: float | None, seed: int, params: int, rng: np.random.Generator) -> dict:
    """A plausible `FitResult.row`: groups around `test`, a per-seed shift, per-class accuracies and confusions."""
    o = float(np.clip(test + 0.01 * (seed - 1) + rng.normal(0, 0.004), 0, 1))
    row = {
        "overall": o,
        "many": min(1.0, o + 0.06),
        "medium": o,
        "few": max(0.0, o - 0.08),
        "class_mean": o,
        "per_class": [min(1.0, o + 0.06), o, max(0.0, o - 0.08)],
        "confusion": [[9, 1, 0], [1, 8, 1], [2, 1, 7]],
        "trainable_params": params,
        "epochs": 5,
        "val_best_epoch": 3,
    }
    if val is not None:
        v = float(np.clip(val + 0.01 * (seed - 1) + rng.normal(0, 0.004), 0, 1))
        row.update(val_overall=v, val_many=min(1.0, v + 0.05), val_medium=v, val_few=max(0.0, v - 0.05))
        row.update(posthoc_tau=0.5, posthoc_overall=min(1.0, o + 0.01))  # the prior correction needs val
    return row


def write_metrics(root: Path, seeds=SEEDS) -> Path:
    """A per-seed metrics/ of the contract's layout: data.json and <stage>/seed_<s>.json for every stage."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "data.json").write_text(
        json.dumps({"dataset": "toy_lt", "class_counts": COUNTS, "classnames": ["head", "body", "tail"]})
    )
    for folder, keys in FILES.items():
        (root / folder).mkdir(exist_ok=True)
        for s in seeds:
            rng = np.random.default_rng(1000 * s + len(folder))
            rows = {}
            for i, (key, (test, val)) in enumerate(keys.items()):
                rows[key] = make_row(test, val, s, 0 if key == "zero_shot_clip" else 1000 + i, rng)
                if key.startswith("tea/"):
                    peft, loss, variant = key.removeprefix("tea/").split("-")
                    rows[key].update(peft=peft, loss=loss, tea=variant)
            if folder == "lptpp":
                rows["info"] = {"gate_weights": {"few": {"visual": 0.3, "vision_language": 0.7}}}
            (root / folder / f"seed_{s}.json").write_text(json.dumps(rows))
    (root / "vpt_study_features").mkdir(exist_ok=True)
    for s in seeds:
        table = {
            name: {"R": 0.3, "D": 1.0, "gamma": gamma + 0.01 * s, "knn_acc": knn, "knn_k": 10}
            for name, gamma, knn in FEATURES
        }
        (root / "vpt_study_features" / f"seed_{s}.json").write_text(json.dumps(table))
    return root


@pytest.fixture
def metrics_dir(tmp_path):
    return write_metrics(tmp_path / "metrics")


@pytest.fixture
def readme(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(f"# Title\n\nintro\n\n{report.README_BEGIN}\nold\n{report.README_END}\n\ntail text\n")
    return path


def test_collect_reads_every_seed_of_every_stage(metrics_dir):
    rep = collect(metrics_dir)
    expected = {k for keys in FILES.values() for k in keys}
    features = {f"features/{name}" for name, _, _ in FEATURES}  # LPT Table 2: claims only, no table row
    assert set(rep.results) == expected | features  # "info" is not a method row
    assert rep.results["features/frozen"][2]["gamma"] == pytest.approx(0.38)
    assert not features & {r.name for r in rep.rows}
    assert all(set(per_seed) == set(SEEDS) for per_seed in rep.results.values())
    assert rep.seeds == {s.stage: [] if s.extends else list(SEEDS) for s in report.STAGES}  # no probe-only seeds
    assert (
        rep.results["lpt_stage1"][1]
        == json.loads((metrics_dir / "lpt_stage1" / "seed_1.json").read_text())["lpt_stage1"]
    )
    names = [r.name for r in rep.rows]
    head = [*VPT_STUDY, *LPT_STAGE1, *LPT_STAGE2, "zero_shot_clip"]
    assert names[: len(head)] == head
    assert names[-4:] == list(LPTPP)
    assert {r.stage for r in rep.rows} == {s.stage for s in report.STAGES if not s.extends}
    assert all(r.n == len(SEEDS) for r in rep.rows)
    assert rep.class_counts == COUNTS and rep.dataset == "toy_lt"
    # the shape evaluate_claims takes: every claim of the pipeline's keys is evaluated on the 3 seeds
    claims = rep.claims()
    assert all(c["verdict"] != "not run" and c["n"] == len(SEEDS) for c in claims), [
        (c["id"], c["note"]) for c in claims if c["verdict"] == "not run"
    ]


def test_probe_only_seeds_extend_the_probe_rows_and_pair_where_both_sides_ran(metrics_dir):
    (metrics_dir / "vpt_study_probes").mkdir()
    seed0 = json.loads((metrics_dir / "vpt_study" / "seed_0.json").read_text())
    probes = {k: v for k, v in seed0.items() if k.startswith("linear_probe")}
    for s in (10, 11):
        (metrics_dir / "vpt_study_probes" / f"seed_{s}.json").write_text(json.dumps(probes))
    rep = collect(metrics_dir)
    assert rep.seeds["vpt_study_probes"] == [10, 11]
    assert rep.row("linear_probe/class_balanced").seeds == [*SEEDS, 10, 11]
    assert rep.row("vpt_deep/class_balanced").seeds == list(SEEDS)
    claims = {(c["id"], c["metric"]): c for c in rep.claims()}
    cb_vs_ib = next(
        c
        for (i, _), c in claims.items()
        if c["a"] == "linear_probe/class_balanced" and c["b"] == "linear_probe/instance_balanced"
    )
    assert cb_vs_ib["seeds"] == [*SEEDS, 10, 11]  # both sides have the extra seeds
    vpt_vs_lp = next(
        c for c in claims.values() if c["a"] == "vpt_deep/class_balanced" and c["b"] == "linear_probe/class_balanced"
    )
    assert vpt_vs_lp["seeds"] == list(SEEDS)  # paired over the seeds both ran
    (metrics_dir / "vpt_study_probes" / "seed_0.json").write_text(json.dumps(probes))
    with pytest.raises(ReportError, match=r"seeds \[0\] are written by both `vpt_study` and `vpt_study_probes`"):
        collect(metrics_dir)


def test_rows_give_mean_and_std_over_seeds(metrics_dir):
    rep = collect(metrics_dir)
    row = rep.row("vpt_deep/class_balanced")
    for g in ("overall", "many", "medium", "few", "val_overall"):
        values = [rep.results["vpt_deep/class_balanced"][s][g] for s in SEEDS]
        assert row.values(g) == values
        assert row.mean(g) == pytest.approx(np.mean(values))
        assert row.std(g) == pytest.approx(np.std(values, ddof=1))
        assert row.cell(g) == format_mean_std(values)
        summary = row.summary()[g]
        assert summary["n"] == 3 and summary["values"] == values
        assert summary["mean"] == pytest.approx(np.mean(values))
    zs = rep.row("zero_shot_clip")
    assert zs.values("val_overall") is None and zs.cell("val_overall") == "–" and zs.summary()["val_overall"] is None
    assert zs.trainable_params == 0
    assert row.per_class == pytest.approx(np.mean([rep.results[row.name][s]["per_class"] for s in SEEDS], axis=0))
    assert row.confusion == (3 * np.array([[9, 1, 0], [1, 8, 1], [2, 1, 7]])).tolist()  # counts summed over seeds


def test_best_is_chosen_on_val_never_on_test(metrics_dir):
    rep = collect(metrics_dir)
    by_test = max(rep.rows, key=lambda r: r.overall)
    assert by_test.name == "zero_shot_clip"  # best test accuracy, but no val: it cannot be chosen
    assert max((r for r in rep.rows if r.has_val), key=lambda r: r.overall).name == "lptpp/moe"
    assert rep.best().name == "lptpp/vision_language"  # the best mean val accuracy
    assert rep.best_seeds() == list(SEEDS)
    assert rep.best_with_per_class().name == "lptpp/vision_language"
    m = rep.metrics()
    assert m["best"] == "lptpp/vision_language" and set(m["rows"]) == {r.name for r in rep.rows}
    assert m["rows"]["lptpp/moe"]["overall"]["n"] == 3
    table = report.markdown_table(rep)
    assert "**`lptpp/vision_language`** (best by val)" in table
    assert table.count("(best by val)") == 1 and table.count("TEA member by val)") == 3
    json.dumps(m)  # JSON-safe


def test_tea_rows_are_the_member_with_the_best_mean_val_and_its_plain_counterpart(metrics_dir):
    rep = collect(metrics_dir)
    tea_rows = [(r.name, r.note) for r in rep.rows if r.stage == "tea" and r.name != "zero_shot_clip"]
    assert tea_rows == [
        ("tea/vpt_deep-la-none", "without TEA"),
        ("tea/vpt_deep-la-pea_pg_tec", "best vpt_deep TEA member by val"),  # not `pea`, the better one on test
        ("tea/adaptformer-la-none", "without TEA"),
        ("tea/adaptformer-la-pea_pg_tec", "best adaptformer TEA member by val"),
        ("tea/lora-la-none", "without TEA"),
        ("tea/lora-la-pea_pg_tec", "best lora TEA member by val"),
    ]
    assert "tea/vpt_deep-la-pea" in rep.results  # every member stays in the claims' input
    assert rep.tea_selection["vpt_deep"]["best_tea_member"] == "tea/vpt_deep-la-pea_pg_tec"
    assert rep.tea_selection["vpt_deep"]["plain"] == "tea/vpt_deep-la-none"


def test_select_by_val_uses_the_shared_seeds_and_keeps_order_on_ties():
    def row(name, vals):
        return Row(name, "s", {s: {"overall": 0.5, "val_overall": v} for s, v in vals.items()})

    a = row("a", {0: 0.6, 1: 0.6, 2: 0.1})  # seed 2 is not shared: b has no seed 2
    b = row("b", {0: 0.5, 1: 0.5})
    best, seeds = select_by_val([a, b])
    assert best is a and seeds == [0, 1]
    tie = row("c", {0: 0.6, 1: 0.6})
    assert select_by_val([a, tie])[0] is a and select_by_val([tie, a])[0] is tie
    no_val = Row("z", "s", {0: {"overall": 0.99}})
    assert select_by_val([no_val]) == (None, [])
    assert select_by_val([no_val, b])[0] is b


def test_seeds_given_restrict_and_require_the_files(metrics_dir):
    rep = collect(metrics_dir, seeds={"vpt_study": [0, 2], "tea": [1]})
    assert rep.row("vpt_deep/class_balanced").seeds == [0, 2]
    assert rep.row("lpt_stage2").seeds == list(SEEDS)  # no `lpt` key: every file found
    assert rep.row("tea/lora-la-none").n == 1 and rep.row("tea/lora-la-none").cell("overall").count("±") == 0
    assert collect(metrics_dir, seeds=[1, 2]).seeds["lptpp_phase3"] == [1, 2]
    with pytest.raises(ReportError, match=r"seed_3\.json.*`dvc repro vpt_study@3`"):
        collect(metrics_dir, seeds={"vpt_study": [0, 3]})


@pytest.mark.parametrize(
    ("remove", "match"),
    [
        ("lptpp/seed_1.json", None),
        ("lptpp", r"`dvc repro lptpp_phase3`"),
        ("tea", r"`dvc repro tea`"),
        ("data.json", r"`dvc repro data`"),
    ],
)
def test_missing_metrics_name_the_stage_to_run(metrics_dir, remove, match):
    path = metrics_dir / remove
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    if match is None:  # a seed missing from the files found: the report reads the seeds that are there
        assert collect(metrics_dir).row("lptpp/moe").seeds == [0, 2]
        with pytest.raises(ReportError, match=r"`dvc repro lptpp_phase3@1`"):
            collect(metrics_dir, seeds={"lptpp": SEEDS})
    else:
        with pytest.raises(ReportError, match=match):
            collect(metrics_dir)


def test_inconsistent_or_incomplete_seed_files_are_errors(metrics_dir):
    path = metrics_dir / "vpt_study" / "seed_2.json"
    rows = json.loads(path.read_text())
    del rows["crt/class_balanced"]
    path.write_text(json.dumps(rows))
    with pytest.raises(ReportError, match=r"crt/class_balanced.*`dvc repro vpt_study@2`"):
        collect(metrics_dir)
    del rows["vpt_deep/class_balanced"]["few"]
    rows["crt/class_balanced"] = rows["vpt_deep/class_balanced"]
    path.write_text(json.dumps(rows))
    with pytest.raises(ReportError, match=r"lacks \['few'\].*`dvc repro vpt_study@2`"):
        collect(metrics_dir)


def test_readme_round_trip(metrics_dir, readme, capsys):
    args = ["--file", str(readme), "--metrics-dir", str(metrics_dir)]
    assert report.main(["--check", *args]) == 1
    assert report.main(["--readme", *args]) == 0
    assert report.main(["--check", *args]) == 0
    text = readme.read_text()
    assert text.startswith("# Title\n\nintro\n\n") and text.endswith("\n\ntail text\n")  # the rest is kept
    assert text.count(report.README_BEGIN) == 1 and text.count(report.README_END) == 1
    block = text.split(report.README_BEGIN)[1].split(report.README_END)[0]
    rep = collect(metrics_dir)
    header = "| method | stage | n | overall | many | medium | few | val overall | trainable params |"
    assert header in block and "| Claim | metric | paper |" in block
    assert block.index(header) < block.index("| Claim |")  # the claims table below the results table
    moe = rep.row("lptpp/moe")
    assert f"| `lptpp/moe` | `lptpp_phase3` | 3 | {moe.cell('overall')} |" in block
    assert " ± " in moe.cell("overall")
    assert "best by val" in block and "last epoch" in block
    assert report.main(["--readme", *args]) == 0 and readme.read_text() == text  # idempotent
    # editing one cell by hand makes the check fail
    readme.write_text(text.replace(moe.cell("overall"), "99.99 ± 0.01", 1))
    assert report.main(["--check", *args]) == 1
    assert "disagrees" in capsys.readouterr().err


def test_a_changed_metric_makes_the_readme_check_fail(metrics_dir, readme):
    report.update_readme(readme, metrics_dir)
    assert readme_is_current(readme, metrics_dir)[0]
    path = metrics_dir / "lpt_stage2" / "seed_1.json"
    rows = json.loads(path.read_text())
    rows["lpt_stage2"]["few"] -= 0.01
    path.write_text(json.dumps(rows))
    assert not readme_is_current(readme, metrics_dir)[0]
    assert report.main(["--check", "--file", str(readme), "--metrics-dir", str(metrics_dir)]) == 1


def test_print_and_missing_metrics_exit_codes(metrics_dir, readme, tmp_path, capsys):
    assert report.main(["--print", "--metrics-dir", str(metrics_dir)]) == 0
    out = capsys.readouterr().out
    assert "| `lptpp/moe` |" in out and "| Claim |" in out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert report.main(["--check", "--file", str(readme), "--metrics-dir", str(empty)]) == 2
    assert "dvc repro data" in capsys.readouterr().err


def test_frequency_ordered_confusion():
    counts = [5, 50, 20]
    cm = [[1, 1, 0], [0, 4, 0], [0, 3, 1]]
    row = Row("m", "s", {0: {"overall": 0.5, "confusion": cm}, 1: {"overall": 0.5, "confusion": cm}})
    out, order = frequency_ordered_confusion(row, counts)
    assert order.tolist() == [1, 2, 0]
    expected = np.array(cm, dtype=float)[np.ix_([1, 2, 0], [1, 2, 0])]
    np.testing.assert_allclose(out, expected / expected.sum(1, keepdims=True))
    with pytest.raises(ReportError, match="no stored confusion"):
        frequency_ordered_confusion(Row("m", "s", {0: {"overall": 0.5}}), counts)


# ------------------------------------------------------------------------------ the repository's own metrics/
def test_readme_results_block_agrees_with_metrics():
    from lptlib.config import load

    ok, expected = readme_is_current(ROOT / "README.md", ROOT / "metrics", load(ROOT / "params.yaml"))
    assert ok, f"README results block is stale: run `python -m lptlib.report --readme`; expected:\n{expected}"


def test_report_and_claims_files_agree_with_metrics():
    from lptlib.config import load

    rep = collect(ROOT / "metrics", config=load(ROOT / "params.yaml"))
    written = json.loads((ROOT / "metrics" / "report.json").read_text())
    assert written["best"] == (rep.best().name if rep.best() else None)
    assert set(written["rows"]) == {r.name for r in rep.rows}
    claims = json.loads((ROOT / "metrics" / "claims.json").read_text())
    assert claims == json.loads(json.dumps(claims_json(rep.claims())))


@pytest.mark.notebook
def test_06_report_notebook(metrics_dir, tmp_path):
    out = tmp_path / "out"
    pm.execute_notebook(
        str(ROOT / "notebooks" / "06_report.ipynb"),
        str(tmp_path / "06.ipynb"),
        parameters=notebook_parameters(
            ROOT / "notebooks" / "06_report.ipynb",
            **{
                "metrics_dir": str(metrics_dir),
                "out_dir": str(out),
                "metrics_path": str(out / "report.json"),
                "claims_path": str(out / "claims.json"),
                "fig_dir": str(out / "figures"),
                "seeds": {**{k: list(SEEDS) for k in ("vpt_study", "lpt", "tea", "lptpp")}, "vpt_study_probes": []},
            },
        ),
        kernel_name="python3",
        progress_bar=False,
        cwd=str(ROOT),
    )
    m = json.loads((out / "report.json").read_text())
    rep = collect(metrics_dir)
    assert m["best"] == "lptpp/vision_language" and set(m["rows"]) == {r.name for r in rep.rows}
    assert m["rows"]["lptpp/moe"]["overall"]["n"] == 3 and m["seeds"]["tea"] == list(SEEDS)
    claims = json.loads((out / "claims.json").read_text())
    assert claims == json.loads(json.dumps(claims_json(rep.claims())))
    figs = {p.name for p in (out / "figures").iterdir()}
    assert {"shot_accuracy.png", "claims.png", "per_class_vs_count.png", "confusion.png"} <= figs


@pytest.mark.parametrize("convention", ["decoupling", "oltr", "lpt"])
def test_the_report_groups_are_the_groups_every_row_was_scored_with(tmp_path, convention):
    """Under every shot convention, the groups the report (06_report's per-class figure) reads from
    metrics/data.json are the ones the data carries and the engine scores every row with. The counts include the
    thresholds (20, 100) where the conventions differ."""
    from lptlib.data.datasets import ArrayDataset, DataConfig, LTData
    from lptlib.measure.metrics import shot_accuracy

    counts = [150, 100, 60, 20, 19, 5]
    labels = np.repeat(np.arange(len(counts)), counts)
    images = np.zeros((len(labels), 28, 28), dtype=np.uint8)
    test = ArrayDataset(images[: 2 * len(counts)], np.repeat(np.arange(len(counts)), 2))
    names = [f"c{i}" for i in range(len(counts))]
    data = LTData(
        "toy_lt", names, ArrayDataset(images, labels), None, test, config=DataConfig(shot_convention=convention)
    )
    metrics = write_metrics(tmp_path / "metrics")
    (metrics / "data.json").write_text(json.dumps(data.summary()))
    rep = collect(metrics)
    scored = shot_accuracy(test.targets, test.targets, data.shot_counts, groups=data.groups)
    assert rep.groups == list(data.groups) == list(shot_groups(counts, convention))
    assert [rep.groups.count(g) for g in ("many", "medium", "few")] == [
        scored[f"n_{g}"] for g in ("many", "medium", "few")
    ]
    if convention != "oltr":  # the conventions disagree at the thresholds
        assert rep.groups != list(shot_groups(counts, "oltr"))
