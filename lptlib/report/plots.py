"""Figures (seaborn / matplotlib), saved at a fixed dpi. Each function returns the figure."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from lptlib.data.datasets import ImageDataset  # noqa: E402
from lptlib.dist import is_main  # noqa: E402
from lptlib.measure.metrics import SHOT_GROUPS  # noqa: E402

GROUP_COLORS = dict(zip(SHOT_GROUPS, sns.color_palette("deep", 3)))


def set_style() -> None:
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.1)


def save_figure(fig: plt.Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save `fig` (PNG by the suffix); in a distributed run only rank 0 writes."""
    path = Path(path)
    if not is_main():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def plot_class_counts(
    counts: Sequence[int], groups: Sequence[str], classnames: Sequence[str] | None = None, title: str = ""
) -> plt.Figure:
    """Training images per class, head -> tail, log scale, coloured by shot group."""
    counts = np.asarray(counts)
    order = np.argsort(-counts, kind="stable")
    fig, ax = plt.subplots(figsize=(max(5.0, min(14.0, 0.45 * len(counts))), 3.2))
    colors = [GROUP_COLORS[groups[i]] for i in order]
    ax.bar(np.arange(len(counts)), counts[order], color=colors, width=0.85 if len(counts) < 200 else 1.0)
    ax.set_yscale("log")
    ax.set_ylabel("training images")
    ax.set_xlabel("class (sorted by training count)")
    if classnames is not None and len(counts) <= 30:
        ax.set_xticks(np.arange(len(counts)), [classnames[i] for i in order], rotation=45, ha="right")
    else:
        ax.set_xticks([])
    handles = [plt.Rectangle((0, 0), 1, 1, color=GROUP_COLORS[g]) for g in SHOT_GROUPS]
    labels = [f"{g} ({sum(1 for x in groups if x == g)})" for g in SHOT_GROUPS]
    ax.legend(handles, labels, title="shot group (classes)", frameon=False)
    ax.set_title(title)
    return fig


def plot_sample_grid(
    dataset: ImageDataset, classnames: Sequence[str], per_class: int = 8, max_classes: int = 10, seed: int = 0
) -> plt.Figure:
    """A row of training images per class (classes spread over the frequency range if there are many)."""
    rng = np.random.default_rng(seed)
    present = np.unique(dataset.targets)
    classes = (
        present if len(present) <= max_classes else present[np.linspace(0, len(present) - 1, max_classes).astype(int)]
    )
    fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class * 0.9, len(classes) * 0.95), squeeze=False)
    for row, c in enumerate(classes):
        idx = np.flatnonzero(dataset.targets == c)
        picks = rng.choice(idx, size=min(per_class, len(idx)), replace=False)
        for col in range(per_class):
            ax = axes[row, col]
            ax.set_axis_off()
            if col < len(picks):
                ax.imshow(np.asarray(dataset.load(int(picks[col]))))
        axes[row, 0].text(
            -0.1,
            0.5,
            f"{classnames[c]} ({len(idx)})",
            transform=axes[row, 0].transAxes,
            ha="right",
            va="center",
            fontsize=9,
        )
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    return fig


def plot_training_curves(history: Sequence[dict], smooth: int = 10) -> plt.Figure:
    """Training loss per step for each model in `history` (rows with model, step, loss), smoothed."""
    df = pd.DataFrame(history)
    models = list(dict.fromkeys(df["model"]))
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.0), squeeze=False)
    for ax, m in zip(axes[0], models):
        d = df[df["model"] == m]
        ax.plot(d["step"], d["loss"], alpha=0.3, color="C0")
        ax.plot(d["step"], d["loss"].rolling(smooth, min_periods=1).mean(), color="C0")
        ax.set_title(m)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
    fig.tight_layout()
    return fig


def plot_shot_bars(rows: dict[str, dict], title: str = "") -> plt.Figure:
    """Accuracy (%) overall / many / medium / few, one bar per row (method)."""
    df = pd.DataFrame(
        [
            {"row": name, "split": split, "accuracy": 100 * m[split]}
            for name, m in rows.items()
            for split in ("overall", *SHOT_GROUPS)
        ]
    )
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    sns.barplot(data=df, x="split", y="accuracy", hue="row", ax=ax)
    ax.set_xlabel("")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(title)
    return fig


