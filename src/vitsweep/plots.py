"""The sweep's plots, from the per-epoch curves of its jobs (matplotlib, written atomically)."""

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from vitsweep.files import write_atomic


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def plot_curves(
    curves: pd.DataFrame,
    labels: Mapping[str, str],
    column: str,
    ylabel: str,
    path: Path,
    scale: float = 1.0,
) -> None:
    """One line per configuration (the mean over its seeds) of ``column`` against epoch, and
    a band of one standard deviation where seeds repeat it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.2))
    if len(curves) and column in curves:
        data = curves.dropna(subset=[column]).assign(label=curves["run"].map(labels))
        for label, group in data.groupby("label", sort=False):
            by_epoch = group.groupby("epoch")[column]
            mean = by_epoch.mean() * scale
            ax.plot(mean.index, mean.values, marker="o", markersize=3, label=label)
            if group["run"].nunique() > 1:
                std = by_epoch.std().fillna(0) * scale
                ax.fill_between(mean.index, mean - std, mean + std, alpha=0.2)
        ax.legend(fontsize=8)
    ax.set(xlabel="epoch", ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
