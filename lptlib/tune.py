"""The learning-rate grid: the same number of values for every compared method, judged on val only.

    python -m lptlib.tune                       # every method, tuning seed 1000, 2 worker processes
    python -m lptlib.tune --methods vpt_deep lpt.stage1 --workers 2
    python -m lptlib.tune --list                # the grid, without running it

Each entry of `GRID` is one schedule of params.yaml (e.g. `vpt_study.vpt_deep`) and the Table-1 / ladder rows it
serves; a value's score is the mean final-epoch val accuracy over those rows (the schedules are fixed, as in the
pipeline). The test split is never evaluated (`fit(test=False)`). The tuning seed (1000) is none of the seeds the
pipeline reports, so the long-tailed train set and val split the grid sees are not the ones the results come
from. Results are kept per schedule in docs/tuning.json (re-running some schedules keeps the others) and the
table is written to docs/tuning.md; the chosen values are the code defaults of the miniature (their
comments point to docs/tuning.md). Weight decay is not tuned: the papers fix it (VPT study 1e-4, LPT 0.01, LIFT
5e-4), and the LPT ladder measures its effect as one rung.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lptlib.config import Config, load, parse
from lptlib.paths import repo_root
from lptlib.recipes.lpt import STAGE1_ROW, STAGE2_ROW
from lptlib.recipes.tea import member_name, method_key
from lptlib.recipes.vpt_study import LP_CB, LP_IB, LP_LA_IB, VPT_CB, VPT_IB, row_name
from lptlib.schema import to_dict

TUNING_SEED = 1000
GRID_SIZE = 5
TEA_LOSS, TEA_VARIANTS_TUNED = "la", ("none", "pea_pg_tec")  # the TEA members a PEFT method's schedule is tuned on


@dataclass(frozen=True)
class Entry:
    """One schedule to tune: its dotted key, the learning rates tried and the rows whose mean val decides."""

    key: str
    lrs: tuple[float, ...]
    rows: tuple[str, ...]
    note: str = ""


GRID: dict[str, Entry] = {
    e.key: e
    for e in (
        Entry(
            "vpt_study.linear_probe",
            (0.25, 0.5, 1.0, 2.0, 4.0),
            (LP_IB, LP_CB, LP_LA_IB),
            "cached frozen features; also cRT's schedule",
        ),
        Entry(
            "vpt_study.vpt_deep",
            (0.125, 0.25, 0.5, 1.0, 2.0),
            (VPT_IB, VPT_CB),
        ),
        Entry(
            "lpt.stage1",
            (0.0625, 0.125, 0.25, 0.5, 1.0),
            (STAGE1_ROW,),
            "also the schedule of the ladder rungs below stage 1",
        ),
        Entry("lpt.stage2", (0.0125, 0.025, 0.05, 0.1, 0.2), (STAGE2_ROW,), "on the best stage-1 state of the grid"),
        *(
            Entry(
                f"tea.{peft}",
                lrs,
                tuple(method_key(member_name(peft, TEA_LOSS, v)) for v in TEA_VARIANTS_TUNED),
                "the schedule of every TEA variant of this PEFT method",
            )
            for peft, lrs in (
                ("vpt_deep", (0.025, 0.05, 0.1, 0.2, 0.4)),
                ("adaptformer", (0.0025, 0.005, 0.01, 0.02, 0.04)),
                ("lora", (0.0125, 0.025, 0.05, 0.1, 0.2)),
            )
        ),
    )
}
assert all(len(e.lrs) == GRID_SIZE for e in GRID.values()), "every method gets the same grid size"


def _with_lr(config: dict, key: str, lr: float) -> dict:
    out = copy.deepcopy(config)
    node = out
    for part in key.split("."):
        node = node[part]
    node["lr"] = lr
    return out


def _vpt_rows(config: dict, key: str, workers: int, state: dict) -> dict[str, float]:
    from lptlib.pool import run_tasks, setup
    from lptlib.recipes.vpt_study import frozen_cache_task, probe_rows, vpt_deep_task

    cfg = load_config(config)
    if key == "vpt_study.linear_probe":
        data = setup(cfg)
        if "frozen" not in state:
            state["frozen"] = frozen_cache_task(cfg, data, test=False)
        rows = probe_rows({"frozen": state["frozen"]}, data, cfg, test=False)
        return {k: v["val_overall"] for k, v in rows.items()}
    tasks = [dict(cfg=cfg, sampling=s, checkpoint=None, test=False) for s in cfg.vpt_study.samplings]
    outs = run_tasks(vpt_deep_task, tasks, workers)
    return {row_name("vpt_deep", t["sampling"]): o["row"]["val_overall"] for t, o in zip(tasks, outs, strict=True)}


def load_config(config: dict) -> Config:
    return parse(**config)


def run_entry(entry: Entry, base: dict, workers: int, state: dict, log: Callable[[str], None] = print) -> dict:
    """Train every value of `entry`'s grid on the tuning seed; {lr: {row: val, 'mean': mean val}}."""
    from lptlib.pool import run_tasks
    from lptlib.recipes.lpt import stage1_task, stage2_task

    results: dict[float, dict] = {}
    if entry.key == "lpt.stage1":
        tasks = [
            dict(cfg=load_config(_with_lr(base, entry.key, lr)), arm=STAGE1_ROW, checkpoint=None, test=False)
            for lr in entry.lrs
        ]
        outs = run_tasks(stage1_task, tasks, workers)
        for lr, out in zip(entry.lrs, outs, strict=True):
            results[lr] = {STAGE1_ROW: out["row"]["val_overall"]}
        best = max(entry.lrs, key=lambda lr: results[lr][STAGE1_ROW])
        state["stage1_state"] = outs[entry.lrs.index(best)]["stage1_state"]
        state["stage1_lr"] = best
    elif entry.key == "lpt.stage2":
        if "stage1_state" not in state:
            run_entry(GRID["lpt.stage1"], base, workers, state, log)  # fills state["stage1_state"]
        from lptlib.utils import save_safetensors

        tmp = Path(tempfile.mkdtemp(prefix="lptlib-tune-")) / "stage1.safetensors"
        save_safetensors(state["stage1_state"], tmp, _stage1_meta(load_config(base), state["stage1_state"]))
        stage1_base = _with_lr(base, "lpt.stage1", state["stage1_lr"])
        tasks = [
            dict(
                cfg=load_config(_with_lr(stage1_base, entry.key, lr)), stage1_path=str(tmp), checkpoint=None, test=False
            )
            for lr in entry.lrs
        ]
        for lr, out in zip(entry.lrs, run_tasks(stage2_task, tasks, workers), strict=True):
            results[lr] = {STAGE2_ROW: out["row"]["val_overall"]}
    elif entry.key.startswith("tea."):
        from lptlib.recipes.tea import member_task

        peft = entry.key.split(".", 1)[1]
        jobs = [(lr, v) for lr in entry.lrs for v in TEA_VARIANTS_TUNED]
        tasks = [
            dict(cfg=load_config(_with_lr(base, entry.key, lr)), peft=peft, loss=TEA_LOSS, variant=v, test=False)
            for lr, v in jobs
        ]
        for (lr, v), out in zip(jobs, run_tasks(member_task, tasks, workers), strict=True):
            results.setdefault(lr, {})[method_key(member_name(peft, TEA_LOSS, v))] = out["row"]["val_overall"]
    else:
        for lr in entry.lrs:
            results[lr] = _vpt_rows(_with_lr(base, entry.key, lr), entry.key, workers, state)
    for lr, r in results.items():
        r["mean"] = statistics.fmean(r[k] for k in entry.rows if k in r)
        log(f"{entry.key} lr={lr:g}: mean val {100 * r['mean']:.2f}")
    return results


