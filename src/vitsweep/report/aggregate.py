"""From runs to rows: one row per configuration, its seeds combined, compared with a baseline.

Rows are named by the overrides that vary across the sweep (the seed left out: seeds are the
samples a row aggregates). What the table cannot be sure of is never dropped in silence: it is
listed in ``table.attrs["notes"]`` and printed with the table.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from vitsweep.config import override_key
from vitsweep.errors import ConfigError, a_few
from vitsweep.record.summary import DONE, FINISHED
from vitsweep.report.columns import columns
from vitsweep.settings import ReportSettings
from vitsweep.stats import adjust, compare, levels, mean_interval

if TYPE_CHECKING:  # pandas is imported where a table is made: a run stays light
    import pandas as pd

EVERY_JOB = "all jobs"  # the one row's name when nothing but the seed varies


def varying_overrides(runs: pd.DataFrame, grid: dict[str, Any] | None = None) -> list[str]:
    """Override keys whose value differs between jobs, in command-line order, and the keys
    the sweep's grid sweeps (so a partial sweep's rows are still named by them); never the
    seed."""
    keys = [c.removeprefix("override:") for c in runs.columns if c.startswith("override:")]
    swept = [override_key(o) for o in (grid or {}).get("overrides", []) if "," in o]
    swept += list((grid or {}).get("params", {}))
    varying = [k for k in keys if runs[f"override:{k}"].nunique(dropna=False) > 1]
    named = varying + [k for k in dict.fromkeys(swept) if k in keys and k not in varying]
    return [k for k in named if k != "seed"]


def label_runs(runs: pd.DataFrame, keys: list[str]) -> pd.Series:
    """Name each run by the choices that vary; with none, every run is one row."""
    import pandas as pd

    if not keys:
        return pd.Series(EVERY_JOB, index=runs.index)
    parts = [k + "=" + runs[f"override:{k}"].fillna("?").astype(str) for k in keys]
    return pd.concat(parts, axis=1).agg(" ".join, axis=1)


def _status(statuses: pd.Series) -> str:
    if statuses.nunique() == 1:
        return str(statuses.iloc[0])
    return f"{statuses.isin(DONE).sum()}/{len(statuses)} completed"


def _joined(values: pd.Series) -> str | None:
    return "; ".join(sorted({str(v) for v in values.dropna()})) or None


def mean_by_key(values: pd.Series) -> dict[str, float]:
    """Mappings (one per run) averaged key by key, in the first mapping's order; a key a run
    lacks, or holds as null, is averaged over the runs that have it."""
    import pandas as pd

    frame = pd.DataFrame([v for v in values if isinstance(v, dict)])
    return {str(k): float(v) for k, v in frame.mean(skipna=True).items() if pd.notna(v)}


def _worst(values: pd.Series, fmt: str) -> str | None:
    means = mean_by_key(values)
    if not means:
        return None
    name = min(means, key=means.get)
    return f"{name} {fmt.format(100 * means[name])}"


def _accuracy(group: pd.DataFrame, confidence: float) -> dict[str, Any]:
    """n, the interval of best top-1 and the per-seed values of a row's completed runs."""
    scored = group[group["status"].isin(FINISHED)].dropna(subset=["best_top1"])
    interval = mean_interval(list(scored["best_top1"]), confidence)
    seeds = scored["seed"].fillna(-1).astype(int)
    # Two runs of one seed in a row differ in something the table does not name: keep both,
    # keyed by run, so that nothing pairs them with another row's seeds.
    keys = seeds if seeds.is_unique else scored["run"]
    return {
        "n": interval.n,
        "best_top1_low": interval.low,
        "best_top1_high": interval.high,
        "per_seed": dict(zip(keys, scored["best_top1"])),
    }


