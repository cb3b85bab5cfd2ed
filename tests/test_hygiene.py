"""Notebook and pipeline hygiene: stripped outputs, python3 kernels, one parameters cell that declares
every params.yaml section, every notebook run by a DVC stage the conventional way."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())


def parameters_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS][:8] == [
        "00_data.ipynb",
        "00_pretrain.ipynb",
        "01_vpt_study.ipynb",
        "01_vpt_study_probes.ipynb",
        "02_lpt_stage1.ipynb",
        "03_lpt_stage2.ipynb",
        "04_tea.ipynb",
        "04_tea_report.ipynb",
    ]


def test_outputs_are_stripped():
    r = subprocess.run(
        [sys.executable, "-m", "nbstripout", "--verify", "--extra-keys=metadata.language_info", *map(str, NOTEBOOKS)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, f"strip the notebooks (make strip): {r.stdout}{r.stderr}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_metadata_and_parameters(path):
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert all(not c.get("outputs") and not c.get("execution_count") for c in nb["cells"] if c["cell_type"] == "code")
    cells = parameters_cells(nb)
    assert len(cells) == 1, "exactly one cell tagged `parameters`"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert "guard_parameters()" in "".join(code[0]["source"]) and code[1] is cells[0], (
        "the first code cell calls lptlib.stage.guard_parameters(), the parameters cell comes right after it"
    )
    tree = ast.parse("".join(cells[0]["source"]))
    declared = {
        t.id
        for node in tree.body
        if isinstance(node, (ast.Assign, ast.AnnAssign))
        for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
    }
    assert {"params", "overrides", "out_dir", "metrics_path", "fig_dir"} <= declared
    sections = declared & set(PARAMS)
    assert not sections, f"{path.name} declares params.yaml sections {sections}: they belong in `overrides`"
    annotations = [ast.unparse(n.annotation) for n in tree.body if isinstance(n, ast.AnnAssign)]
    assert all(a in ("str", "int", "float", "bool", "dict", "list") for a in annotations), (
        f"{path.name}: papermill's parameter parser reads plain annotations only, got {annotations}"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_lists_every_parameter(path):
    """`papermill --help-notebook` shows each parameter a user can set (its parser drops some annotations and
    comments holding `=`: none is used)."""
    cells = parameters_cells(json.loads(path.read_text()))
    tree = ast.parse("".join(cells[0]["source"]))
    declared = [n.target.id for n in tree.body if isinstance(n, ast.AnnAssign)]
    shown = subprocess.run(
        [sys.executable, "-m", "papermill", "--help-notebook", str(path)], capture_output=True, text=True, check=True
    ).stdout
    listed = {line.split()[0].rstrip(":") for line in shown.splitlines() if line.startswith("  ") and line.split()}
    assert set(declared) <= listed, f"{path.name}: papermill does not list {set(declared) - listed}:\n{shown}"


def test_notebook_02_trains_the_arms_of_the_config():
    """The arms stage 1's notebook trains are `lpt.arms` (params.yaml), not a notebook parameter of their own."""
    nb = json.loads((ROOT / "notebooks" / "02_lpt_stage1.ipynb").read_text())
    tree = ast.parse("".join(parameters_cells(nb)[0]["source"]))
    assert not {n.target.id for n in tree.body if isinstance(n, ast.AnnAssign)} & {"ladder", "arms", "rungs"}
    assert "cfg.lpt.arms" in "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")


def _stages() -> dict:
    """Every stage definition, a per-seed (`foreach`) stage by its `do` block."""
    return {name: s.get("do", s) for name, s in DVC["stages"].items()}


def test_every_notebook_is_a_stage_run_by_papermill():
    cmds = {name: " ".join(s["cmd"] if isinstance(s["cmd"], list) else [s["cmd"]]) for name, s in _stages().items()}
    for path in NOTEBOOKS:
        rel = f"notebooks/{path.name}"
        stages = [n for n, s in _stages().items() if rel in s.get("deps", [])]
        assert stages, f"{rel} is not a dependency of any dvc.yaml stage"
        for n in stages:
            assert f"papermill {rel} outputs/nb/" in cmds[n] and "-k python3" in cmds[n] and "{overrides: {" in cmds[n]
            assert " -f " not in cmds[n], "papermill must not inject params.yaml's sections (they would run as code)"
            assert f"python -m lptlib.keep -- papermill {rel} " in cmds[n], "a failed run must not lose the results"
            assert "mkdir -p outputs/nb" in cmds[n]


def test_stage_outputs_are_where_git_expects_them():
    """Executed notebooks and weights are DVC outs under outputs/; metrics and figures git-tracked and persistent
    (lptlib.keep, not DVC, clears and restores them)."""

    def ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0

    assert ignored("outputs/nb/x.ipynb") and not ignored("metrics/x.json") and not ignored("figures/x/y.png")
    for name, stage in _stages().items():
        for m in stage.get("metrics", []):
            ((path, opts),) = m.items()
            assert path.startswith("metrics/") and opts == {"cache": False, "persist": True}, name
        for p in stage.get("plots", []):
            ((path, opts),) = p.items()
            assert path.startswith("figures/") and opts == {"cache": False, "persist": True}, name
        for out in stage.get("outs", []):
            path = out if isinstance(out, str) else next(iter(out))
            assert path.startswith("outputs/"), name


def test_keep_protects_exactly_the_metrics_and_plots_each_stage_declares():
    """lptlib.keep sets aside (and restores on a failure) the outputs a command names; an input under metrics/ (the
    TEA report's members, the report's metrics folder) must stay in place, and every declared result be covered."""
    import shlex

    from lptlib.keep import kept_paths

    for name, stage in _stages().items():
        cmds = stage["cmd"] if isinstance(stage["cmd"], list) else [stage["cmd"]]
        declared = {next(iter(m)) for m in [*stage.get("metrics", []), *stage.get("plots", [])]}
        kept = {p for c in cmds if "lptlib.keep" in c for p in kept_paths(shlex.split(c))}
        assert kept == declared, f"{name}: kept {sorted(kept)}, declared {sorted(declared)}"


def test_dvc_analytics_off():
    assert "analytics = false" in (ROOT / ".dvc" / "config").read_text()


def test_a_notebook_saved_with_another_kernel_is_reset_to_the_projects(tmp_path):
    """nbstripout keeps the kernelspec: a notebook saved with another kernel would re-run its stage (make strip and
    make repro reset it, lptlib.hygiene); the committed notebooks are left byte-identical."""
    from lptlib.hygiene import KERNELSPEC, normalise_kernel

    committed = NOTEBOOKS[0]
    copy = tmp_path / committed.name
    copy.write_bytes(committed.read_bytes())
    assert not normalise_kernel(copy) and copy.read_bytes() == committed.read_bytes()
    nb = json.loads(copy.read_text())
    nb["metadata"]["kernelspec"] = {"display_name": "Python (myenv)", "language": "python", "name": "myenv"}
    copy.write_text(json.dumps(nb, indent=1))
    assert normalise_kernel(copy) and json.loads(copy.read_text())["metadata"]["kernelspec"] == KERNELSPEC
    assert copy.read_bytes() == committed.read_bytes()
    assert "lptlib.hygiene notebooks/*.ipynb" in (ROOT / "Makefile").read_text()
