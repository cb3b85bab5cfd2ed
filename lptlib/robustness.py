"""Robustness to the pretrained backbone: the whole pipeline again on other pretrainings, the verdicts compared.

    python -m lptlib.robustness run --pretrain-seed 1     # one cold `dvc repro` of a copy (as long as the pipeline)
    dvc repro robustness/dvc.yaml                         # every pretraining seed the stage lists

The claims' intervals are over seeds of the fine-tuning (split, initialisation, sampling) on one pretrained
`vit-mini` / `clip-mini`; CPU pretraining even differs between machines for the same seed. This module repeats the
pipeline on other pretrainings: it copies the repository's tracked files to `outputs/robustness/pretrain_seed_<s>/`,
sets `pretrain.seed: <s>` in the copy's params.yaml (everything else as committed), runs `dvc repro` there and
keeps the copy's `metrics/claims.json` and `metrics/pretrain.json` in `metrics/robustness/pretrain_seed_<s>/`, with
`config.json`, the configuration they were made under. The report reads every `metrics/robustness/*/claims.json`
whose configuration is this repository's (the pretraining seed, run seeds, parallelism and resuming apart; another
one is left out with a warning naming the keys that differ, e.g. after a tuned rate was adopted) and marks each
claim whose verdict differs on another pretraining *fragile* (`lptlib.report.claims.across_pretraining`); one that
agrees on all of them *holds*.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from lptlib.config import Config, load
from lptlib.paths import repo_root
from lptlib.schema import to_dict, without_resume

KEPT = ("claims.json", "pretrain.json")
#: what may differ between this repository and a robustness copy without changing what a claim compares, besides
#: `without_resume`'s keys: the pretraining seed (the point of the copy), the run seed (each stage sets its own) and
#: the loader workers
EXECUTION_KEYS = ("pretrain.seed", "seed", "data.num_workers")


def comparable_config(cfg: Config) -> dict:
    """The resolved configuration a robustness run's verdicts are comparable under: `without_resume(cfg)` (which
    drops `workers` and the seed lists) with the seed lists back, since a verdict depends on its number of seeds,
    and without `EXECUTION_KEYS`."""
    out = {**without_resume(cfg), "seeds": to_dict(cfg.seeds)}
    for key in EXECUTION_KEYS:
        *parents, leaf = key.split(".")
        node = out
        for k in parents:
            node = node[k]
        node.pop(leaf, None)
    return out


def label(seed: int) -> str:
    """The folder name of one pretraining: 'pretrain_seed_<s>'."""
    return f"pretrain_seed_{seed}"


def _sh(*args: str, cwd: Path, env: dict | None = None) -> None:
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(
            f"`{' '.join(args)}` failed in {cwd} ({out.returncode}):\n{out.stdout[-3000:]}{out.stderr[-3000:]}"
        )


def prepare(seed: int, root: Path, dest: Path) -> Path:
    """A fresh copy of `root`'s tracked files (as committed or edited, untracked and ignored ones left out) at
    `dest`, its params.yaml with `pretrain.seed: seed`, as its own git repository; returns `dest`."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
    if dest.exists():
        shutil.rmtree(dest)
    for name in filter(None, files.decode().split("\0")):
        src = root / name
        if src.is_file():  # a tracked file deleted in the work tree is left out
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    params_path = dest / "params.yaml"
    params = yaml.safe_load(params_path.read_text()) or {}
    params["pretrain"] = {**(params.get("pretrain") or {}), "seed": seed}
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    others = dest / "metrics" / "robustness"  # a copy never reports other pretrainings of its own; the folder
    for stale in (p for p in others.glob("*") if p.is_dir()):  # stays (the report stage depends on it)
        shutil.rmtree(stale)
    git = ("git", "-c", "user.name=lptlib", "-c", "user.email=lptlib@localhost")
    _sh("git", "init", "-q", cwd=dest)
    _sh(*git, "add", "-A", cwd=dest)
    _sh(*git, "commit", "-qm", f"robustness copy: pretrain.seed {seed}", cwd=dest)
    return dest


def run(seed: int, root: Path | None = None) -> Path:
    """`prepare` the copy of pretraining `seed`, `dvc repro` it and keep its claims; returns the kept folder."""
    root = root or repo_root()
    work = prepare(seed, root, root / "outputs" / "robustness" / label(seed))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    _sh("dvc", "repro", cwd=work, env=env)
    return keep(work, root / "metrics" / "robustness" / label(seed))


def keep(work: Path, kept: Path) -> Path:
    """Keep a finished copy's claims and pretraining metrics in `kept`, with the configuration they were made
    under (`config.json`: `comparable_config` of the copy's params.yaml and presets), which the report compares
    with this repository's before it reads the verdicts."""
    kept.mkdir(parents=True, exist_ok=True)
    for name in KEPT:
        shutil.copy2(work / "metrics" / name, kept / name)
    config = comparable_config(load(work / "params.yaml"))
    (kept / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")
    return kept


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m lptlib.robustness", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "command",
        choices=("run", "prepare", "keep"),
        help="run: prepare, dvc repro and keep; prepare: the copy only; keep: keep a copy's results after its "
        "`dvc repro` was finished by hand (e.g. after a failed stage was fixed and re-run in the copy)",
    )
    ap.add_argument("--pretrain-seed", type=int, required=True)
    args = ap.parse_args(argv)
    if args.pretrain_seed < 0:
        ap.error("--pretrain-seed must be >= 0")
    root = repo_root()
    if args.command == "prepare":
        print(prepare(args.pretrain_seed, root, root / "outputs" / "robustness" / label(args.pretrain_seed)))
        return 0
    if args.command == "keep":
        work = root / "outputs" / "robustness" / label(args.pretrain_seed)
        missing = [n for n in KEPT if not (work / "metrics" / n).is_file()]
        if missing:
            raise SystemExit(f"{work} has no metrics/{', metrics/'.join(missing)}: finish its `dvc repro` first")
        print(f"kept {keep(work, root / 'metrics' / 'robustness' / label(args.pretrain_seed))}")
        return 0
    print(f"kept {run(args.pretrain_seed, root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
