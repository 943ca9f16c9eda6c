"""The table in words and pictures: comparison.md (headline, how to read it, notes, every
column, what produced it), comparison.csv, and the plots."""

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from vitsweep.files import write_atomic
from vitsweep.report.aggregate import (
    comparison_table,
    label_runs,
    per_class,
    summed_confusion,
    varying_overrides,
)
from vitsweep.report.columns import Column, columns
from vitsweep.report.plots import short
from vitsweep.sweep import check_results_folder, grid_size, override_key, read_sweep_record


def _missing(value: Any) -> bool:
    return value is None or (not isinstance(value, str | dict | list) and bool(pd.isna(value)))


def _override_cell(value: Any) -> str:
    """A row's choice as typed, numbers shortened (optim.lr=0.000646642... -> 0.0006466)."""
    if _missing(value):
        return "—"
    with contextlib.suppress(ValueError):
        number = float(value)
        return str(value) if number.is_integer() else f"{number:.4g}"
    return str(value)


def _cell(column: Column, value: Any, std: Any = None) -> str:
    if _missing(value):
        return "—"
    if isinstance(value, str):
        return value
    text = column.fmt.format(value)
    return text if _missing(std) else f"{text} ± {column.fmt.format(std)}"


def ci_heading(confidence: float) -> str:
    return f"{100 * confidence:g}% CI"


def _interval(row: pd.Series) -> str:
    if row["n"] < 2:
        return f"n={row['n']}"
    return f"[{row['best_top1_low']:.2f}, {row['best_top1_high']:.2f}]"


def _p_value(p: float) -> str:
    """Three decimals, and never a p of 0: below 0.001 it is written as such."""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _difference(row: pd.Series) -> tuple[str, str]:
    """The Δ and p cells of a row."""
    if row["baseline"]:
        return "baseline", ""
    if pd.isna(row["diff_best_top1"]):
        return "—", ""
    diff = f"{row['diff_best_top1']:+.2f}"
    if row["test"] == "n=1":
        return diff, "n=1"
    if pd.isna(row["p_value"]):  # every seed's difference the same: no test is possible
        return (
            f"{diff} [{row['diff_low']:+.2f}, {row['diff_high']:+.2f}]",
            f"— ({row['test']}: no spread)",
        )
    star = " *" if row["significant"] else ""
    return (
        f"{diff} [{row['diff_low']:+.2f}, {row['diff_high']:+.2f}]",
        f"{_p_value(row['p_value'])} ({row['test']}){star}",
    )


def shown_columns(table: pd.DataFrame, keys: list[str], headline: bool) -> list[Column]:
    """The columns a table shows: the headline's few, or every one that is not a row key;
    one that only matters when rows differ in it, only then."""
    shown = []
    for column in columns():
        if (headline and not column.headline) or column.name in keys:
            continue
        values = table[column.name].nunique(dropna=True)
        when = column.headline if headline and isinstance(column.headline, str) else column.shown
        if (when == "if varies" and values < 2) or (when == "if present" and values == 0):
            continue
        shown.append(column)
    return shown


def to_markdown(table: pd.DataFrame, keys: list[str], headline: bool = False) -> str:
    """The table as markdown: the varying choices first (they name the rows), then the model
    and the measurements (for ``headline``, the few that matter most), then how sure the
    accuracy is, at the table's own confidence."""
    rows = [row for _, row in table.iterrows()]
    cells = {key: [_override_cell(row.get(f"override:{key}")) for row in rows] for key in keys}
    for column in shown_columns(table, keys, headline):
        cells[column.heading] = [_cell(column, row.get(column.name), row.get(f"{column.name}_std"))
                                 for row in rows]  # fmt: skip
    ci = ci_heading(table.attrs.get("confidence", 0.95))
    differences = [_difference(row) for row in rows]
    cells |= {
        ci: [_interval(row) for row in rows],
        "n": [str(n) for n in table["n"]],
        f"Δ best top-1 vs baseline [{ci}]": [d for d, _ in differences],
        "p": [p for _, p in differences],
        "status": list(table["status"]),
    }
    return pd.DataFrame(cells).to_markdown(index=False, disable_numparse=True) + "\n"


