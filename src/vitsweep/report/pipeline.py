"""A sweep's results folder, written in one go (``write_report``): the table in markdown and
CSV, manifest.json, and the plots (curves, accuracy against cost, confusion matrices, data
efficiency), from its runs and curves as ``vitsweep.report.read`` gives them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitsweep.files import write_atomic
from vitsweep.report.aggregate import (
    comparison_table,
    label_runs,
    per_class,
    summed_confusion,
    varying_overrides,
)
from vitsweep.report.latex import to_latex
from vitsweep.report.manifest import manifest
from vitsweep.report.plots import (
    plot_confusion,
    plot_curves,
    plot_data_efficiency,
    plot_pareto,
    short,
)
from vitsweep.report.render import (
    footer,
    how_to_read,
    not_significant_text,
    notes_text,
    per_class_text,
    table_cells,
    to_markdown,
)
from vitsweep.settings import ReportSettings
from vitsweep.sweep import check_results_folder, grid_size, read_sweep_record
from vitsweep.tracking import Report

if TYPE_CHECKING:  # pandas is imported where a table is made: a run stays light
    import pandas as pd


def write_report(
    runs: pd.DataFrame,
    curves: pd.DataFrame,
    out_dir: Path,
    source: str | os.PathLike,
    report: ReportSettings | None = None,
    sweep: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Write comparison.md/.csv/.tex, per_class.csv, manifest.json and the plots into
    ``out_dir``; returns the table (its headline in ``table.attrs["headline"]``, what to read
    with care in ``attrs["notes"]``). ``source`` is the sweep directory (its sweep.yaml gives
    the footer, unless ``sweep`` is given) or a W&B group."""
    check_results_folder(out_dir, source)
    out_dir.mkdir(parents=True, exist_ok=True)
    if sweep is None:
        sweep = read_sweep_record(Path(source)) if Path(source).is_dir() else {}
    keys = varying_overrides(runs, sweep.get("grid"))
    table = comparison_table(runs, report, keys)
    table.attrs["name"] = out_dir.name
    expected = grid_size(sweep.get("grid") or {}) if sweep.get("grid") else None
    if expected and len(runs) < expected:
        table.attrs["notes"].append(
            f"{expected - len(runs)} of the grid's {expected} jobs have "
            "no record: not run yet, or deleted"
        )
    table.attrs["headline"] = to_markdown(table, keys, headline=True)
    title = f"# Sweep {out_dir.name}\n\nFrom {source} ({len(runs)} jobs).\n"
    write_atomic(out_dir / "comparison.md", comparison_text(title, runs, curves, table, sweep))
    write_atomic(out_dir / "comparison.csv", numbers_of(table).to_csv(index=False))
    write_atomic(out_dir / "comparison.tex", to_latex(table, runs, sweep.get("command")))
    if not (classes := per_class(runs, table)).empty:  # every class, however many
        write_atomic(out_dir / "per_class.csv", classes.rename_axis("row").to_csv())
    found = manifest(runs, table, sweep) | {"source": str(source)}
    write_atomic(out_dir / "manifest.json", json.dumps(found, indent=2))
    draw(runs, curves, table, keys, out_dir)
    return table


STRUCTURED = ("per_seed", "overrides", "confusion", "classes", "per_class_top1", "settings")
PLOTS = ("accuracy", "latency", "pareto", "confusion", "data_efficiency")


def numbers_of(table: pd.DataFrame) -> pd.DataFrame:
    """The table as comparison.csv holds it: every column but the structured ones."""
    return table.drop(columns=list(STRUCTURED))


def tracker_report(table: pd.DataFrame, out_dir: Path, group: str) -> Report:
    """What a tracker logs of a results folder: the table as comparison.md shows it, the
    numbers of comparison.csv, and the plots drawn."""
    import pandas as pd

    shown = pd.DataFrame(table_cells(table, list(table.attrs["keys"]), headline=True))
    numbers = numbers_of(table)
    numbers = numbers.astype(object).where(numbers.notna(), None)  # W&B cells: null, not NaN
    images = {name: out_dir / f"{name}.png" for name in PLOTS}
    return Report(
        group=group,
        tables={"comparison": shown, "comparison_numbers": numbers},
        images={name: path for name, path in images.items() if path.is_file()},
    )


def comparison_text(
    title: str, runs: pd.DataFrame, curves: pd.DataFrame, table: pd.DataFrame, sweep: dict
) -> str:
    """comparison.md: the headline, how to read it, what the rows could not show, the notes,
    every column, the per-class table and what produced the numbers."""
    parts = [
        title,
        table.attrs["headline"],
        how_to_read(table),
        not_significant_text(table),
        notes_text(table),
        "All columns:\n",
        to_markdown(table, list(table.attrs["keys"])),
        per_class_text(runs, table),
        footer(runs, curves, sweep),
    ]
    return "\n".join(part for part in parts if part)


def draw(
    runs: pd.DataFrame, curves: pd.DataFrame, table: pd.DataFrame, keys: list[str], out_dir: Path
) -> None:
    """The sweep's plots: curves, accuracy against cost, confusion matrices, and for a sweep
    over ``data.subset`` its data efficiency."""
    labels = dict(zip(runs["run"], label_runs(runs, keys)))
    plot_curves(curves, labels, "test_acc", "test top-1 (%)", out_dir / "accuracy.png", 100)
    plot_curves(curves, labels, "train_s", "train seconds per epoch", out_dir / "latency.png")
    plot_pareto(table, out_dir / "pareto.png")
    if panels := confusion_panels(runs, table):
        plot_confusion(panels, out_dir / "confusion.png")
    if "data.subset" in keys and len(points := efficiency_points(table)):
        plot_data_efficiency(points, out_dir / "data_efficiency.png")


def confusion_panels(runs: pd.DataFrame, table: pd.DataFrame) -> list[tuple[str, Any, list]]:
    """The baseline row's and the best row's summed confusion matrices, with class names."""
    keys = list(table.attrs.get("keys", []))
    best = table["best_top1"].astype(float).idxmax() if table["best_top1"].notna().any() else None
    chosen = {int(table.index[table["baseline"]][0]): "baseline"}
    if best is not None and int(best) not in chosen:
        chosen[int(best)] = "best"
    panels = []
    for position, role in chosen.items():
        label = table["label"][position]
        matrix = summed_confusion(runs, label, keys)
        names = next(
            (
                c
                for c in runs.loc[label_runs(runs, keys) == label, "classes"]
                if isinstance(c, list)
            ),
            None,
        )
        if matrix is not None:
            names = names or [str(i) for i in range(len(matrix))]
            panels.append((f"{role}: {short(label)}", matrix, names))
    return panels


def efficiency_points(table: pd.DataFrame) -> pd.DataFrame:
    """For a sweep that varies ``data.subset``: each row's training images and best top-1,
    named by its other choices."""
    import pandas as pd

    others = [k for k in table.attrs.get("keys", []) if k != "data.subset"]
    images = table["train_images"].fillna(
        pd.to_numeric(table["override:data.subset"], errors="coerce")
    )
    return pd.DataFrame(
        {
            "label": label_runs(table, others) if others else "all",
            "images": images,
            "best_top1": table["best_top1"],
            "low": table["best_top1_low"],
            "high": table["best_top1_high"],
        }
    ).dropna(subset=["images", "best_top1"])
