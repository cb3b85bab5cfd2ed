"""`make data` (lptlib/install.py): a fresh machine without the Fashion-MNIST files gets them installed, or
stops at once with the one command to run; `make repro` and `make test` go through it."""

import gzip
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lptlib.data import datasets
from lptlib.data.datasets import FASHION_MNIST_FILES, DataError
from lptlib.install import INSTALL_HINT, apt_prefix, ensure_fashion_mnist, install_package

ROOT = Path(__file__).resolve().parents[1]


def _write_idx(folder: Path) -> None:
    """Four tiny gzipped idx files in Fashion-MNIST's names."""
    folder.mkdir(parents=True, exist_ok=True)
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    labels = np.array([0, 1, 2], dtype=np.uint8)
    for key, stem in FASHION_MNIST_FILES.items():
        arr = images if key.endswith("images") else labels
        header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        with gzip.open(folder / f"{stem}.gz", "wb") as f:
            f.write(header + arr.tobytes())


@pytest.fixture
def no_files(tmp_path, monkeypatch):
    """A machine without the files: the system folder and the cache are empty, no $LPTLIB_DATA."""
    system = tmp_path / "system" / "fashion-mnist"
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", system)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LPTLIB_DATA", raising=False)
    return system


def test_found_files_need_no_install(no_files, tmp_path):
    _write_idx(tmp_path / "mine")
    calls = []
    files = ensure_fashion_mnist(str(tmp_path / "mine"), prefix=lambda: calls.append(1) or [])
    assert files["train_images"].parent == tmp_path / "mine" and calls == []


def test_missing_files_are_installed_with_apt_get(no_files, tmp_path, monkeypatch):
    """No data.root and no system copy: apt-get (update, then install the package) runs and the files the
    package puts in its folder are found (a data.root without the files is an error instead: test_reliability)."""
    runs = []

    def fake_run(cmd, env=None, check=False):
        runs.append(cmd)
        if cmd[-1] == "dataset-fashion-mnist":
            _write_idx(no_files)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    files = ensure_fashion_mnist(None, prefix=lambda: ["sudo", "-n"])
    assert files["test_labels"].parent == no_files
    assert runs == [
        ["sudo", "-n", "apt-get", "update", "-qq"],
        ["sudo", "-n", "apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"],
    ]


def test_cannot_install_stops_at_once_with_the_command(no_files):
    with pytest.raises(DataError) as e:
        ensure_fashion_mnist(None, prefix=lambda: None)
    assert "Fashion-MNIST not found" in str(e.value) and INSTALL_HINT in str(e.value)
    assert "cannot install them here" in str(e.value)


def test_failed_apt_get_names_the_command():
    def failing(cmd, env=None, check=False):
        return subprocess.CompletedProcess(cmd, 100)

    with pytest.raises(DataError, match=r"`apt-get update -qq` failed; install the files by hand: sudo apt-get"):
        install_package([], run=failing)


@pytest.mark.parametrize(
    ("euid", "tools", "sudo_ok", "expected"),
    [
        (0, {"apt-get"}, False, []),  # root: apt-get itself
        (1000, {"apt-get", "sudo"}, True, ["sudo", "-n"]),  # password-less sudo
        (1000, {"apt-get", "sudo"}, False, None),  # sudo asks for a password
        (1000, {"apt-get"}, False, None),  # no sudo
        (0, set(), False, None),  # no apt-get (not Debian/Ubuntu)
    ],
)
def test_apt_prefix(euid, tools, sudo_ok, expected):
    def which(name):
        return f"/usr/bin/{name}" if name in tools else None

    def run(cmd, **kw):
        assert cmd == ["sudo", "-n", "true"]
        return subprocess.CompletedProcess(cmd, 0 if sudo_ok else 1)

    assert apt_prefix(euid, which, run) == expected


def test_command_exit_code_and_message_without_files(tmp_path):
    """`python -m lptlib.install --check` on a machine without the files: exit 2 at once, the command to run
    on stderr; an empty --root: exit 2 naming it (never another copy); with the files in --root: exit 0 and where
    they are."""
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    env.pop("LPTLIB_DATA", None)
    code = (
        "import sys; from pathlib import Path; from lptlib.data import datasets; "
        f"datasets.DEBIAN_FASHION_MNIST = Path({str(tmp_path / 'nothing')!r}); "
        "from lptlib.install import main; sys.exit(main(sys.argv[1:]))"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    p = subprocess.run(
        [sys.executable, "-c", code, "--check", "--root", ""], env=env, capture_output=True, text=True, cwd=ROOT
    )
    assert p.returncode == 2, p.stderr
    assert INSTALL_HINT in p.stderr
    p = subprocess.run(
        [sys.executable, "-c", code, "--check", "--root", str(empty)], env=env, capture_output=True, text=True, cwd=ROOT
    )
    assert p.returncode == 2, p.stderr
    assert f"data.root {str(empty)!r}" in p.stderr and INSTALL_HINT not in p.stderr
    _write_idx(empty)
    p = subprocess.run(
        [sys.executable, "-c", code, "--check", "--root", str(empty)], env=env, capture_output=True, text=True, cwd=ROOT
    )
    assert p.returncode == 0 and p.stdout.strip() == f"Fashion-MNIST: {empty}"


def test_make_repro_and_test_set_up_the_data_first():
    """The two commands run `make data` before anything reads the data; CI calls `make test`, not its own copy."""
    plan = {
        target: subprocess.run(
            ["make", "-n", "-W", "pyproject.toml", target], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        for target in ("repro", "test")
    }
    for target, out in plan.items():
        lines = out.splitlines()
        install = next(i for i, ln in enumerate(lines) if "lptlib.install" in ln)
        later = "dvc repro" if target == "repro" else "pytest"
        assert install < next(i for i, ln in enumerate(lines) if later in ln), target
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and not re.search(r"apt-get|fashion-mnist", ci)
