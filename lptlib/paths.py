"""Repository-rooted paths, so a notebook behaves the same from JupyterLab, papermill or pytest."""

from __future__ import annotations

import os
from pathlib import Path

_MARKERS = ("dvc.yaml", "params.yaml")


def repo_root(start: str | os.PathLike | None = None) -> Path:
    """The nearest folder at or above `start` (default: cwd) holding dvc.yaml and params.yaml.

    `LPTLIB_ROOT` overrides the search (useful for a notebook copied elsewhere).
    """
    env = os.environ.get("LPTLIB_ROOT")
    if env:
        return Path(env).resolve()
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if all((folder / m).is_file() for m in _MARKERS):
            return folder
    raise FileNotFoundError(
        f"no repository root (a folder with {' and '.join(_MARKERS)}) at or above {here}; "
        "run from inside the repository or set LPTLIB_ROOT"
    )


def resolve(path: str | os.PathLike, root: Path | None = None) -> Path:
    """An absolute path: `path` itself if absolute (with ~ expanded), else relative to the repo root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (root or repo_root()) / p
