"""Small helpers: seeding, progress bars, atomic writes of JSON and tensors."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from tqdm.std import tqdm

from lptlib.dist import is_main

T = TypeVar("T")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (seeds code that uses the global NumPy RNG)
    torch.manual_seed(seed)


def progress(iterable: Iterable[T], desc: str = "", total: int | None = None, **kwargs: Any) -> Iterator[T]:
    """A tqdm bar that stays readable in logs: text only, sparse updates when not on a terminal.

    `LPTLIB_PROGRESS=0` turns bars off (the tests do).
    """
    disable = os.environ.get("LPTLIB_PROGRESS", "1") == "0"
    interactive = sys.stderr.isatty()
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        disable=disable,
        file=sys.stderr,
        mininterval=0.5 if interactive else 15.0,
        dynamic_ncols=True,
        leave=True,
        **kwargs,
    )


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write via a temporary file and rename, so a crash never leaves a half-written file.
    In a distributed run only rank 0 writes."""
    path = Path(path)
    if not is_main():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


METADATA_KEY = "lptlib"  # safetensors metadata is stored as one sorted JSON string under this key


def save_safetensors(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> Path:
    """Save tensors (made contiguous, on the CPU) as a safetensors file with string metadata, atomically
    (temporary file + rename). The metadata is one sorted JSON string: safetensors writes several metadata keys
    in an order that changes from process to process, which would make identical states different files (and
    DVC re-run every stage downstream). In a distributed run only rank 0 writes."""
    from safetensors.torch import save_file

    path = Path(path)
    if not is_main():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    meta = {METADATA_KEY: json.dumps(metadata, sort_keys=True)} if metadata else None
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def read_safetensors(
    path: str | os.PathLike, error: type[Exception] = ValueError, what: str = "file"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file written by `save_safetensors` (or with plain metadata);
    a damaged file raises `error` naming it."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise error(
            f"{what} {path} is not a readable safetensors file ({e}); delete it and re-run the stage that writes it"
        ) from None
    if METADATA_KEY in meta:
        try:
            meta = json.loads(meta[METADATA_KEY])
        except ValueError as e:
            meta = e
        if not isinstance(meta, dict):
            raise error(
                f"{what} {path} has damaged metadata (not a JSON mapping: {meta}); delete it and re-run the stage "
                "that writes it"
            ) from None
    return tensors, meta


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None  # JSON has no NaN; an empty shot group reads as null
    return obj


def save_json(obj: Any, path: str | os.PathLike) -> Path:
    """Atomically write `obj` as pretty JSON (NumPy/torch scalars converted, NaN -> null)."""
    text = json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n"
    return atomic_write_bytes(path, text.encode())


def git_revision(root: str | os.PathLike | None = None) -> str | None:
    """The current commit (with '-dirty' when the tree has changes), or None outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def default_device() -> torch.device:
    """CUDA when available (under torchrun: this process's GPU, LOCAL_RANK), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    return torch.device("cpu")


def code_digest() -> str:
    """SHA-256 of the code a result depends on: every file of the `lptlib` package that runs (its sources and
    package data), and the code cells of the repository's notebooks. A checkpoint or cache made by other code
    never matches."""
    from lptlib.paths import repo_root

    h = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for path in sorted(p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(f"{path.relative_to(package)}\0".encode() + path.read_bytes() + b"\0")
    try:
        notebooks = sorted((repo_root() / "notebooks").glob("*.ipynb"))
    except FileNotFoundError:
        notebooks = []
    for nb in notebooks:
        cells = json.loads(nb.read_text()).get("cells", [])
        code = "\n".join("".join(c.get("source", "")) for c in cells if c.get("cell_type") == "code")
        h.update(f"{nb.name}\0{code}\0".encode())
    return h.hexdigest()


_WATCHED_PARENT: tuple[int, int] | None = None


def exit_with_parent(interval: float = 1.0) -> None:
    """Stop this process when its parent dies: a daemon thread polls the parent pid and exits at once (status 143,
    as SIGTERM) once the process has been handed to another parent. Called in every worker of `lptlib.pool` and in a
    stage's kernel (`lptlib.stage.start`), so a killed kernel, papermill or `dvc` leaves nothing training and
    writing checkpoints."""
    import threading
    import time

    global _WATCHED_PARENT
    parent = os.getppid()
    if parent == 1 or _WATCHED_PARENT == (os.getpid(), parent):  # a child of init, or watched already
        return
    _WATCHED_PARENT = (os.getpid(), parent)

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                os._exit(143)

    threading.Thread(target=watch, name="lptlib-exit-with-parent", daemon=True).start()