def aggregate(runs: pd.DataFrame, keys: list[str], confidence: float) -> pd.DataFrame:
    """One row per configuration: the runs that differ only in seed, each ``Column`` combined
    as it declares (means and standard deviations over the runs that completed), with a
    t-interval of best top-1."""
    import pandas as pd

    labelled = runs.assign(label=label_runs(runs, keys))
    done = labelled[labelled["status"].isin(FINISHED)]  # a pruned trial shows what it reached
    groups = labelled.groupby("label", sort=False)
    table = groups.first()  # identity columns and sizes: the first run's
    table["status"] = groups["status"].agg(_status)
    for column in columns():
        if column.combine == "mean":
            values = done[[column.name]].apply(pd.to_numeric, errors="coerce")
            stats = values.groupby(done["label"], sort=False)[column.name].agg(["mean", "std"])
            table[column.name] = stats["mean"].reindex(table.index)
            table[f"{column.name}_std"] = stats["std"].reindex(table.index)
        elif column.combine == "each":
            table[column.name] = groups[column.name].agg(_joined)
        elif column.combine == "worst":
            worst = done.groupby("label", sort=False)[column.name].agg(_worst, fmt=column.fmt)
            table[column.name] = worst.reindex(table.index)
        else:  # the first run that has it (a failed run may lack its size)
            table[column.name] = groups[column.name].first()
    sure = pd.DataFrame([_accuracy(g, confidence) for _, g in groups], index=table.index)
    return table.join(sure).reset_index()


