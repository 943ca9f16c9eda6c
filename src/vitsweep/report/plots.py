"""The sweep's plots: curves per epoch, and accuracy against cost (matplotlib, written
atomically, readable at the README's width)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitsweep.files import write_atomic

if TYPE_CHECKING:
    import pandas as pd


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    pyplot().close(fig)


def short(label: str) -> str:
    """A row's label without its keys: 'attention=softmax embedding=patch' -> 'softmax patch'."""
    return " ".join(part.split("=")[-1] for part in str(label).split())


def plot_curves(
    curves: pd.DataFrame,
    labels: Mapping[str, str],
    column: str,
    ylabel: str,
    path: Path,
    scale: float = 1.0,
) -> None:
    """One line per configuration of ``column`` against epoch: the mean over its seeds, and
    a band of one standard deviation where seeds repeat it."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = pyplot().subplots(figsize=(7, 4.2))
    if len(curves) and column in curves:
        data = curves.dropna(subset=[column])
        data = data.assign(label=data["run"].map(labels))
        for label, group in data.groupby("label", sort=False):
            by_epoch = group.groupby("epoch")[column]
            mean = by_epoch.mean() * scale
            seeds = group["run"].nunique()
            name = short(label) + (f" (n={seeds})" if seeds > 1 else "")
            (line,) = ax.plot(mean.index, mean.values, marker="o", markersize=3, label=name)
            if seeds > 1:
                std = by_epoch.std().fillna(0) * scale
                ax.fill_between(
                    mean.index, mean - std, mean + std, alpha=0.2, color=line.get_color()
                )
        ax.legend(fontsize=8, title="mean, band ±1 std over seeds", title_fontsize=8)
    ax.set(xlabel="epoch", ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def frontier(costs: list[float], scores: list[float]) -> list[int]:
    """Indices of the rows no other row beats on both counts (cheaper and at least as good),
    in order of cost."""
    order = sorted(range(len(costs)), key=lambda i: (costs[i], -scores[i]))
    kept, best = [], float("-inf")
    for i in order:
        if scores[i] > best:
            kept.append(i)
            best = scores[i]
    return kept


def plot_pareto(table: pd.DataFrame, path: Path) -> None:
    """Best top-1 (mean, with ±1 std over seeds) against two costs, train seconds per epoch
    and forward GFLOPs per image; each point is a row, and the frontier is drawn."""
    costs = [
        ("train_s_per_epoch", "train seconds per epoch"),
        ("gflops_per_image", "forward GFLOPs per image"),
    ]
    fig, axes = pyplot().subplots(1, 2, figsize=(11, 4.4))
    for ax, (cost, xlabel) in zip(axes, costs):
        data = table.dropna(subset=[cost, "best_top1"]).reset_index(drop=True)
        if data.empty:
            ax.text(0.5, 0.5, "no completed rows", ha="center", transform=ax.transAxes)
        else:
            draw_cost_panel(ax, data, cost)
        ax.set(xlabel=xlabel, ylabel="best test top-1 (%)")
        ax.grid(True, alpha=0.3)
    fig.suptitle("Accuracy against cost (upper left is better)")
    fig.tight_layout()
    save_figure(fig, path)


def draw_cost_panel(ax: Any, data: pd.DataFrame, cost: str) -> None:
    """One cost's panel: each row's best top-1 with its spread, named, and the frontier."""
    errors = data["best_top1_std"].fillna(0) if "best_top1_std" in data else None
    ax.errorbar(data[cost], data["best_top1"], yerr=errors, fmt="o", capsize=3)
    for _, row in data.iterrows():
        place = (row[cost], row["best_top1"])
        offset = {"textcoords": "offset points", "xytext": (5, 4)}
        ax.annotate(short(row["label"]), place, fontsize=8, **offset)
    best = frontier(list(data[cost]), list(data["best_top1"]))
    x, y = data[cost][best], data["best_top1"][best]
    ax.step(x, y, where="post", color="grey", alpha=0.6, linestyle="--")
    label = "frontier: none cheaper and better"
    ax.scatter(x, y, s=160, facecolors="none", edgecolors="grey", label=label)
    ax.legend(fontsize=8, loc="lower right")
    if data[cost].max() > 10 * data[cost].min() > 0:
        ax.set_xscale("log")


def plot_confusion(panels: list[tuple[str, np.ndarray, list[str]]], path: Path) -> None:
    """Confusion matrices side by side (``panels``: title, matrix, class names), each row
    normalised by its true class's count, so the diagonal is each class's top-1."""
    fig, axes = pyplot().subplots(1, len(panels), figsize=(5.6 * len(panels), 5.2), squeeze=False)
    for ax, (title, matrix, classes) in zip(axes[0], panels):
        counts = matrix.sum(axis=1, keepdims=True)
        share = np.divide(matrix, counts, out=np.zeros(matrix.shape), where=counts > 0)
        image = ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
        ticks = range(len(classes))
        ax.set_xticks(ticks, classes, rotation=90, fontsize=7)
        ax.set_yticks(ticks, classes, fontsize=7)
        ax.set(xlabel="predicted class", ylabel="true class", title=title)
        if len(classes) <= 12:
            for (i, j), value in np.ndenumerate(share):
                ax.text(
                    j,
                    i,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if value > 0.5 else "black",
                )
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="share of the true class")
    save_figure(fig, path)


def plot_data_efficiency(points: pd.DataFrame, path: Path) -> None:
    """Best top-1 against the number of training images: a line per configuration (``points``:
    label, images, best_top1, low, high), with its interval over seeds where it has one."""
    fig, ax = pyplot().subplots(figsize=(7, 4.2))
    for label, line in points.sort_values("images").groupby("label", sort=False):
        below = (line["best_top1"] - line["low"]).fillna(0)
        above = (line["high"] - line["best_top1"]).fillna(0)
        ax.errorbar(
            line["images"],
            line["best_top1"],
            yerr=[below, above],
            marker="o",
            capsize=3,
            label=short(label) or "all",
        )
    ax.set_xscale("log")
    sizes = sorted(points["images"].unique())
    ax.set_xticks(sizes, [f"{size:,.0f}" for size in sizes])
    ax.minorticks_off()
    ax.set(
        xlabel="training images",
        ylabel="best test top-1 (%)",
        title="Data efficiency (bars: the interval over seeds)",
    )
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
