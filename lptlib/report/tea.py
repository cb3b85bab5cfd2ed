"""The TEA report over seeds (notebooks/04_tea_report.ipynb; docs/methods.md#tea): the members of the matrix read
from the `tea@<seed>` metrics files, per-member mean / std, TEA's gains over the plain model with paired t
intervals, and the best member per PEFT method chosen on val (never on test)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lptlib.measure.stats import paired_interval, seed_summary, verdict
from lptlib.recipes.tea import GROUPS, ZERO_SHOT_KEY, matrix_members, member_name, method_key
from lptlib.sections import TEAMatrixConfig

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

SUMMARY_METRICS = (*GROUPS, "val_overall")


def seed_file(metrics_dir: str | Path, seed: int) -> Path:
    """`metrics_dir/seed_<seed>.json`, the file of the stage `tea@<seed>`."""
    return Path(metrics_dir) / f"seed_{seed}.json"


def load_members(metrics_dir: str | Path, matrix: TEAMatrixConfig, seeds: Sequence[int]) -> pd.DataFrame:
    """One row per member and seed (columns member, seed, peft, loss, tea and the row's numbers; per-class
    accuracies and confusions left out) from `metrics_dir/seed_<s>.json` for every seed of `seeds` and every member
    of `matrix`, plus zero-shot CLIP (member 'zero_shot_clip', no peft / loss / tea) where the files have it. A
    missing seed file or member is an error naming the stage to run."""
    import pandas as pd

    missing = [s for s in seeds if not seed_file(metrics_dir, s).is_file()]
    if missing:
        raise FileNotFoundError(
            f"no TEA metrics for seed(s) {', '.join(map(str, missing))} in {metrics_dir} "
            f"({', '.join(seed_file(metrics_dir, s).name for s in missing)}); run them first "
            f"({', '.join(f'`dvc repro tea@{s}`' for s in missing)})"
        )
    names = [member_name(*m) for m in matrix_members(matrix)]
    rows = []
    for s in seeds:
        metrics = json.loads(seed_file(metrics_dir, s).read_text())
        absent = [n for n in names if method_key(n) not in metrics]
        if absent:
            raise ValueError(
                f"{seed_file(metrics_dir, s)} has no metrics for member(s) {', '.join(absent)} of tea.matrix "
                f"(written for another matrix); re-run it (`dvc repro tea@{s}`)"
            )
        keys = ([ZERO_SHOT_KEY] if ZERO_SHOT_KEY in metrics else []) + [method_key(n) for n in names]
        for key in keys:
            row = {k: v for k, v in metrics[key].items() if k not in ("per_class", "confusion")}
            member = key.removeprefix("tea/")
            rows.append({"peft": None, "loss": None, "tea": None, **row, "member": member, "seed": s})
    return pd.DataFrame(rows)


def member_summary(members: pd.DataFrame) -> dict[str, dict]:
    """Per member (zero-shot included): peft, loss, tea, trainable parameters, the seeds and, for each of
    `SUMMARY_METRICS` every seed has, the per-seed values with their mean and sample std (`seed_summary`)."""
    import pandas as pd

    out = {}
    for name, g in members.groupby("member", sort=False):
        first = g.iloc[0]
        entry = {k: None if pd.isna(first[k]) else first[k] for k in ("peft", "loss", "tea")}
        entry.update(trainable_params=int(first["trainable_params"]), seeds=[int(s) for s in g["seed"]])
        for m in SUMMARY_METRICS:
            if m in g and g[m].notna().all():
                values = [float(v) for v in g[m]]
                entry[m] = {**seed_summary(values), "values": values}
        out[str(name)] = entry
    return out


def tea_gains(members: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """TEA's gain per class group: each TEA variant minus the same PEFT method and loss without TEA, paired on the
    seeds both have, in percentage points: the per-seed differences (`diffs`), their mean, std and Student t
    interval (`paired_interval`: low, high) and the verdict (`verdict`). One row per (peft, loss, tea, group);
    empty when the matrix has no 'none' variant."""
    import pandas as pd

    columns = ["peft", "loss", "tea", "group", "seeds", "diffs", "n", "mean", "std", "low", "high", "verdict"]
    m = members[members["peft"].notna()]
    base = m[m["tea"] == "none"]
    rows = []
    for (peft, loss, variant), g in m[m["tea"] != "none"].groupby(["peft", "loss", "tea"], sort=False):
        b = base[(base["peft"] == peft) & (base["loss"] == loss)].set_index("seed")
        g = g.set_index("seed")
        seeds = sorted(set(g.index) & set(b.index))
        if not seeds:
            continue
        for group in GROUPS:
            iv = paired_interval(100 * g.loc[seeds, group], 100 * b.loc[seeds, group], confidence)
            rows.append(
                {
                    "peft": peft,
                    "loss": loss,
                    "tea": variant,
                    "group": group,
                    "seeds": [int(s) for s in seeds],
                    **{k: iv[k] for k in ("diffs", "n", "mean", "std", "low", "high")},
                    "verdict": verdict(iv["low"], iv["high"]),
                }
            )
    return pd.DataFrame(rows, columns=columns)


def best_by_val(members: pd.DataFrame, tea_only: bool = False) -> dict[str, str | None]:
    """Per PEFT method, the member with the highest mean val accuracy over its seeds (`val_overall`; test accuracy
    never takes part; a tie goes to the first in matrix order); among the TEA variants only with `tea_only`. None
    where there is no val split."""
    m = members[members["peft"].notna()]
    if tea_only:
        m = m[m["tea"] != "none"]
    out: dict[str, str | None] = {}
    for peft, g in m.groupby("peft", sort=False):
        if "val_overall" not in g or g["val_overall"].isna().any():
            out[str(peft)] = None
            continue
        val = g.groupby("member", sort=False)["val_overall"].mean()
        out[str(peft)] = str(val.index[int(val.to_numpy().argmax())])
    return out


def plot_gains(gains: pd.DataFrame, title: str = "TEA's gain over the plain PEFT model") -> Figure:
    """`tea_gains` as a figure: one panel per PEFT method and loss; per class group and TEA variant the per-seed
    differences (dots) and their mean with the Student t interval (bar), in percentage points."""
    from matplotlib.figure import Figure

    settings = list(dict.fromkeys(zip(gains["peft"], gains["loss"])))
    variants = list(dict.fromkeys(gains["tea"]))
    cols = max(1, min(3, len(settings)))
    rows = max(1, -(-len(settings) // cols))
    fig = Figure(figsize=(3.8 * cols, 3.0 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, sharey=True, squeeze=False)
    width = 0.7 / max(1, len(variants))
    for ax, (peft, loss) in zip(axes.flat, settings):
        for j, variant in enumerate(variants):
            sel = gains[(gains["peft"] == peft) & (gains["loss"] == loss) & (gains["tea"] == variant)]
            for i, group in enumerate(GROUPS):
                r = sel[sel["group"] == group]
                if r.empty:
                    continue
                r = r.iloc[0]
                x = i + (j - (len(variants) - 1) / 2) * width
                ax.plot([x] * len(r["diffs"]), r["diffs"], "o", color=f"C{j}", alpha=0.35, ms=3)
                if r["low"] is not None and not math.isnan(r["low"]):
                    ax.vlines(x, r["low"], r["high"], color=f"C{j}", lw=2)
                ax.plot([x], [r["mean"]], "D", color=f"C{j}", ms=5, label=variant if i == 0 else None)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(GROUPS)), GROUPS)
        ax.set_title(f"{peft} + {loss}")
        ax.set_ylabel("accuracy gain (points)")
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(settings) :]:
        ax.set_visible(False)
    axes.flat[0].legend(title="per seed (dots), mean and 95% t interval", fontsize=7, title_fontsize=7)
    fig.suptitle(title)
    return fig


def plot_members(members: pd.DataFrame, title: str = "TEA matrix: test accuracy over seeds") -> Figure:
    """Test accuracy of every member (zero-shot CLIP first, when present) per class group: each seed a dot, the
    mean a bar with the sample std."""
    from matplotlib.figure import Figure

    names = list(dict.fromkeys(members["member"]))
    fig = Figure(figsize=(12.0, 1.2 + 0.35 * len(names)), layout="constrained")
    axes = fig.subplots(1, len(GROUPS), sharey=True)
    for ax, group in zip(axes, GROUPS):
        for y, name in enumerate(names):
            v = 100 * members.loc[members["member"] == name, group].astype(float).to_numpy()
            std = float(v.std(ddof=1)) if len(v) > 1 else 0.0
            ax.barh(y, v.mean(), xerr=std, color="C7" if name == ZERO_SHOT_KEY else "C0", alpha=0.45, capsize=2)
            ax.plot(v, [y] * len(v), "o", color="black", ms=3)
        ax.set_title(group)
        ax.set_xlabel("test accuracy (%)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(names)), names, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(title)
    return fig