def footer(runs: pd.DataFrame, curves: pd.DataFrame, sweep: dict[str, Any]) -> str:
    """What produced the numbers: command, jobs and seeds, device, versions, commit, compute."""

    def listed(column: str, empty: str) -> str:
        return ", ".join(sorted({str(v) for v in runs[column].dropna()})) or empty

    seeds = sorted({int(s) for s in runs["seed"].dropna()})
    compute_s = sum(curves[c].sum() for c in ("train_s", "test_s") if c in curves)
    command = sweep.get("command")
    lines = [
        f"- command: `{command}`" if command else "- command: not recorded",
        f"- jobs: {len(runs)}; seeds: {', '.join(map(str, seeds)) or '—'}",
        f"- device: {listed('device', 'not recorded')}; precision: {listed('precision', '—')}; "
        f"torch {listed('torch', '—')}, CUDA {listed('cuda', 'none')}",
        f"- harness commit: {sweep.get('commit', 'not recorded')}",
        f"- compute: {compute_s / 60:.1f} min of training and evaluation in all",
    ]
    return "What produced these numbers:\n\n" + "\n".join(lines) + "\n"


def how_to_read(table: pd.DataFrame) -> str:
    confidence = table.attrs.get("confidence", 0.95)
    ci = ci_heading(confidence)
    base = table.loc[table["baseline"], "label"].iloc[0]
    return (
        f"Best top-1 is the mean ± standard deviation over the n seeds that completed; "
        f"{ci} is its Student-t interval. Δ is each row's mean best top-1 minus the baseline's "
        f"(`{base}`), with its {ci} and two-sided p-value: paired by seed where both rows ran "
        f"the same seeds, Welch's t-test otherwise; * marks p < {1 - confidence:.3g}. With n=1 "
        "there is no interval.\n"
    )


def notes_text(table: pd.DataFrame) -> str:
    notes = table.attrs.get("notes", [])
    if not notes:
        return ""
    return "**Read with care:**\n\n" + "\n".join(f"- {note}" for note in notes) + "\n"


def per_class_text(runs: pd.DataFrame, table: pd.DataFrame, most: int = 20) -> str:
    """Rows × classes: each row's top-1 per class (mean over its seeds), for up to ``most``
    classes."""
    frame = per_class(runs, table)
    if frame.empty or not 0 < frame.shape[1] <= most:
        return ""
    cells = frame.map(lambda v: "—" if pd.isna(v) else f"{v:.2f}")
    cells.insert(0, "row", [short(label) for label in frame.index])
    markdown = cells.to_markdown(index=False, disable_numparse=True)
    return (
        f"Top-1 % per class (at each run's best epoch, mean over the row's seeds):\n\n{markdown}\n"
    )


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
        names = next((c for c in runs.loc[label_runs(runs, keys) == label, "classes"]
                      if isinstance(c, list)), None)  # fmt: skip
        if matrix is not None:
            names = names or [str(i) for i in range(len(matrix))]
            panels.append((f"{role}: {short(label)}", matrix, names))
    return panels


def efficiency_points(table: pd.DataFrame) -> pd.DataFrame:
    """For a sweep that varies ``data.subset``: each row's training images and best top-1,
    named by its other choices."""
    others = [k for k in table.attrs.get("keys", []) if k != "data.subset"]
    images = table["train_images"].fillna(pd.to_numeric(table["override:data.subset"],
                                                         errors="coerce"))  # fmt: skip
    return pd.DataFrame({
        "label": label_runs(table, others) if others else "all",
        "images": images, "best_top1": table["best_top1"],
        "low": table["best_top1_low"], "high": table["best_top1_high"],
    }).dropna(subset=["images", "best_top1"])  # fmt: skip


