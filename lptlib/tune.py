"""The learning-rate grid, per compared arm: every row a claim compares gets its own grid of the same size, on val.

    python -m lptlib.tune list                          # the arms and their grids, without running anything
    python -m lptlib.tune run                           # every arm not yet tuned (2 workers), tuning seed 1000
    python -m lptlib.tune run --arms lpt_stage1 ladder/agcl
    python -m lptlib.tune adopt                         # write the winners into presets/tuned/<preset>.yaml
    dvc repro tuning/dvc.yaml                           # the same grid as a DVC stage (outside `dvc repro`)

Each arm of `GRID` is one result row (its row key) and the schedule its rate is centred on (e.g. `lpt.stage1` for
every stage-1 arm). Its grid is that schedule's learning rate times `FACTORS` (five values); where the winner sits
at an edge, the grid is extended one factor of 2 beyond it, up to `MAX_EXTENSIONS` times, so every arm gets the same
grid and the same rule. A value's score is the arm's **final-epoch val accuracy** (the pipeline reports the last
epoch); the test split is never evaluated (`fit(test=False)`). Ties go to the smaller rate. The tuning seed (1000)
is none of the seeds the pipeline reports: the grid sees another long-tailed train set and val draw than the
results do. Weight decay is not tuned: the papers fix it (VPT study 1e-4, LPT 0.01), the ladder measures LPT's as
one rung, and every stage-1 tensor being scale-invariant, a weight decay acts as a change of the effective learning
rate, which each arm's own grid already covers.

Some arms build on other arms' winners, as in the pipeline: cRT re-trains the head on the instance-balanced VPT-deep
representation trained at that arm's chosen rate; stage 2 (with the pool, and stage 1 continued without it) starts
from stage 1 trained at its chosen rate; each LPT++ expert's phase 2 from its phase 1 at its chosen rate, and the
MoE scorer (phase 3, trained on the experts' cached train outputs) from both experts' phase 2 at their chosen rates.

Results go to `tuning/<preset>.json` (one arm at a time, so a stopped run keeps what it finished; each arm's
sha256 names the grid it was run on, and the winners it started from are recorded, so a changed arm, or an arm
whose starting winner changed, is refused until re-run) and the table to docs/tuning.md; `adopt` writes each arm's winner into the
generated tuned layer `presets/tuned/<preset>.yaml` (`arm_lr`, with its provenance), which the pipeline composes
between the preset and params.yaml (lptlib.config). Nothing is written by hand.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from lptlib.config import Config, ConfigError, load, tuned_file
from lptlib.models.backbones import BACKBONE_ROLES
from lptlib.paths import repo_root
from lptlib.sections import (
    ARMS,
    CRT_CB,
    LP_CB,
    LP_IB,
    LP_LA_IB,
    LPT_STAGE1,
    MOE_ROW,
    PEFT_METHODS,
    SCALED_ARMS,
    STAGE1_CONTINUED_ROW,
    STAGE2_ROW,
    UNIFORM_ROW,
    VPT_CB,
    VPT_IB,
    expert_row,
    member_name,
    method_key,
    phase_row,
    scale_key,
)
from lptlib.utils import atomic_write_bytes, git_revision

TUNING_SEED = 1000
FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
MAX_EXTENSIONS = 2
#: the TEA members the claims compare (the default `tea.matrix`): each PEFT method plain and with full TEA
TEA_LOSS, TEA_VARIANTS = "la", ("none", "pea_pg_tec")


@dataclass(frozen=True)
class Arm:
    """One arm of the grid: the row it tunes, how it is trained (`kind`) and the schedule its grid is centred on
    (a dotted params.yaml key whose `lr` is the grid's middle value)."""

    row: str
    kind: str  # probe | vpt_deep | lpt_stage1 | lpt_stage2 | tea | lptpp_phase | lptpp_scorer
    schedule: str
    needs: tuple[str, ...] = ()  # the arms whose winners this one starts from


GRID: dict[str, Arm] = {
    a.row: a
    for a in (
        Arm(VPT_IB, "vpt_deep", "vpt_study.vpt_deep"),
        Arm(VPT_CB, "vpt_deep", "vpt_study.vpt_deep"),
        Arm(LP_IB, "probe", "vpt_study.linear_probe"),
        Arm(LP_CB, "probe", "vpt_study.linear_probe"),
        Arm(LP_LA_IB, "probe", "vpt_study.linear_probe"),
        Arm(CRT_CB, "probe", "vpt_study.linear_probe", needs=(VPT_IB,)),
        *(Arm(key, "lpt_stage1", "lpt.stage1") for key in ARMS),
        Arm(STAGE2_ROW, "lpt_stage2", "lpt.stage2", needs=(LPT_STAGE1,)),
        Arm(STAGE1_CONTINUED_ROW, "lpt_stage2", "lpt.stage2", needs=(LPT_STAGE1,)),
        *(
            Arm(method_key(member_name(peft, TEA_LOSS, v)), "tea", f"tea.{peft}")
            for peft in PEFT_METHODS
            for v in TEA_VARIANTS
        ),
        *(
            Arm(phase_row(role, p), "lptpp_phase", f"lptpp.phase{p}", needs=(phase_row(role, 1),) if p == 2 else ())
            for role in BACKBONE_ROLES
            for p in (1, 2)
        ),
        Arm(MOE_ROW, "lptpp_scorer", "lptpp.scorer", needs=tuple(phase_row(role, 2) for role in BACKBONE_ROLES)),
    )
}
KNOB_S = "cosine_scale"  # the second knob of the scaled stage-1 arms (`SCALED_ARMS`)
#: the result rows a claim compares that no arm of their own tunes, and the arms that train what they read: an LPT++
#: expert alone is its two phases; the uniform average of the experts trains nothing of its own
TRAINED_BY: dict[str, tuple[str, ...]] = {
    **{expert_row(role): tuple(phase_row(role, p) for p in (1, 2)) for role in BACKBONE_ROLES},
    UNIFORM_ROW: tuple(phase_row(role, p) for role in BACKBONE_ROLES for p in (1, 2)),
}


def rule_sha256() -> str:
    """The digest of the grid's rule (factors, extension rule, tuning seed), shared by every arm."""
    spec = {"factors": FACTORS, "max_ext": MAX_EXTENSIONS, "seed": TUNING_SEED}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def arm_sha256(arm: Arm, knob: str = "lr") -> str:
    """The digest of one arm's grid of `knob` (its definition and the rule): a stored result names it, so an arm
    added to the grid or changed re-runs alone."""
    spec = {"arm": asdict(arm), "knob": knob, "rule": rule_sha256()}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def grid_sha256() -> str:
    """The digest of the whole grid's definition (every arm and knob, the rule): names what a complete store ran."""
    spec = {
        "arms": [arm_sha256(a) for a in GRID.values()],
        "scales": [arm_sha256(GRID[r], KNOB_S) for r in SCALED_ARMS],
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def starts_from(store: dict, arm: Arm) -> dict[str, dict[str, float]]:
    """The stored winners `arm` starts from ({need: {'lr': ..., 'cosine_scale': ...}}): recorded with its result,
    so a result whose starting winner has changed since is refused."""
    out = {}
    for need in arm.needs:
        if need not in store.get("arms", {}):
            raise SystemExit(f"{arm.row} starts from {need}'s winner: tune that arm first (--arms {need})")
        out[need] = {"lr": store["arms"][need]["chosen"]}
        if need in store.get(KNOB_S, {}):
            out[need][KNOB_S] = store[KNOB_S][need]["chosen"]
    return out


def stale(store: dict) -> list[tuple[str, str, str]]:
    """The stored results that no longer hold, as (row, knob, why): another grid for their arm, an arm no longer in
    the grid, winners they started from that have changed since, a scale grid run at a rate no longer chosen."""
    out = []
    arms = store.get("arms", {})
    for knob, results in (("lr", arms), (KNOB_S, store.get(KNOB_S, {}))):
        for row, r in results.items():
            if row not in GRID:
                out.append((row, knob, "no longer an arm of the grid"))
            elif r.get("grid_sha256") != arm_sha256(GRID[row], knob):
                out.append((row, knob, "run on another grid of its arm (sha256 differs)"))
            elif knob == KNOB_S and r.get("lr") != arms.get(row, {}).get("chosen"):
                out.append((row, knob, f"run at lr {r.get('lr')}, no longer the arm's chosen rate"))
            elif knob == "lr" and GRID[row].needs:
                try:
                    now = starts_from(store, GRID[row])
                except SystemExit:
                    now = None
                if r.get("starts_from") != now:
                    out.append((row, knob, f"the winners it started from changed ({r.get('starts_from')} -> {now})"))
    return out


def centre(cfg: Config, arm: Arm) -> float:
    """The middle value of `arm`'s grid: the `lr` of its schedule in the composed config (preset and params)."""
    node = cfg
    for part in arm.schedule.split("."):
        node = getattr(node, part)
    return node.lr


def with_lr(cfg: Config, rates: dict[str, float]) -> Config:
    """`cfg` with exactly these rows' rates (`arm_lr`), validated."""
    return with_sections(cfg, arm_lr=rates)


def with_sections(cfg: Config, **sections) -> Config:
    """`cfg` with these top-level sections replaced, validated."""
    return Config.model_validate({**cfg.model_dump(), **sections})


# --------------------------------------------------------------------------------------------- training
def _train(arm: Arm, cfgs: Sequence[Config], base: Config, workers: int, state: dict) -> list[dict]:
    """Train `arm` once per config (one grid value each) on the tuning seed, val only: [{'val': final-epoch val
    accuracy, ...}]."""
    from lptlib.pool import run_tasks, setup

    if arm.kind == "probe":
        from lptlib.recipes.vpt_study import frozen_cache_task, probe_jobs, probe_row

        data = setup(base)
        if "frozen" not in state:
            state["frozen"] = frozen_cache_task(base, data, test=False)
        caches = {"frozen": state["frozen"], **({VPT_IB: state[VPT_IB]["cache"]} if arm.needs else {})}
        job = next((j for j in probe_jobs(caches, data, base) if j[0] == arm.row), None)
        if job is None:
            raise SystemExit(f"{arm.row} cannot be trained on this data (a class without training images?)")
        return [{"val": probe_row(caches, job, data, c, test=False)["val_overall"]} for c in cfgs]
    if arm.kind == "vpt_deep":
        from lptlib.recipes.vpt_study import vpt_deep_task

        sampling = arm.row.split("/", 1)[1]
        views = base.vpt_study.feature_views if arm.row == VPT_IB else 0  # cRT's input, kept for the winner
        tasks = [dict(cfg=c, sampling=sampling, checkpoint=None, cache_views=views, test=False) for c in cfgs]
        return [
            {"val": o["row"]["val_overall"], "cache": o.get("cache")} for o in run_tasks(vpt_deep_task, tasks, workers)
        ]
    if arm.kind == "lpt_stage1":
        from lptlib.recipes.lpt import stage1_task

        tasks = [dict(cfg=c, arm=arm.row, checkpoint=None, test=False) for c in cfgs]
        outs = run_tasks(stage1_task, tasks, workers)
        return [{"val": o["row"]["val_overall"], "stage1_state": o.get("stage1_state")} for o in outs]
    if arm.kind == "lpt_stage2":
        from lptlib.recipes.lpt import stage2_task

        path, pool = state[LPT_STAGE1]["path"], arm.row == STAGE2_ROW
        tasks = [dict(cfg=c, stage1_path=path, checkpoint=None, test=False, pool=pool) for c in cfgs]
        return [{"val": o["row"]["val_overall"]} for o in run_tasks(stage2_task, tasks, workers)]
    if arm.kind == "tea":
        from lptlib.recipes.tea import member_task

        peft, loss, variant = arm.row.split("/", 1)[1].split("-")
        tasks = [dict(cfg=c, peft=peft, loss=loss, variant=variant, test=False) for c in cfgs]
        return [{"val": o["row"]["val_overall"]} for o in run_tasks(member_task, tasks, workers)]
    if arm.kind == "lptpp_phase":
        from lptlib.recipes.lptpp import phase_task

        role, phase = arm.row.split("/phase")
        start = state[arm.needs[0]]["dir"] if arm.needs else None
        dirs = [tempfile.mkdtemp(prefix="lptlib-tune-") for _ in cfgs]  # one folder per value: parallel workers
        tasks = [
            dict(cfg=c, phase=int(phase), role=role, out_dir=d, phase1_dir=start, test=False)
            for c, d in zip(cfgs, dirs, strict=True)
        ]
        outs = run_tasks(phase_task, tasks, workers)
        return [{"val": o["row"]["val_overall"], "dir": d} for o, d in zip(outs, dirs, strict=True)]
    if arm.kind == "lptpp_scorer":
        from lptlib.recipes.lptpp import cache_all, evaluate_rows, train_scorer

        data = setup(base)
        roles = [need.split("/phase")[0] for need in arm.needs]
        folders = {role: state[need]["dir"] for role, need in zip(roles, arm.needs, strict=True)}
        cache_dir = tempfile.mkdtemp(prefix="lptlib-tune-")
        caches, _ = cache_all(roles, data, base, folders, cache_dir, splits=("train", "val"))
        out = []
        for c in cfgs:
            scorer, _ = train_scorer([caches[r] for r in roles], c, test=False)
            rows = evaluate_rows(caches, scorer, data, "val")[0]
            out.append({"val": rows["MoE scorer"]["overall"]})
        return out
    raise ValueError(f"unknown arm kind {arm.kind!r}")  # a bug in GRID


def chosen(scores: dict[float, float]) -> float:
    """The rate with the best val accuracy (ties: the smaller rate)."""
    return max(sorted(scores), key=lambda lr: scores[lr])


def tune_arm(
    arm: Arm, base: Config, workers: int, state: dict, log: Callable[[str], None] = print, knob: str = "lr"
) -> tuple[dict, dict]:
    """`arm`'s grid of `knob` ('lr', or 'cosine_scale' at the rate in `base.arm_lr`, centred on the arm's default
    scale: `lpt.cosine_scale` under cross-entropy, `lpt.agcl.scale` under A-GCL), extended beyond an edge winner:
    ({'centre', 'scores', 'chosen', 'edge', 'extensions', 'seconds'}, the winner's outputs)."""
    if knob == "lr":
        c = centre(base, arm)
        make = lambda v: with_lr(base, {arm.row: v})  # noqa: E731
    elif knob == "cosine_scale":
        c = functools.reduce(getattr, scale_key(arm.row).split("."), base)
        make = lambda v: with_sections(base, arm_cosine_scale={arm.row: v})  # noqa: E731
    else:
        raise ValueError(f"unknown knob {knob!r}")
    start = time.perf_counter()
    values = [c * f for f in FACTORS]
    outs = dict(zip(values, _train(arm, [make(v) for v in values], base, workers, state), strict=True))
    extensions = 0
    while extensions < MAX_EXTENSIONS:
        best = chosen({v: o["val"] for v, o in outs.items()})
        if best not in (min(outs), max(outs)):
            break
        v = best / 2 if best == min(outs) else best * 2
        outs[v] = _train(arm, [make(v)], base, workers, state)[0]
        extensions += 1
    scores = {v: o["val"] for v, o in sorted(outs.items())}
    best = chosen(scores)
    for v, val in scores.items():
        log(f"{arm.row} {knob}={v:g}: val {100 * val:.2f}" + (" (chosen)" if v == best else ""))
    result = {
        "schedule": arm.schedule if knob == "lr" else scale_key(arm.row),
        "centre": c,
        "scores": {repr(lr): v for lr, v in scores.items()},
        "chosen": best,
        "edge": best in (min(scores), max(scores)),
        "extensions": extensions,
        "seconds": round(time.perf_counter() - start, 1),
    }
    return result, outs[best]


def _keep(arm: Arm, winner: dict, base: Config, state: dict) -> None:
    """Keep what a later arm builds on: the VPT-deep (instance-balanced) winner's cache, stage 1's winner file, an
    LPT++ expert phase's winner folder."""
    if arm.kind == "lptpp_phase":
        state[arm.row] = {"dir": winner["dir"]}
    if arm.row == VPT_IB:
        state[VPT_IB] = {"cache": winner["cache"]}
    if arm.row == LPT_STAGE1:
        from lptlib.models.backbones import create_backbone
        from lptlib.recipes.lpt import build_lpt, save_stage1

        sd = winner["stage1_state"]
        backbone = create_backbone(getattr(base.backbones, base.lpt.backbone))
        model = build_lpt(backbone, sd["head.weight"].shape[0], base.lpt, stage=1)
        model.load_stage1_state(sd)
        path = Path(tempfile.mkdtemp(prefix="lptlib-tune-")) / "lpt_stage1.safetensors"
        state[LPT_STAGE1] = {"path": str(save_stage1(model, path))}


def _needed(arm: Arm, base: Config, store: dict, workers: int, state: dict, log: Callable[[str], None]) -> None:
    """Rebuild the winners `arm` starts from that were tuned in an earlier run (each at its stored rate and scale,
    trained once, after the winners it starts from in turn)."""
    for need, chosen in starts_from(store, arm).items():
        if need in state:
            continue
        _needed(GRID[need], base, store, workers, state, log)
        lr, scale = chosen["lr"], chosen.get(KNOB_S)
        tuned = with_sections(base, arm_lr={need: lr}, arm_cosine_scale={} if scale is None else {need: scale})
        log(f"{arm.row}: retraining {need} at its chosen lr={lr:g}" + ("" if scale is None else f", s={scale:g}"))
        _keep(GRID[need], _train(GRID[need], [tuned], base, workers, state)[0], base, state)


# ---------------------------------------------------------------------------------------------- outputs
def results_path(preset: str, root: Path | None = None) -> Path:
    """Where the grid's results for `preset` are kept: tuning/<preset>.json."""
    return (root or repo_root()) / "tuning" / f"{preset}.json"


def empty_store(preset: str) -> dict:
    """The store of a grid never run (docs/tuning.md lists every arm as not yet tuned)."""
    return {"preset": preset, "seed": TUNING_SEED, "rule_sha256": rule_sha256(), "arms": {}}


def markdown(store: dict) -> str:
    """docs/tuning.md from a stored grid (`tuning/<preset>.json`)."""
    arms = store.get("arms", {})
    lines = [
        "# Learning-rate grid (miniature)",
        "",
        f"Generated by `python -m lptlib.tune` from `tuning/{store['preset']}.json`; do not edit by hand.",
        "",
        f"Every compared arm gets its own grid of the same size: its schedule's learning rate times "
        f"{', '.join(f'{f:g}' for f in FACTORS)}, extended by a factor of 2 beyond an edge winner up to "
        f"{MAX_EXTENSIONS} times. Each value is trained once on the tuning seed ({store['seed']}: its own "
        "long-tailed train set and val split, none of the seeds the results report) for the arm's fixed schedule; "
        "the score is the **final-epoch val accuracy** (%); the test split is never evaluated. The chosen rate "
        f"(bold) is written into `presets/tuned/{store['preset']}.yaml` (`arm_lr`) by `python -m lptlib.tune "
        "adopt`. cRT starts from the instance-balanced VPT-deep model at its chosen rate, stage 2 and stage 1 "
        "continued from stage 1 at its chosen rate; each LPT++ expert's phase 2 from its phase 1, and the MoE "
        "scorer (trained on the experts' cached outputs) from both experts' phase 2, each at its chosen rate. The "
        "LPT++ rows a claim compares are the experts alone (their two phases), the uniform average of the experts "
        "(which trains nothing of its own) and the MoE scorer (its own rate on top of the experts'). One seed per value: neighbouring values a point or two apart "
        "are within the run-to-run spread, so the grid guards against a badly chosen rate rather than finding the "
        "best one. Weight decay is not tuned (the papers fix it; every stage-1 tensor is scale-invariant, so it "
        "acts as a learning-rate change the grid covers).",
        "",
        f"Grid rule sha256 `{store['rule_sha256'][:16]}` (each arm's own grid is named by its sha256 in "
        f"`tuning/{store['preset']}.json`)"
        + ("; run by " if arms else "; not run yet.")
        + "; ".join(
            f"`{cmd}` at commit `{commit or 'unknown'}`"
            for cmd, commit in dict.fromkeys((a["command"], a["commit"]) for a in arms.values())
        )
        + ("." if arms else ""),
        *(
            ["", "Pretrained weights the grid ran on (sha256, first 16 hex digits): " + "; ".join(weights) + "."]
            if (weights := _weight_sets(arms, "`{}`"))
            else []
        ),
        "",
        *_table(arms, list(GRID), "learning rate"),
    ]
    scales = store.get("cosine_scale", {})
    lines += [
        "",
        "**Cosine scale.** The scale s on the normalised scores (LPT's 20 for 365 classes) enters the loss of every "
        "stage-1 arm but the linear head under cross-entropy: CE(s c, y) on a cosine head (centred on "
        "`lpt.cosine_scale`), A-GCL's s on either head (centred on `lpt.agcl.scale`); the prediction's argmax does not "
        "depend on it. Each of those arms gets a second grid of the same rule over s, at its chosen learning rate (so "
        "the stage-1 arms are tuned on two knobs, the others on one); the winner is its `arm_cosine_scale`. Stage 2 "
        "and stage 1 trained on continue with stage 1's s; their rates are tuned from stage 1's winner at its chosen "
        "rate and s.",
        "",
        *(_table(scales, list(SCALED_ARMS), "cosine scale") if scales else ["Not run yet."]),
    ]
    missing = [r for r in GRID if r not in arms]
    if missing:
        lines += [
            "",
            "Not yet tuned (each trains with its schedule's rate from params.yaml or the code defaults, "
            "docs/parameters.md): " + ", ".join(f"`{r}`" for r in missing) + ".",
        ]
    if arms:
        total = sum(a["seconds"] for a in [*arms.values(), *scales.values()]) / 60
        n = statistics.fmean(len(a["scores"]) for a in arms.values())
        lines += [
            "",
            f"{len(arms)} arms, {n:.1f} learning rates each on average; {len(scales)} cosine-scale grids; "
            f"{total:.0f} min in all (2 cores).",
        ]
    return "\n".join(lines) + "\n"


def _weight_sets(arms: dict, name: str = "{}") -> list[str]:
    """The distinct pretrained-weight digests the arms ran on, each as 'vit-mini <sha>, clip-mini <sha>'."""
    sets = dict.fromkeys(tuple(a.get("weights", {}).items()) for a in arms.values())
    return [", ".join(f"{name.format(k)} {v}" for k, v in w) for w in sets if w]


def _table(results: dict, order: list[str], knob: str) -> list[str]:
    """Markdown rows of one grid: per arm its values and val accuracies, the chosen one, whether at an edge."""
    lines = [
        f"| arm (row) | schedule | values | val accuracy (%) by {knob} | chosen | at an edge | min |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in [r for r in order if r in results]:
        a = results[row]
        scores = {float(k): v for k, v in a["scores"].items()}
        cells = ", ".join(
            f"**{x:g}: {100 * v:.2f}**" if x == a["chosen"] else f"{x:g}: {100 * v:.2f}" for x, v in scores.items()
        )
        edge = f"yes (after {a['extensions']} extensions)" if a["edge"] else "no"
        at = f" (at lr {a['lr']:g})" if "lr" in a else ""
        lines.append(
            f"| `{row}` | `{a['schedule']}`{at} | {len(scores)} | {cells} | {a['chosen']:g} | {edge} | "
            f"{a['seconds'] / 60:.1f} |"
        )
    return lines


def tuned_yaml(store: dict) -> str:
    """The tuned layer: each tuned arm's chosen rate, with where it comes from."""
    arms = store.get("arms", {})
    lines = [
        f"# Generated by `python -m lptlib.tune adopt` from tuning/{store['preset']}.json; do not edit by hand.",
        f"# Grid rule sha256 {store['rule_sha256']} (each arm's grid: its sha256 in tuning/{store['preset']}.json), "
        f"tuning seed {store['seed']}; run by",
        *(
            f"#   `{cmd}` at commit {commit or 'unknown'}"
            for cmd, commit in dict.fromkeys((a["command"], a["commit"]) for a in arms.values())
        ),
        "# Pretrained weights (sha256): " + ("; ".join(_weight_sets(arms)) or "none recorded") + ".",
        "# Each rate: the best final-epoch val accuracy of its arm's grid (docs/tuning.md).",
        "# Edge winners (the grid was extended and the best is still its edge): "
        + (", ".join(r for r in GRID if r in arms and arms[r]["edge"]) or "none")
        + ".",
        "arm_lr:",
    ]
    lines += [f"  {row}: {arms[row]['chosen']!r}" for row in GRID if row in arms]
    scales = store.get("cosine_scale", {})
    if scales:
        lines.append("arm_cosine_scale:")
        lines += [f"  {row}: {scales[row]['chosen']!r}" for row in SCALED_ARMS if row in scales]
    return "\n".join(lines) + "\n"


def weight_digests(cfg: Config, root: Path) -> dict[str, str]:
    """sha256 (first 16 hex digits) of each weight file the grid's backbones load: the pretrained models differ
    between machines (CPU pretraining is not bitwise reproducible), so the rates name the weights they were
    chosen on."""
    out = {}
    for role in ("visual", "vision_language"):
        b = getattr(cfg.backbones, role)
        path = Path(b.weights) if Path(b.weights).is_absolute() else root / b.weights
        if path.is_file():
            out[b.name] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return out


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode())


# ------------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m lptlib.tune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("command", choices=("list", "run", "adopt", "table"))
    ap.add_argument(
        "--arms",
        nargs="*",
        default=None,
        help="rows to tune, again if already tuned (default: every arm of the grid not yet in the results)",
    )
    ap.add_argument("--fresh", action="store_true", help="run: forget the stored results first")
    ap.add_argument(
        "--knob",
        choices=("both", "lr", "cosine_scale"),
        default="both",
        help="run: the learning-rate grid, the cosine-scale grid (cosine-head cross-entropy arms, at their chosen "
        "rate) or both, in that order (default)",
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--params", type=Path, default=None, help="params file (default: the repository's params.yaml)")
    ap.add_argument("--set", dest="sets", nargs="*", default=[], help="key=value over the params (smoke tests)")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where tuning/, docs/tuning.md, presets/tuned/ go (default: the repository)",
    )
    args = ap.parse_args(argv)
    arms = args.arms if args.arms is not None else list(GRID)
    unknown = [a for a in arms if a not in GRID]
    if unknown:
        ap.error(f"unknown arm(s) {', '.join(unknown)}; the grid's arms: {', '.join(GRID)}")
    root = repo_root()
    params = args.params or root / "params.yaml"
    try:
        base = load(params, [f"seed={TUNING_SEED}", *args.sets])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or root
    path, table = results_path(base.preset, out), out / "docs" / "tuning.md"
    if args.command == "list":
        for a in GRID.values():
            rates = ", ".join(f"{centre(base, a) * f:g}" for f in FACTORS)
            print(
                f"{a.row}: {a.schedule} lr in {rates}"
                + (f"; starts from the winner of {', '.join(a.needs)}" if a.needs else "")
            )
        return 0
    store = json.loads(path.read_text()) if path.is_file() and not args.fresh else {}
    if store and store.get("rule_sha256") != rule_sha256():
        raise SystemExit(
            f"{path} was run on another grid rule (factors, extension or seed; sha256 differs); re-run it: "
            "python -m lptlib.tune run --fresh"
        )
    problems = [p for p in stale(store) if args.command != "run" or p[0] not in arms]
    if problems:  # `run` re-runs the stale results of the arms it runs; anything else must not be adopted
        rows = " ".join(dict.fromkeys(p[0] for p in problems))
        raise SystemExit(
            f"{path} holds results that no longer hold:\n"
            + "".join(f"  {row} ({knob}): {why}\n" for row, knob, why in problems)
            + f"re-run them: python -m lptlib.tune run --arms {rows}"
        )
    if args.command in ("adopt", "table"):
        if not store and args.command == "adopt":
            raise SystemExit(f"{path} does not exist: run the grid first (python -m lptlib.tune run)")
        store = store or empty_store(base.preset)
        if args.command == "adopt":
            _write(tuned_file(base.preset, out), tuned_yaml(store))
            print(f"wrote {tuned_file(base.preset, out)} ({len(store['arms'])} arms)")
        _write(table, markdown(store))
        return 0
    command = "python -m lptlib.tune run" + (f" --arms {' '.join(arms)}" if args.arms is not None else "")
    command += f" --knob {args.knob}" if args.knob != "both" else ""
    store = {
        "preset": base.preset,
        "seed": TUNING_SEED,
        "rule_sha256": rule_sha256(),
        "commit": git_revision(root),
        "command": command,
        "arms": store.get("arms", {}),
        "cosine_scale": store.get("cosine_scale", {}),
    }
    base = with_sections(base, arm_lr={}, arm_cosine_scale={})  # centred on the schedules, not an earlier tuned layer
    state: dict = {}
    weights = weight_digests(base, root)
    stamp = {"commit": store["commit"], "command": command, "weights": weights}

    def kept(row: str, knob: str) -> bool:
        """Resume: a finished arm is not run again (unless named in --arms), nor while its result still holds;
        checked before each arm, since re-tuning an arm makes the results that started from its winner stale."""
        held = store["arms" if knob == "lr" else KNOB_S]
        return args.arms is None and row in held and not any(p[:2] == (row, knob) for p in stale(store))

    done = [r for r in GRID if kept(r, "lr")]
    if done:
        print(f"already tuned (kept; --fresh re-runs them): {', '.join(done)}")
    for row in [r for r in GRID if r in arms] if args.knob != KNOB_S else []:
        if kept(row, "lr"):
            continue
        arm = GRID[row]
        _needed(arm, base, store, args.workers, state, print)
        origin = {"starts_from": starts_from(store, arm)} if arm.needs else {}
        result, winner = tune_arm(arm, base, args.workers, state)
        _keep(arm, winner, base, state)
        store["arms"][row] = {**result, "grid_sha256": arm_sha256(arm), **origin, **stamp}
        _write(path, json.dumps(store, indent=2) + "\n")  # a finished arm is never lost
        _write(table, markdown(store))
    for row in [r for r in SCALED_ARMS if r in arms] if args.knob != "lr" else []:
        if kept(row, KNOB_S):
            continue
        if row not in store["arms"]:
            raise SystemExit(f"the cosine scale of {row} is tuned at its chosen rate: tune its rate first (--knob lr)")
        at_rate = with_lr(base, {row: store["arms"][row]["chosen"]})
        result, _ = tune_arm(GRID[row], at_rate, args.workers, state, knob=KNOB_S)
        store[KNOB_S][row] = {
            **result,
            "lr": store["arms"][row]["chosen"],
            "grid_sha256": arm_sha256(GRID[row], KNOB_S),
            **stamp,
        }
        _write(path, json.dumps(store, indent=2) + "\n")
        _write(table, markdown(store))
    print(f"wrote {path} and docs/tuning.md; adopt the winners: python -m lptlib.tune adopt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
