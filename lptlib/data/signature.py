"""The data signature the pipeline's `preflight` stage writes (`lptlib.preflight`): every data and weight file a
run reads, with its content digest (size and sha256, cached: `lptlib.data.digest`).

    python -m lptlib.data.signature outputs/data_signature.json [--params params.yaml]   # alone, no model checks

DVC cannot name the data as a dependency (where it lies is `data.root`, a parameter, often outside the repository),
so the stage writing it is `always_changed`: it runs first in every `dvc repro` (seconds; a stat per file once
digests are cached) and every stage that reads the data depends on its output. A label file, an image or a user's
weight file changed in place changes the signature, and `dvc repro` re-runs what read it; unchanged data leave the
file byte-identical and nothing re-runs. Weight files the pipeline writes itself (under `outputs/`) are
dependencies of their own stage instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lptlib.data.datasets import OLTR_SPLIT_FILES, DataError, check_images, data_files
from lptlib.data.digest import file_digests
from lptlib.paths import repo_root, resolve
from lptlib.utils import atomic_write_bytes


def weight_files(cfg) -> dict[str, Path]:
    """The user's weight files the backbones name, by their key (not 'random' or 'hub', and not the pipeline's own
    under outputs/, which are dependencies of their stage)."""
    out = {}
    for role in ("visual", "vision_language"):
        weights = getattr(cfg.backbones, role).weights
        if weights not in ("random", "hub") and not resolve(weights).is_relative_to(repo_root() / "outputs"):
            out[f"backbones.{role}.weights"] = resolve(weights)
    return out


def signature(cfg) -> dict:
    """{'dataset': name, 'data': {name: digest}, 'weights': {key: digest}} for the resolved config `cfg`: names that
    do not depend on where the files lie, so the same data on another machine give the same signature."""

    def digests(files: dict[str, Path]) -> dict[str, str]:
        return dict(zip(files, file_digests(list(files.values())), strict=True))

    try:
        files = data_files(cfg.data)
        if cfg.data.name in OLTR_SPLIT_FILES:  # every listed image is one (a header read each: docs/benchmarks.md)
            check_images({k: v for k, v in files.items() if not k.startswith("split_dir/") and k != "classnames_file"})
        return {"dataset": cfg.data.name, "data": digests(files), "weights": digests(weight_files(cfg))}
    except FileNotFoundError as e:
        raise DataError(str(e)) from None


def write(cfg, out: Path) -> dict:
    """Compute `cfg`'s signature, write it to `out` (sorted JSON) and say so; the signature."""
    sig = signature(cfg)
    atomic_write_bytes(out, (json.dumps(sig, indent=1, sort_keys=True) + "\n").encode())
    print(f"{out}: {len(sig['data'])} data and {len(sig['weights'])} weight files")
    return sig


def main(argv: list[str] | None = None) -> int:
    from lptlib.config import ConfigError, load

    ap = argparse.ArgumentParser(prog="python -m lptlib.data.signature", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="where to write the signature (JSON)")
    ap.add_argument("--params", type=Path, default=None, help="params file (default: <repo>/params.yaml)")
    args = ap.parse_args(argv)
    try:
        write(load(args.params or repo_root() / "params.yaml"), args.out)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