def manifest(runs: pd.DataFrame, table: pd.DataFrame, sweep: dict[str, Any]) -> dict[str, Any]:
    """What a reproduction needs: per row its overrides (less the seed), seeds, runs and
    per-seed best top-1; for the sweep the harness commit and its state, versions, device
    and data fingerprints."""
    labels = label_runs(runs, list(table.attrs.get("keys", [])))

    def distinct(frame: pd.DataFrame, column: str) -> list[str]:
        return sorted({str(v) for v in frame[column].dropna()})

    rows = []
    for _, row in table.iterrows():
        group = runs[labels == row["label"]]
        seeds = sorted({int(s) for s in group["seed"].dropna()})
        first = next(iter(group["overrides"]), [])
        rows.append({
            "label": row["label"],
            "overrides": [o for o in first if override_key(o) != "seed"],
            "seeds": seeds, "runs": list(group["run"]),
            "best_top1": {str(k): v for k, v in row["per_seed"].items()},
            "mean": _number(row["best_top1"]), "low": _number(row["best_top1_low"]),
            "high": _number(row["best_top1_high"]), "n": int(row["n"]),
            "data_fingerprint": distinct(group, "data_fingerprint"),
        })  # fmt: skip
    harness = sweep.get("harness") or {"commit": None, "dirty": None, "diff_sha256": None}
    return {
        "sweep": sweep.get("name"), "command": sweep.get("command"), "harness": harness,
        "versions": {v: distinct(runs, v) for v in ("python", "torch", "cuda")},
        "device": distinct(runs, "device"), "data": distinct(runs, "data_fingerprint"),
        "confidence": table.attrs.get("confidence"), "rows": rows,
    }  # fmt: skip


def _number(value: Any) -> float | None:
    return None if _missing(value) else float(value)


def write_report(
    runs: pd.DataFrame,
    curves: pd.DataFrame,
    out_dir: Path,
    source: str | os.PathLike,
    baseline: int | str | None = None,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Write comparison.md/.csv, manifest.json and the plots into ``out_dir``; returns the
    table (its headline in ``table.attrs["headline"]``, what to read with care in
    ``attrs["notes"]``). ``source`` is the sweep directory (its sweep.yaml gives the footer)
    or a W&B group."""
    check_results_folder(out_dir, source)
    out_dir.mkdir(parents=True, exist_ok=True)
    sweep = read_sweep_record(Path(source)) if Path(source).is_dir() else {}
    keys = varying_overrides(runs, sweep.get("grid"))
    table = comparison_table(runs, baseline, confidence, keys)
    expected = grid_size(sweep.get("grid") or {}) if sweep.get("grid") else None
    if expected and len(runs) < expected:
        table.attrs["notes"].append(f"{expected - len(runs)} of the grid's {expected} jobs have "
                                    "no record: not run yet, or deleted")  # fmt: skip
    table.attrs["headline"] = to_markdown(table, keys, headline=True)
    text = "\n".join(part for part in [
        f"# Sweep {out_dir.name}\n\nFrom {source} ({len(runs)} jobs).\n",
        table.attrs["headline"], how_to_read(table), notes_text(table),
        "All columns:\n", to_markdown(table, keys), per_class_text(runs, table),
        footer(runs, curves, sweep),
    ] if part)  # fmt: skip
    write_atomic(out_dir / "comparison.md", text)
    kept = table.drop(columns=["per_seed", "overrides", "confusion", "classes", "per_class_top1"])
    write_atomic(out_dir / "comparison.csv", kept.to_csv(index=False))
    found = manifest(runs, table, sweep) | {"source": str(source)}
    write_atomic(out_dir / "manifest.json", json.dumps(found, indent=2))
    draw(runs, curves, table, keys, out_dir)
    return table


def draw(
    runs: pd.DataFrame, curves: pd.DataFrame, table: pd.DataFrame, keys: list[str], out_dir: Path
) -> None:
    """The sweep's plots: curves, accuracy against cost, confusion matrices, and for a sweep
    over ``data.subset`` its data efficiency."""
    from vitsweep.report.plots import (
        plot_confusion,
        plot_curves,
        plot_data_efficiency,
        plot_pareto,
    )

    labels = dict(zip(runs["run"], label_runs(runs, keys)))
    plot_curves(curves, labels, "test_acc", "test top-1 (%)", out_dir / "accuracy.png", 100)
    plot_curves(curves, labels, "train_s", "train seconds per epoch", out_dir / "latency.png")
    plot_pareto(table, out_dir / "pareto.png")
    if panels := confusion_panels(runs, table):
        plot_confusion(panels, out_dir / "confusion.png")
    if "data.subset" in keys and len(points := efficiency_points(table)):
        plot_data_efficiency(points, out_dir / "data_efficiency.png")
