"""The table in words: comparison.md's parts (the headline, how to read it, the notes, every
column, the per-class table, what produced it), each a function of the table."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from vitsweep.report.aggregate import per_class, shown_p
from vitsweep.report.columns import Column, columns
from vitsweep.report.plots import short

if TYPE_CHECKING:  # pandas is imported where a table is made: a run stays light
    import pandas as pd


def missing(value: Any) -> bool:
    import pandas as pd

    return value is None or (not isinstance(value, str | dict | list) and bool(pd.isna(value)))


def _override_cell(value: Any) -> str:
    """A row's choice as typed, numbers shortened (optim.lr=0.000646642... -> 0.0006466)."""
    if missing(value):
        return "—"
    with contextlib.suppress(ValueError):
        number = float(value)
        return str(value) if number.is_integer() else f"{number:.4g}"
    return str(value)


def _cell(column: Column, value: Any, std: Any = None) -> str:
    if missing(value):
        return "—"
    if isinstance(value, str):
        return value
    text = column.fmt.format(value)
    return text if missing(std) else f"{text} ± {column.fmt.format(std)}"


def ci_heading(confidence: float) -> str:
    return f"{100 * confidence:g}% CI"


def _interval(row: pd.Series) -> str:
    if row["n"] < 2:
        return f"n={row['n']}"
    return f"[{row['best_top1_low']:.2f}, {row['best_top1_high']:.2f}]"


def _p_value(p: float) -> str:
    """Three decimals, and never a p of 0: below 0.001 it is written as such."""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _difference(row: pd.Series, correction: str) -> tuple[str, str]:
    """The Δ and p cells of a row (the p adjusted for the rows compared)."""
    import pandas as pd

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
        f"{_p_value(shown_p(row, correction))} ({row['test']}){star}",
    )


def _detectable(row: pd.Series) -> str:
    """The smallest difference a row's seeds could have shown, where a test was made."""
    return "" if missing(row.get("detectable_diff")) else f"{row['detectable_diff']:.2f}"


def p_heading(correction: str) -> str:
    return "p" if correction == "none" else f"p ({CORRECTION_NAMES[correction]})"


CORRECTION_NAMES = {"holm": "Holm", "bonferroni": "Bonferroni", "none": "uncorrected"}


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


def table_cells(table: pd.DataFrame, keys: list[str], headline: bool = False) -> dict[str, list]:
    """The table's cells by heading, as written: the varying choices first (they name the
    rows), then the model and the measurements (for ``headline``, the few that matter most),
    then how sure the accuracy is, at the table's own confidence."""
    rows = [row for _, row in table.iterrows()]
    cells = {key: [_override_cell(row.get(f"override:{key}")) for row in rows] for key in keys}
    for column in shown_columns(table, keys, headline):
        cells[column.heading] = [
            _cell(column, row.get(column.name), row.get(f"{column.name}_std")) for row in rows
        ]
    ci = ci_heading(table.attrs["confidence"])
    correction = table.attrs["correction"]
    differences = [_difference(row, correction) for row in rows]
    return cells | {
        ci: [_interval(row) for row in rows],
        "n": [str(n) for n in table["n"]],
        f"Δ best top-1 vs baseline [{ci}]": [d for d, _ in differences],
        p_heading(correction): [p for _, p in differences],
        "smallest Δ seen": [_detectable(row) for row in rows],
        "status": list(table["status"]),
    }


def to_markdown(table: pd.DataFrame, keys: list[str], headline: bool = False) -> str:
    """The table as markdown (its cells as ``table_cells`` writes them)."""
    import pandas as pd

    cells = pd.DataFrame(table_cells(table, keys, headline))
    return cells.to_markdown(index=False, disable_numparse=True) + "\n"


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
    confidence = table.attrs["confidence"]
    ci = ci_heading(confidence)
    base = table.loc[table["baseline"], "label"].iloc[0]
    return (
        f"Best top-1 is the mean ± standard deviation over the n seeds that completed; "
        f"{ci} is its Student-t interval. Δ is each row's mean best top-1 minus the baseline's "
        f"(`{base}`), with its {ci} and two-sided p-value: paired by seed where both rows ran "
        f"the same seeds, Welch's t-test otherwise. {correction_text(table)} * marks p < "
        f"{1 - confidence:.3g}. With n=1 there is no interval. *Smallest Δ seen* is the "
        "difference that the row's seeds, with their spread and number, would just have "
        "shown as significant at the level the correction tests the row at: a row that is "
        "not significant may still differ by less than that, unseen.\n"
    )


def correction_text(table: pd.DataFrame) -> str:
    """How the p-values were adjusted, over how many rows."""
    correction, compared = table.attrs["correction"], table.attrs["compared"]
    if correction == "none":
        return f"The p-values are not adjusted for the {compared} rows compared."
    way = "Holm's step-down" if correction == "holm" else "Bonferroni's"
    return (
        f"The p-values shown are adjusted for the {compared} rows compared by {way} "
        f"correction (the raw ones are in comparison.csv, `p_value`)."
    )


def not_significant_text(table: pd.DataFrame) -> str:
    """What each row compared without a significant difference could not have shown."""
    lines = []
    for _, row in table[~table["baseline"] & ~table["significant"]].iterrows():
        if missing(row.get("detectable_diff")):
            continue
        said = f"- `{row['label']}`: not significant ({row['diff_best_top1']:+.2f}); "
        if abs(row["diff_best_top1"]) < row["detectable_diff"]:
            said += (
                f"a difference under {row['detectable_diff']:.2f} points could not have been "
                f"seen with {row['n']} seeds"
            )
        else:  # Holm's step-down stopped at a row before it
            said += (
                f"large enough at its own step (raw p {_p_value(row['p_value'])}), but Holm's "
                "correction stops at the first row that is not significant"
            )
        lines.append(said)
    if not lines:
        return ""
    heading = "What the rows without a significant difference could not show:"
    return heading + "\n\n" + "\n".join(lines) + "\n"


def notes_text(table: pd.DataFrame) -> str:
    notes = table.attrs.get("notes", [])
    if not notes:
        return ""
    return "**Read with care:**\n\n" + "\n".join(f"- {note}" for note in notes) + "\n"


def per_class_text(runs: pd.DataFrame, table: pd.DataFrame, most: int = 20) -> str:
    """Rows × classes: each row's top-1 per class (mean over its seeds), for up to ``most``
    classes (more are in per_class.csv, and this says so); classes without a test image are
    named."""
    import pandas as pd

    frame = per_class(runs, table)
    if frame.empty or not frame.shape[1]:
        return ""
    untested = [str(c) for c in frame.columns if frame[c].isna().all()]
    said = f"Classes with no test image, so no top-1: {', '.join(untested)}.\n" if untested else ""
    if frame.shape[1] > most:
        return (
            f"Top-1 % per class: {frame.shape[1]} classes, too many to show here; every row's "
            f"are in per_class.csv.\n{said}"
        )
    cells = frame.map(lambda v: "—" if pd.isna(v) else f"{v:.2f}")
    cells.insert(0, "row", [short(label) for label in frame.index])
    markdown = cells.to_markdown(index=False, disable_numparse=True)
    heading = "Top-1 % per class (at each run's best epoch, mean over the row's seeds):"
    return f"{heading}\n\n{markdown}\n" + (f"\n{said}" if said else "")