def plot_lda(
    panels: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]],
    classnames: Sequence[str],
    max_points: int = 3000,
    seed: int = 0,
) -> plt.Figure:
    """LDA scatter: one row per feature extractor, one column per domain; colour = class."""
    rows = list(panels)
    cols = list(dict.fromkeys(c for p in panels.values() for c in p))
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(3.6 * len(cols), 3.3 * len(rows)), squeeze=False)
    palette = sns.color_palette("tab10" if len(classnames) <= 10 else "husl", len(classnames))
    rng = np.random.default_rng(seed)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            ax = axes[i, j]
            if c not in panels[r]:
                ax.set_axis_off()
                continue
            pts, labels = panels[r][c]
            sel = rng.permutation(len(pts))[:max_points]
            ax.scatter(pts[sel, 0], pts[sel, 1], s=4, c=[palette[int(y)] for y in labels[sel]], alpha=0.6, linewidths=0)
            ax.set_title(f"{r} · {c}", fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
    if len(classnames) <= 20:
        handles = [plt.Line2D([], [], marker="o", ls="", color=palette[k], label=n) for k, n in enumerate(classnames)]
        fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def plot_history(history: Sequence[dict], title: str = "") -> plt.Figure:
    """Training loss and val accuracy per epoch (rows of `fit`'s history)."""
    df = pd.DataFrame(history)
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ax.plot(df["epoch"] + 1, df["loss"], color="C0", marker="o", ms=3)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss", color="C0")
    if "val_overall" in df:
        ax2 = ax.twinx()
        ax2.plot(df["epoch"] + 1, 100 * df["val_overall"], color="C1", marker="s", ms=3)
        ax2.set_ylabel("val accuracy (%)", color="C1")
        ax2.grid(False)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_key_usage(counts: Sequence[int], entropy: float, title: str = "") -> plt.Figure:
    """How often each group-prompt pool entry is picked: a collapsed pool shows a few tall bars."""
    counts = np.asarray(counts)
    fig, ax = plt.subplots(figsize=(6.0, 3.0))
    ax.bar(np.arange(len(counts)), counts / max(1, counts.sum()), color="C2")
    ax.axhline(1 / len(counts), color="grey", ls="--", lw=1, label="uniform use")
    ax.set_xlabel("pool entry")
    ax.set_ylabel("share of picks")
    ax.set_xticks(np.arange(len(counts)))
    ax.legend(frameon=False)
    ax.set_title(f"{title} (normalised entropy {entropy:.2f})")
    return fig


def plot_gate_weights(gates: dict[str, dict[str, float]], title: str = "MoE gate weight by class group") -> plt.Figure:
    """Mean gate weight of each expert over the test images of each class group ({group: {expert: weight}})."""
    df = pd.DataFrame([{"group": g, "expert": e, "weight": w} for g, row in gates.items() for e, w in row.items()])
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    sns.barplot(df, x="group", y="weight", hue="expert", ax=ax, order=[g for g in SHOT_GROUPS if g in gates])
    ax.set_ylim(0, 1)
    ax.set_xlabel("")
    ax.set_ylabel("mean gate weight (test)")
    ax.legend(frameon=False, fontsize=8)
    ax.set_title(title)
    return fig


def plot_per_class_vs_count(
    counts: Sequence[int], per_class: dict[str, Sequence[float]], groups: Sequence[str] | None = None, title: str = ""
) -> plt.Figure:
    """Test accuracy (%) of every class against its training count (log x), one marker series per method;
    the background is shaded by shot group when `groups` (per class) is given."""
    counts = np.asarray(counts)
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    if groups is not None:
        groups = np.asarray(groups)
        for g in SHOT_GROUPS:
            sel = counts[groups == g]
            if len(sel):
                ax.axvspan(sel.min() * 0.85, sel.max() * 1.15, color=GROUP_COLORS[g], alpha=0.08, lw=0)
    for (name, acc), marker in zip(per_class.items(), "osD^v<>"):
        acc = 100 * np.asarray(acc, dtype=float)
        order = np.argsort(counts)
        ax.plot(counts[order], acc[order], marker=marker, ms=5, lw=1, alpha=0.85, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.legend(frameon=False, fontsize=8, loc="lower right")
    ax.set_title(title)
    return fig


def plot_confusion(cm: np.ndarray, classnames: Sequence[str], title: str = "") -> plt.Figure:
    """A row-normalised confusion matrix (rows = true class) as a heat map, classes in the given order."""
    n = len(classnames)
    size = min(12.0, 2.5 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    sns.heatmap(
        100 * cm,
        ax=ax,
        cmap="viridis",
        vmin=0,
        vmax=100,
        square=True,
        annot=n <= 12,
        fmt=".0f",
        annot_kws={"fontsize": 7},
        cbar_kws={"label": "% of the true class"},
        xticklabels=list(classnames) if n <= 40 else False,
        yticklabels=list(classnames) if n <= 40 else False,
    )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (most frequent first)")
    ax.set_title(title)
    return fig


def plot_seed_accuracy(
    values: dict[str, dict[str, Sequence[float]]],
    metrics: Sequence[str] = ("overall", *SHOT_GROUPS),
    highlight: str | None = None,
    title: str = "",
) -> plt.Figure:
    """Test accuracy (%) over seeds, one panel per metric, one line per method (`values[method][metric]` = the
    per-seed accuracies in [0, 1]): each seed as a dot, the mean as a bar with ± one sample std as a whisker.
    `highlight` (e.g. the val-chosen best) is drawn in a second colour."""
    names = list(values)
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(2.9 * len(metrics) + 2.8, 0.9 + 0.3 * max(len(names), 1)), sharey=True, squeeze=False
    )
    ys = np.arange(len(names))
    rng = np.random.default_rng(0)  # vertical jitter of the seed dots only
    for ax, metric in zip(axes[0], metrics):
        for y, name in zip(ys, names):
            v = values[name].get(metric)
            if v is None or len(v) == 0:
                continue
            v = 100 * np.asarray(v, dtype=float)
            color = "C3" if name == highlight else "C0"
            std = float(v.std(ddof=1)) if len(v) > 1 else 0.0
            ax.barh(y, v.mean(), height=0.6, color=color, alpha=0.25)
            ax.errorbar(v.mean(), y, xerr=std, fmt="|", color=color, capsize=3, lw=1.2, ms=10)
            ax.scatter(v, y + rng.uniform(-0.15, 0.15, len(v)), s=10, color=color, zorder=3, linewidths=0)
        ax.set_title(metric)
        ax.set_xlim(0, 100)
        ax.set_xlabel("test accuracy (%)")
        ax.grid(axis="y", visible=False)
    axes[0, 0].set_yticks(ys, names, fontsize=8)
    axes[0, 0].set_ylim(len(names) - 0.5, -0.5)  # first method on top
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