def _stage1_meta(cfg: Config, state: dict) -> dict[str, str]:
    """The metadata `recipes.lpt.save_stage1` writes, from the config and the stage-1 state."""
    return {
        "backbone": getattr(cfg.backbones, cfg.lpt.backbone).name,
        "prompt_length": str(cfg.lpt.prompt_length),
        "num_classes": str(state["head.weight"].shape[0]),
    }


def chosen(results: dict) -> float:
    """The learning rate with the best mean val accuracy (ties: the smaller rate)."""
    return max(sorted(results), key=lambda lr: results[lr]["mean"])


def markdown(store: dict) -> str:
    """docs/tuning.md from the stored grid results ({schedule key: {'seed', 'seconds', 'command', 'results'}})."""
    seeds = sorted({v["seed"] for v in store.values()})
    lines = [
        "# Learning-rate grid (miniature)",
        "",
        "Generated by `python -m lptlib.tune` (`lptlib/tune.py`) from `docs/tuning.json`; do not edit by hand.",
        "",
        f"Every method gets the same budget: {GRID_SIZE} learning rates, each trained once for the method's fixed "
        f"schedule on the tuning seed ({', '.join(map(str, seeds))}: its own long-tailed train set and val split, "
        "none of the seeds the results report). The score is the final-epoch **val** accuracy (%), averaged over "
        "the rows a schedule serves; the test split is never evaluated. The chosen value (bold) is the miniature's "
        "code default of that schedule (docs/parameters.md). Weight decay is not tuned: the papers fix it, and the "
        "LPT ladder measures LPT's weight decay as one rung. One seed per value: differences of a point or two "
        "between neighbouring values are within the run-to-run spread, so the grid guards against a badly chosen "
        "rate rather than finding the best one. LPT++ reuses LPT's optimiser and is compared only with its own "
        "experts and their average, which share its schedules, so it is not in the grid. A value chosen at the "
        "edge of its grid (marked) may not be the optimum.",
        "",
        "| schedule | rows scored (mean val) | " + " | ".join(f"lr {i + 1}" for i in range(GRID_SIZE)) + " | chosen |",
        "|---|---|" + "---|" * GRID_SIZE + "---|",
    ]
    for key in [k for k in GRID if k in store]:
        res = {float(lr): r for lr, r in store[key]["results"].items()}
        best = chosen(res)
        cells = [
            (f"**{lr:g}: {100 * r['mean']:.2f}**" if lr == best else f"{lr:g}: {100 * r['mean']:.2f}")
            for lr, r in sorted(res.items())
        ]
        rows = ", ".join(f"`{r}`" for r in GRID[key].rows)
        note = f" ({GRID[key].note})" if GRID[key].note else ""
        edge = " (grid edge)" if best in (min(res), max(res)) else ""
        lines.append(f"| `{key}` | {rows}{note} | " + " | ".join(cells) + f" | {best:g}{edge} |")
    lines += ["", "| schedule | command | wall time (min, 2 cores) |", "|---|---|---|"]
    for key in [k for k in GRID if k in store]:
        entry = store[key]
        wall = f"{entry['seconds'] / 60:.1f}" if entry.get("seconds") is not None else entry.get("wall_note", "–")
        lines.append(f"| `{key}` | `{entry['command']}` | {wall} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m lptlib.tune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--methods", nargs="*", default=list(GRID), help=f"schedules to tune (default: all of {', '.join(GRID)})"
    )
    ap.add_argument("--seed", type=int, default=TUNING_SEED)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--params", type=Path, default=None, help="params file (default: the repository's params.yaml)")
    ap.add_argument("--out", type=Path, default=None, help="default: docs/tuning.md")
    ap.add_argument("--list", action="store_true", help="print the grid and exit")
    args = ap.parse_args(argv)
    unknown = [m for m in args.methods if m not in GRID]
    if unknown:
        ap.error(f"unknown schedule(s) {', '.join(unknown)}; choose from {', '.join(GRID)}")
    if args.list:
        for e in GRID.values():
            print(f"{e.key}: lr in {', '.join(f'{v:g}' for v in e.lrs)}; scored on {', '.join(e.rows)}")
        return 0
    root = repo_root()
    cfg = load(args.params or root / "params.yaml", [f"seed={args.seed}"])
    base = to_dict(cfg)
    out = args.out or root / "docs" / "tuning.md"
    store_path = out.with_suffix(".json")
    store = json.loads(store_path.read_text()) if store_path.is_file() else {}
    command = "python -m lptlib.tune" + (f" --methods {' '.join(args.methods)}" if args.methods != list(GRID) else "")
    state: dict = {}
    for key in args.methods:
        start = time.perf_counter()
        results = run_entry(GRID[key], base, args.workers, state)
        store[key] = {
            "seed": args.seed,
            "seconds": round(time.perf_counter() - start, 1),
            "command": command,
            "results": {str(lr): r for lr, r in results.items()},
        }
        store_path.write_text(json.dumps(store, indent=2) + "\n")  # a finished schedule is never lost
        out.write_text(markdown(store))
    print(f"wrote {out} and {store_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