def per_class(runs: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """Each row's top-1 per class (%, mean over its completed seeds): rows × classes, every
    class named by a run (one without a test image: NaN)."""
    import pandas as pd

    labels = label_runs(runs, list(table.attrs.get("keys", [])))
    done = runs["status"].isin(DONE)
    means = {}
    for label, group in runs[done].groupby(labels[done], sort=False):
        seeds = pd.DataFrame([v for v in group["per_class_top1"] if isinstance(v, dict)])
        # a class with no test image has no top-1 (null): kept as a column, named by render
        means[label] = seeds.astype(float).mean(skipna=True).to_dict() if len(seeds) else {}
    rows = [means.get(label, {}) for label in table["label"]]
    return pd.DataFrame(rows, index=list(table["label"]), dtype=float).mul(100)


def summed_confusion(runs: pd.DataFrame, label: str, keys: list[str]) -> np.ndarray | None:
    """The confusion matrices of a row's completed seeds, added up."""
    done = runs[runs["status"].isin(DONE) & (label_runs(runs, keys) == label)]
    matrices = [np.array(m) for m in done["confusion"] if isinstance(m, list)]
    return np.sum(matrices, axis=0) if matrices else None


def notes_on(runs: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    """What a reader must know to trust the table, in words."""
    notes = list(runs.attrs.get("notes", []))
    empty = runs[runs["status"].isin(DONE) & (runs["status"] != "sized")]
    for run in empty[empty["best_top1"].isna()]["run"]:
        notes.append(
            f"{run} says completed but holds no test accuracy: left out of its row "
            "(rerun it with trainer.resume=true)"
        )
    labelled = runs.assign(label=label_runs(runs, list(table.attrs.get("keys", []))))
    for label, group in labelled[labelled["status"].isin(DONE)].groupby("label", sort=False):
        repeated = group["seed"][group["seed"].duplicated()].dropna().unique()
        if len(repeated):
            notes.append(
                f"row {label!r} holds {len(group)} runs with repeated seed(s) "
                f"{', '.join(map(str, repeated))}: they differ in something the "
                "table does not name; compared unpaired"
            )
    for _, run in runs[~runs["status"].isin(FINISHED)].iterrows():
        why = f": {run['error']}" if isinstance(run.get("error"), str) else ""
        notes.append(f"{run['run']} ({run['status']}){why}")
    precisions = sorted({str(p) for p in runs["precision"].dropna()})
    if len(precisions) > 1:
        notes.append(
            f"the runs were trained in different precisions ({', '.join(precisions)}): "
            "see the precision column before comparing rows"
        )
    return notes


def pick_baseline(labels: list[str], spec: int | str | None) -> int:
    """The baseline row's position: the first row, a 1-based row number (``#2``, or ``2`` where
    no row has the value 2), or the one row whose label has every ``key=value`` (or value)
    given, e.g. "attention=softmax embedding=patch"."""
    if spec is None or spec == "":
        return 0
    text = str(spec).strip()
    values = {part.split("=")[-1]: part for label in labels for part in label.split()}
    if text.isdigit() and text in values:  # both a row number and a value: say which
        raise ConfigError(
            f"report.baseline={spec} is both a row number and {values[text]}: "
            f"write '#{text}' for row {text}, or '{values[text]}'"
        )
    if text.lstrip("#").isdigit():
        if 1 <= int(text.lstrip("#")) <= len(labels):
            return int(text.lstrip("#")) - 1
        raise ConfigError(f"report.baseline={spec}: there are {len(labels)} rows")
    wanted = str(spec).replace(",", " ").split()
    matches = [
        i
        for i, label in enumerate(labels)
        if all(w in label.split() or w in [p.split("=")[-1] for p in label.split()] for w in wanted)
    ]
    if len(matches) != 1:
        found = "no row" if not matches else f"{len(matches)} rows"
        raise ConfigError(f"report.baseline={spec!r} matches {found}; rows: {'; '.join(labels)}")
    return matches[0]


def add_comparisons(table: pd.DataFrame, baseline: int, report: ReportSettings) -> pd.DataFrame:
    """Each row's difference in best top-1 against the baseline row, with its interval, its
    raw p-value (paired by seed where both ran the same seeds, Welch otherwise), the p-value
    adjusted for the number of rows compared (``report.correction``; the stars follow it) and
    the smallest difference its seeds could have shown at the level the correction tests it
    at."""
    reference = table["per_seed"].iloc[baseline]
    found = [compare(reference, per_seed, report.confidence) for per_seed in table["per_seed"]]
    raw = [math.nan if i == baseline else d.p for i, d in enumerate(found)]
    adjusted = adjust(raw, report.correction)
    compared = sum(not math.isnan(p) for p in raw)
    alpha = 1 - report.confidence
    tested_at = levels(raw, alpha, report.correction)
    columns = {
        "baseline": [i == baseline for i in range(len(table))],
        "diff_best_top1": [d.diff for d in found],
        "diff_low": [d.low for d in found],
        "diff_high": [d.high for d in found],
        "p_value": raw,
        **({adjusted_column(report.correction): adjusted} if report.correction != "none" else {}),
        "test": [d.test for d in found],
        "significant": [p < alpha for p in adjusted],
        "detectable_diff": [
            math.nan if math.isnan(a) else d.detectable(1 - a) for d, a in zip(found, tested_at)
        ],
    }
    table = table.assign(**columns)
    table.attrs |= {"correction": report.correction, "compared": compared}
    return table


def adjusted_column(correction: str) -> str:
    """The name of the column of p-values adjusted by ``correction`` (``p_holm``)."""
    return f"p_{correction}"


def shown_p(row: pd.Series, correction: str) -> float:
    """The p-value a row is judged by: adjusted, unless there is no correction."""
    return row["p_value"] if correction == "none" else row[adjusted_column(correction)]


def few_seeds(table: pd.DataFrame, fewest: int = 3) -> str | None:
    """A note naming the rows with fewer than ``fewest`` seeds, whose tests are weak."""
    few = table[(table["n"] > 0) & (table["n"] < fewest)]
    if few.empty:
        return None
    rows = "every row" if len(few) == len(table) else a_few(list(few["label"]), sep="; ")
    return (
        f"fewer than {fewest} seeds in {rows} (n={', '.join(map(str, sorted(set(few['n']))))}): "
        "an interval from so few is wide and a test weak, so 'not significant' says little; "
        "add seeds (seed=0,1,2) before reading a difference"
    )


def comparison_table(
    runs: pd.DataFrame, report: ReportSettings | None = None, keys: list[str] | None = None
) -> pd.DataFrame:
    """The sweep's table: one row per configuration (its seeds aggregated; ``keys`` name the
    rows, by default the overrides that vary), compared with the baseline row as ``report``
    says. A baseline that names no row (or several) is said in the notes, and the first row
    is used."""
    report = report or ReportSettings()
    keys = varying_overrides(runs) if keys is None else keys
    table = aggregate(runs, keys, report.confidence)
    table.attrs["keys"] = keys
    notes = notes_on(runs, table)
    try:
        position = pick_baseline(list(table["label"]), report.baseline)
    except ConfigError as err:
        notes.append(f"{err}; compared with the first row instead")
        position = 0
    table = add_comparisons(table, position, report)
    if note := few_seeds(table):
        notes.append(note)
    table.attrs |= {"keys": keys, "notes": notes, "confidence": report.confidence}
    return table
