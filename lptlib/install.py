"""Set up the offline miniature's data on this machine: `make data` (run by `make repro` and `make test`).

    python -m lptlib.install            # find the Fashion-MNIST files, install them when they are missing
    python -m lptlib.install --check    # only say whether they are there (exit 2 when not)

The miniature reads Fashion-MNIST's four idx files from `data.root` when it is set (a root without them is an error
naming what is missing, never a fall back to another copy), else from the places `find_fashion_mnist` searches
(`$LPTLIB_DATA`, the Debian package's folder, lptlib's cache). When none holds them, the Debian/Ubuntu package
`dataset-fashion-mnist` is installed with apt-get, as root or through password-less sudo. Where that is not
possible (no apt-get, no root and no password-less sudo, or apt-get fails) the command stops at once, before
any long computation, and prints the one command that installs the files (exit 2).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from lptlib.data.datasets import DataError, find_fashion_mnist
from lptlib.schema import ConfigError

PACKAGE = "dataset-fashion-mnist"
INSTALL_HINT = f"sudo apt-get install {PACKAGE}"


def apt_prefix(
    euid: int | None = None, which: Callable[[str], str | None] = shutil.which, run: Callable = subprocess.run
) -> list[str] | None:
    """How to run apt-get here: [] as root, ['sudo', '-n'] with password-less sudo, None when it cannot be run."""
    if which("apt-get") is None:
        return None
    if (os.geteuid() if euid is None else euid) == 0:
        return []
    if which("sudo") is None:
        return None
    probe = run(["sudo", "-n", "true"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return ["sudo", "-n"] if probe.returncode == 0 else None


def install_package(prefix: Sequence[str], run: Callable | None = None) -> None:
    """`apt-get update` then `apt-get install -y dataset-fashion-mnist`; DataError naming the failing command."""
    run = run or subprocess.run
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for args in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", PACKAGE]):
        cmd = [*prefix, *args]
        print("+ " + " ".join(cmd), flush=True)
        if run(cmd, env=env, check=False).returncode != 0:
            raise DataError(f"`{' '.join(cmd)}` failed; install the files by hand: {INSTALL_HINT}")


def ensure_fashion_mnist(
    root: str | None = None, install: bool = True, prefix: Callable[[], list[str] | None] = apt_prefix
) -> dict[str, Path]:
    """The four Fashion-MNIST files, installing the Debian package when they are missing and `install` allows.

    Raises DataError with the command to run when the files are missing and cannot be installed here."""
    try:
        return find_fashion_mnist(root)
    except DataError as missing:
        if root:
            raise  # a data.root without the files: the package would not put them there
        how = prefix() if install else None
        if how is None:
            if not install:
                reason = "not installing (--check)"
            elif shutil.which("apt-get"):
                reason = "cannot install them here (apt-get needs root or password-less sudo)"
            else:
                reason = "cannot install them here (no apt-get on this machine)"
            raise DataError(
                f"{missing}\n{reason}. Run once:\n    {INSTALL_HINT}\nthen the same make command again."
            ) from None
        install_package(how)
        return find_fashion_mnist(root)


def _params_root() -> str | None:
    """`data.root` of the repository's params.yaml when it runs the miniature (else None: the default places)."""
    from lptlib.config import load
    from lptlib.paths import repo_root

    cfg = load(repo_root() / "params.yaml")
    return cfg.data.root if cfg.data.name == "fashion_mnist_lt" else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m lptlib.install", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--check", action="store_true", help="do not install; exit 2 when the files are missing")
    ap.add_argument(
        "--root",
        default=None,
        help="the folder that must hold the files (default: data.root of params.yaml; '': the default places)",
    )
    args = ap.parse_args(argv)
    try:
        root = (args.root or None) if args.root is not None else _params_root()
        files = ensure_fashion_mnist(root, install=not args.check)
    except (DataError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Fashion-MNIST: {Path(files['train_images']).parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
