"""Check every stage's settings before the first stage of a run trains: `python -m lptlib.preflight OUT`, the
pipeline's first stage (`preflight` in dvc.yaml, always run).

Configuration errors are caught by `lptlib.config` when a stage starts; what only shows once a model meets the
data (an image size the backbone does not take, a bottleneck or pool that does not fit, a template the text head
cannot fill, a stage-2 setting that breaks after stage 1 has trained for an hour) used to fail late. The preflight
builds the data (so the split files are checked) and every model the pipeline will train, on backbones of the
configured architectures with random weights (nothing is downloaded or read from a weight file, which may not
exist yet): Table 1's VPT model, every stage-1 arm and stage 2 of LPT, every TEA member with its objective, and
both LPT++ experts in phases 1 and 2. It takes seconds on the miniature; a configuration that passed is remembered
(`outputs/preflight/passed.json`, keyed by the code digest and the resolved configuration), so later runs skip the
builds. Then it writes the data signature (`lptlib.data.signature`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch

from lptlib.config import Config, ConfigError, load, to_dict
from lptlib.data import build_data, build_transforms
from lptlib.data.datasets import DataError
from lptlib.data.signature import write as write_signature
from lptlib.models.backbones import WeightsError, create_backbone
from lptlib.paths import repo_root
from lptlib.utils import atomic_write_bytes, code_digest


class PreflightError(ValueError):
    """A stage's settings do not fit its data or model; the message names the stage and the problem."""


def _random_backbone(cfg: Config, role: str):
    spec = getattr(cfg.backbones, role)
    return create_backbone(spec.model_copy(update={"weights": "random"}))


def preflight(cfg: Config) -> list[str]:
    """Build the data and every model the pipeline trains under `cfg` (random-weight backbones); the checks done.

    Raises PreflightError naming the stage whose settings fail, with the underlying message."""
    from lptlib.recipes.lpt import build_arm, build_lpt
    from lptlib.recipes.lptpp import build_expert
    from lptlib.recipes.tea import build_model, build_objective, build_tea, check_member, matrix_members
    from lptlib.recipes.vpt_study import build_vpt_model
    from lptlib.sections import LPT_STAGE1

    done: list[str] = []

    def check(what: str, fn) -> None:
        try:
            with torch.no_grad():
                fn()
        except (ConfigError, DataError, WeightsError, ValueError, RuntimeError, KeyError, IndexError) as e:
            raise PreflightError(f"{what}: {e}") from None
        done.append(what)

    data = build_data(cfg.data, cfg.seed)
    counts = data.train_counts
    backbones = {}
    for role in ("visual", "vision_language"):
        check(f"backbones.{role}", lambda r=role: backbones.__setitem__(r, _random_backbone(cfg, r)))
        check(
            f"data.image_size for backbones.{role}",
            lambda r=role: build_transforms(cfg.data, backbones[r].normalization),
        )
    check(
        "vpt_study",
        lambda: build_vpt_model(_random_backbone(cfg, cfg.vpt_study.backbone), data.num_classes, cfg.vpt_study),
    )
    for arm in [*cfg.lpt.arms, LPT_STAGE1]:
        check(
            f"lpt stage 1 ({arm})",
            lambda a=arm: build_arm(_random_backbone(cfg, cfg.lpt.backbone), data.num_classes, cfg, a),
        )
    check("lpt stage 2", lambda: build_lpt(_random_backbone(cfg, cfg.lpt.backbone), data.num_classes, cfg.lpt, stage=2))
    for peft, loss, variant in matrix_members(cfg.tea.matrix):

        def member(p=peft, lo=loss, v=variant):
            check_member(p, lo, v)
            build_model(_random_backbone(cfg, cfg.tea.backbone), data, cfg, p)
            build_objective(lo, counts, cfg)
            build_tea(counts, cfg, v)

        check(f"tea member {peft}-{loss}-{variant}", member)
    for role in cfg.lptpp.experts:
        for phase in (1, 2):
            check(
                f"lptpp {role} expert, phase {phase}",
                lambda r=role, ph=phase: build_expert(r, data, cfg, ph, backbone=_random_backbone(cfg, r)),
            )
    return done


def _key(cfg: Config) -> str:
    doc = json.dumps({"code": code_digest(), "config": to_dict(cfg)}, sort_keys=True, default=str)
    return hashlib.sha256(doc.encode()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lptlib.preflight", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="where to write the data signature (JSON)")
    ap.add_argument("--params", type=Path, default=None, help="params file (default: <repo>/params.yaml)")
    args = ap.parse_args(argv)
    passed = repo_root() / "outputs" / "preflight" / "passed.json"
    try:
        cfg = load(args.params or repo_root() / "params.yaml")
        key = _key(cfg)
        known = json.loads(passed.read_text()) if passed.is_file() else {}
        if known.get("key") != key:
            checks = preflight(cfg)
            atomic_write_bytes(passed, json.dumps({"key": key, "checks": checks}, indent=1).encode())
            print(f"preflight: {len(checks)} checks passed (data, backbones, every model the stages train)")
        else:
            print("preflight: this code and configuration passed before")
        write_signature(cfg, args.out)
    except (ConfigError, DataError, PreflightError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
