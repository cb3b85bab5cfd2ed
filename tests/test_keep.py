"""lptlib.keep: a stage command that fails, is interrupted or loses its parent leaves the previous results in place."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import process_alive, wait_for

from lptlib import keep

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _previous(root: Path) -> dict[str, bytes]:
    """Committed-looking results: a metrics file and a figures folder with two figures."""
    (root / "metrics").mkdir()
    (root / "figures" / "s").mkdir(parents=True)
    files = {"metrics/m.json": b'{"overall": 0.5}', "figures/s/a.png": b"old a", "figures/s/b.png": b"old b"}
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    return files


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not str(p.relative_to(root)).startswith("outputs")
    }


def _writer(exit_code: int = 0, sleep: float = 0.0) -> list[str]:
    """A command that writes new results (only figure a: b is stale), then sleeps and exits with `exit_code`."""
    code = textwrap.dedent(
        f"""
        import sys, time
        open("metrics/m.json", "w").write('{{"overall": 0.9}}')
        open("figures/s/a.png", "w").write("new a")
        time.sleep({sleep})
        sys.exit({exit_code})
        """
    )
    return [sys.executable, "-c", code, "-p", "metrics_path", "metrics/m.json", "-p", "fig_dir", "figures/s"]


def test_kept_paths_are_the_output_parameters_under_metrics_and_figures():
    cmd = ["papermill", "nb.ipynb", "outputs/nb/x.ipynb", "-p", "metrics_path", "metrics/a.json", "-p", "fig_dir"]
    inputs = ["-p", "members_dir", "metrics/tea", "-p", "metrics_dir", "metrics"]  # read, not written
    assert keep.kept_paths([*cmd, "figures/a/", *inputs, "-p", "stage1_path", "outputs/s.safetensors"]) == [
        "metrics/a.json",
        "figures/a",
    ]


def test_success_replaces_the_results_as_dvc_would(tmp_path):
    _previous(tmp_path)
    assert keep.run(_writer(), root=tmp_path) == 0
    assert _tree(tmp_path) == {"metrics/m.json": b'{"overall": 0.9}', "figures/s/a.png": b"new a"}  # b: stale, gone
    assert not any((tmp_path / "outputs" / ".keep").iterdir())


def test_failure_puts_the_previous_results_back_byte_for_byte(tmp_path, capsys):
    before = _previous(tmp_path)
    assert keep.run(_writer(exit_code=3), root=tmp_path) == 3
    assert _tree(tmp_path) == before
    assert "the previous metrics/m.json, figures/s are back in place" in capsys.readouterr().err


def test_failure_of_a_first_run_leaves_nothing_half_written(tmp_path):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "figures" / "s").mkdir(parents=True)  # the stage's `mkdir -p` before it
    assert keep.run(_writer(exit_code=1), root=tmp_path) == 1
    assert not (tmp_path / "metrics" / "m.json").exists() and not any((tmp_path / "figures" / "s").iterdir())


def _wrapper(tmp_path: Path, sleep: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lptlib.keep", "--", *_writer(sleep=sleep)],
        cwd=tmp_path,
        env=ENV,
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_run_puts_the_previous_results_back(tmp_path, signum, status):
    before = _previous(tmp_path)
    proc = _wrapper(tmp_path, sleep=60)
    wait_for(lambda: (tmp_path / "figures" / "s" / "a.png").exists() and _tree(tmp_path) != before)
    proc.send_signal(signum)
    assert proc.wait(timeout=30) == status
    assert _tree(tmp_path) == before


def test_a_run_whose_parent_dies_stops_and_puts_the_results_back(tmp_path):
    """`dvc` killed: the wrapper (its child) stops the command and restores; nothing keeps running."""
    before = _previous(tmp_path)
    launcher = textwrap.dedent(
        f"""
        import os, subprocess, sys, time
        p = subprocess.Popen([sys.executable, "-m", "lptlib.keep", "--", *{_writer(sleep=60)!r}])
        print(p.pid, flush=True)
        time.sleep(3)  # the wrapper has started (and noted its parent) and the command has written
        os._exit(0)
        """
    )
    log = tmp_path / "outputs" / "launcher.txt"
    log.parent.mkdir()
    with log.open("w") as out:  # a file, not a pipe: the wrapper keeps its end open
        subprocess.run([sys.executable, "-c", launcher], cwd=tmp_path, env=ENV, stdout=out, stderr=out, timeout=60)
    wrapper = int(log.read_text().split()[0])
    wait_for(lambda: not process_alive(wrapper), timeout=30)
    assert _tree(tmp_path) == before


def test_a_killed_wrappers_set_aside_results_come_back_at_the_next_run(tmp_path, capsys):
    before = _previous(tmp_path)
    keep.set_aside(["metrics/m.json", "figures/s"], tmp_path)  # as a SIGKILLed wrapper leaves it
    (tmp_path / "metrics" / "m.json").write_text("partial")
    assert keep.run(_writer(exit_code=2), root=tmp_path) == 2
    assert _tree(tmp_path) == before
    assert "restored the results a killed earlier run had set aside" in capsys.readouterr().err


def test_a_run_whose_params_change_meanwhile_keeps_nothing(tmp_path, capsys):
    """A `dvc exp run -S` in the workspace (or an edit) while a stage runs: DVC would record the new value in dvc.lock
    for results made with the old one."""
    before = _previous(tmp_path)
    (tmp_path / "params.yaml").write_text("preset: miniature\n")
    editor = [
        *_writer()[:2],
        _writer()[2].replace("import sys, time", "import sys, time\nopen('params.yaml', 'a').write('seed: 3\\n')"),
    ]
    assert keep.run([*editor, *_writer()[3:]], root=tmp_path) == 75
    assert {k: v for k, v in _tree(tmp_path).items() if k != "params.yaml"} == before
    assert "params.yaml or presets/ changed while the command ran" in capsys.readouterr().err
