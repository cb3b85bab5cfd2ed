"""The results report: rows from the metrics files only, TEA members selected on val, the frequency-ordered
confusion matrix, and a README table that must agree with metrics/ (this test fails when it does not)."""

import json
import shutil
from pathlib import Path

import numpy as np
import papermill as pm
import pytest

from lptlib.report import ReportError, best_by_val, collect, frequency_ordered_confusion, readme_is_current
from lptlib.report import table as report

ROOT = Path(__file__).resolve().parents[1]


def test_readme_results_table_agrees_with_metrics():
    ok, expected = readme_is_current(ROOT / "README.md", ROOT / "metrics")
    assert ok, f"README results table is stale: run `python -m lptlib.report --readme`; expected:\n{expected}"


@pytest.fixture
def metrics_copy(tmp_path):
    dst = tmp_path / "metrics"
    shutil.copytree(ROOT / "metrics", dst)
    return dst


def test_a_changed_metric_makes_the_readme_check_fail(metrics_copy, tmp_path, capsys):
    path = metrics_copy / "lpt_stage2.json"
    m = json.loads(path.read_text())
    m["lpt_stage2"]["overall"] += 0.01
    path.write_text(json.dumps(m))
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    assert not readme_is_current(readme, metrics_copy)[0]
    assert report.main(["--check", "--file", str(readme), "--metrics-dir", str(metrics_copy)]) == 1
    assert report.main(["--readme", "--file", str(readme), "--metrics-dir", str(metrics_copy)]) == 0
    assert readme_is_current(readme, metrics_copy)[0]
    assert readme.read_text().count(report.README_BEGIN) == 1  # rewritten in place, rest of the file kept
    assert len(readme.read_text().splitlines()) == len((ROOT / "README.md").read_text().splitlines())


def test_rows_come_from_every_stage(metrics_copy):
    rep = collect(metrics_copy)
    stages = {r.stage for r in rep.rows}
    assert stages == {"vpt_study", "lpt_stage1", "lpt_stage2", "tea_report", "tea", "lptpp_phase3"}
    names = [r.name for r in rep.rows]
    assert names[:6] == [
        "linear_probe/instance_balanced",
        "linear_probe/class_balanced",
        "vpt_deep/instance_balanced",
        "vpt_deep/class_balanced",
        "lpt_stage1",
        "lpt_stage2",
    ]
    assert "lptpp/MoE scorer" in names and "zero_shot_clip" in names
    stage1 = json.loads((metrics_copy / "lpt_stage1.json").read_text())["lpt_stage1"]
    assert rep.row("lpt_stage1").overall == stage1["overall"]
    assert rep.best().overall == max(r.overall for r in rep.rows)


def test_missing_metrics_name_the_stage_to_run(metrics_copy):
    (metrics_copy / "lptpp.json").unlink()
    with pytest.raises(ReportError, match=r"dvc repro lptpp_phase3"):
        collect(metrics_copy)


def test_tea_members_are_selected_on_val_not_test():
    members = {
        "a-la-none": {"peft": "a", "tea": "none", "val_overall": 0.9, "overall": 0.9},
        "a-la-pea": {"peft": "a", "tea": "pea", "val_overall": 0.5, "overall": 0.99},
        "a-ce-pea": {"peft": "a", "tea": "pea", "val_overall": 0.7, "overall": 0.1},
        "a-ce-pea_pg": {"peft": "a", "tea": "pea_pg", "val_overall": 0.7, "overall": 0.2},
    }
    assert best_by_val(members, "a") == "a-ce-pea"  # best val among TEA variants; a tie keeps matrix order
    assert best_by_val(members, "b") is None


def test_frequency_ordered_confusion():
    counts = [5, 50, 20]
    cm = [[1, 1, 0], [0, 4, 0], [0, 3, 1]]
    row = report.Row("m", "s", 0.0, 0.0, 0.0, 0.0, 0, confusion=cm)
    out, order = frequency_ordered_confusion(row, counts)
    assert order.tolist() == [1, 2, 0]
    expected = np.array(cm, dtype=float)[np.ix_([1, 2, 0], [1, 2, 0])]
    np.testing.assert_allclose(out, expected / expected.sum(1, keepdims=True))


@pytest.mark.notebook
def test_06_report_notebook(tmp_path):
    out = tmp_path / "out"
    pm.execute_notebook(
        str(ROOT / "notebooks" / "06_report.ipynb"),
        str(tmp_path / "06.ipynb"),
        parameters={
            "metrics_dir": str(ROOT / "metrics"),
            "out_dir": str(out),
            "metrics_path": str(out / "report.json"),
            "fig_dir": str(out / "figures"),
        },
        kernel_name="python3",
        progress_bar=False,
        cwd=str(ROOT),
    )
    m = json.loads((out / "report.json").read_text())
    assert m["best"] in m["rows"] and len(m["rows"]) == len(collect(ROOT / "metrics").rows)
    figs = {p.name for p in (out / "figures").iterdir()}
    assert {"shot_accuracy.png", "per_class_vs_count.png", "confusion.png"} <= figs
