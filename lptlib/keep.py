"""Run a stage's command so that a failure loses nothing: `python -m lptlib.keep -- papermill ...` (every stage of
dvc.yaml runs its notebook this way).

DVC deletes a stage's outputs before it runs it, so a stage that failed at once, or was interrupted with Ctrl-C,
used to leave its committed and uncommitted `metrics/` and `figures/` deleted. The stages' metrics and plots are
therefore `persist: true` (DVC leaves them alone), and this wrapper does what DVC did, safely:

1. the results the command writes (its papermill output parameters under `metrics/` or `figures/`) are moved aside into
   `outputs/.keep/<digest>/` (under the working directory: the repository root under DVC), so the run starts from a clean slate as under DVC;
2. the command runs (its own process group; it is stopped when this wrapper is, or when `dvc`, its parent, dies);
3. on success the set-aside copy is dropped; on a failure, SIGINT or SIGTERM, what the run wrote there is removed
   and the previous results are moved back, byte for byte.

A wrapper killed with SIGKILL cannot move them back itself: its set-aside copy stays, and the next run of the same
command restores it first (and says so). Exit status: the command's (130 after SIGINT, 143 after SIGTERM).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

KEPT = ("metrics/", "figures/")
#: seconds a stopped command has to exit before its process group is killed
GRACE_S = 30.0


def kept_paths(command: Sequence[str]) -> list[str]:
    """The results a stage command writes: the values of its papermill parameters `-p <name> <value>` that name an
    output (`<name>` ending in `_path`, or `fig_dir`) under metrics/ or figures/, in order, once each. Inputs
    (`members_dir`, `metrics_dir`) are left where they are. `tests/test_hygiene.py` checks that these are exactly the
    metrics and plots each stage of dvc.yaml declares."""
    out: list[str] = []
    args = list(command)
    for flag, name, value in zip(args, args[1:], args[2:], strict=False):
        is_output = flag in ("-p", "--parameters") and (name.endswith("_path") or name == "fig_dir")
        if is_output and value.startswith(KEPT) and value.rstrip("/") not in out:
            out.append(value.rstrip("/"))
    return out


def keep_dir(paths: Sequence[str], root: Path) -> Path:
    """Where a command's previous results are set aside while it runs (one folder per set of paths)."""
    digest = hashlib.sha256("\n".join(paths).encode()).hexdigest()[:16]
    return root / "outputs" / ".keep" / digest


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def set_aside(paths: Sequence[str], root: Path) -> Path:
    """Move the existing `paths` (relative to `root`) into their keep folder; record which existed."""
    where = keep_dir(paths, root)
    if where.exists():
        restore(paths, root)
        print(f"lptlib.keep: restored the results a killed earlier run had set aside in {where}", file=sys.stderr)
    where.mkdir(parents=True)
    existed = []
    for i, rel in enumerate(paths):
        src = root / rel
        if src.exists():
            was_dir = src.is_dir()
            os.replace(src, where / str(i))
            existed.append(rel)
            if was_dir:
                src.mkdir()  # the command writes into it (papermill creates no folders)
    (where / "manifest.json").write_text(json.dumps({"paths": list(paths), "existed": existed}))
    return where


def restore(paths: Sequence[str], root: Path) -> None:
    """Put the set-aside results back: what a failed run wrote at those paths is removed first."""
    where = keep_dir(paths, root)
    manifest = json.loads((where / "manifest.json").read_text()) if (where / "manifest.json").is_file() else None
    if manifest is None:  # killed while setting aside: whatever was moved is numbered in the folder
        manifest = {"paths": list(paths), "existed": [p for i, p in enumerate(paths) if (where / str(i)).exists()]}
    for i, rel in enumerate(manifest["paths"]):
        dst = root / rel
        _remove(dst)
        if rel in manifest["existed"]:
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(where / str(i), dst)
    shutil.rmtree(where)


def drop(paths: Sequence[str], root: Path) -> None:
    """Success: forget the set-aside copy."""
    shutil.rmtree(keep_dir(paths, root))


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when this wrapper dies (Linux prctl PR_SET_PDEATHSIG; elsewhere a no-op)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1


#: what a stage's configuration is read from: a change while it runs makes its results unrecordable
CONFIG_FILES = ("params.yaml", "presets")


def config_digest(root: Path) -> str:
    """A digest of params.yaml and every file under presets/ (names and bytes)."""
    h = hashlib.sha256()
    for name in CONFIG_FILES:
        path = root / name
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            h.update(str(f.relative_to(root)).encode() + b"\0" + (f.read_bytes() if f.is_file() else b"-") + b"\0")
    return h.hexdigest()


def run(command: Sequence[str], root: Path | None = None) -> int:
    """Run `command` with its previous results set aside, restored unless it succeeds; its exit status. A run during
    which params.yaml or presets/ changed counts as failed: DVC would record the new values for its results."""
    root = root or Path.cwd()  # the command reads its relative paths from here
    paths = kept_paths(command)
    before = config_digest(root)
    set_aside(paths, root)
    status: int | None = None
    stop = {"signal": None}

    def forward(signum, _frame):  # stop the command, then restore below
        stop.setdefault("at", time.monotonic())
        stop["signal"] = signum
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)

    parent = os.getppid()
    try:
        child = subprocess.Popen(list(command), cwd=root, start_new_session=True, preexec_fn=_die_with_parent)
        old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            while status is None:
                try:
                    status = child.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    if os.getppid() != parent and stop["signal"] is None:  # dvc died: stop the command
                        forward(signal.SIGTERM, None)
                    elif "at" in stop and time.monotonic() - stop["at"] > GRACE_S:
                        os.killpg(child.pid, signal.SIGKILL)  # it did not stop in time
        finally:
            for s, h in old.items():
                signal.signal(s, h)
    except BaseException:
        restore(paths, root)
        raise
    if status == 0 and stop["signal"] is None and config_digest(root) != before:
        print(
            "lptlib.keep: params.yaml or presets/ changed while the command ran (an edit, or a `dvc exp run -S` in "
            "this workspace): its results were made with the old values and DVC would record the new ones, so they "
            "are not kept. Run the stage again (for experiments: dvc exp run --temp or --queue)",
            file=sys.stderr,
        )
        status = 75  # EX_TEMPFAIL
    if status != 0 or stop["signal"] is not None:
        restore(paths, root)
        if paths:
            print(
                f"lptlib.keep: the command failed; the previous {', '.join(paths)} are back in place", file=sys.stderr
            )
        if stop["signal"] is not None:
            return 128 + stop["signal"]
        return status if status > 0 else 128 - status
    drop(paths, root)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print("usage: python -m lptlib.keep -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
