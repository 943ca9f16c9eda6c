"""Sweeps compared without training: ``report.py --compare results/A results/B`` puts the rows
of both into one results folder (the same table, plots, manifest and LaTeX), each row naming
the sweep it came from.

The manifests decide what may be compared: the data (its fingerprints) and the recipe the
rows do not vary (trainer, optimiser, data settings) must agree, or nothing is written. A row
in both sweeps (the same overrides) is one row only when its seeds are distinct and its runs
agree in everything else: more seeds of one configuration. The harness commit, versions,
device and precision may differ, and the notes say so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from vitsweep.errors import ConfigError
from vitsweep.record.resume import differences
from vitsweep.record.summary import FINISHED
from vitsweep.report.aggregate import label_runs, varying_overrides
from vitsweep.report.columns import from_config
from vitsweep.report.manifest import without_keys
from vitsweep.report.pipeline import write_report
from vitsweep.report.read import job_dirs, load_sweep
from vitsweep.settings import (
    ReportSettings,
    check_sweep_name,
    compared_on_resume,
    may_differ_on_resume,
)

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class Part:
    """One sweep to compare: its results folder, manifest and the records of its runs."""

    results: Path
    manifest: dict[str, Any]
    runs: pd.DataFrame
    curves: pd.DataFrame

    @property
    def name(self) -> str:
        return self.results.name  # the sweep's name, unless report.py --name chose another


def read_part(results: Path) -> Part:
    """A results folder's manifest and its sweep's run records (which must be at hand)."""
    try:
        found = json.loads((results / "manifest.json").read_text())
    except (OSError, ValueError):
        raise ConfigError(
            f"{results} holds no readable manifest.json: give a results folder that a sweep "
            "or src/report.py wrote"
        ) from None
    source = Path(str(found.get("source")))
    if not source.is_dir() or not job_dirs(source):
        raise ConfigError(
            f"the runs of {results} are not at hand ({source}): --compare reads their "
            "records, so the sweep directory must be there"
        )
    if "recipe" not in found:
        raise ConfigError(
            f"{results}/manifest.json is from an older vitsweep (no recipe); rebuild it: "
            f"python src/report.py {source}"
        )
    runs, curves = load_sweep(source)
    sweep = results.name
    runs = runs.assign(run=sweep + "/" + runs["run"].astype(str), sweep_name=sweep)
    if len(curves):
        curves = curves.assign(run=sweep + "/" + curves["run"].astype(str))
    return Part(results, found, runs, curves)


def check_same_data_and_recipe(parts: list[Part], keys: list[str]) -> None:
    """Refuse, naming the first field that differs, sweeps on other data (runs with the same
    data settings and another fingerprint) or another recipe (the ``keys`` the rows vary left
    out)."""
    first, *others = parts
    for other in others:
        mine, theirs = fingerprints(first), fingerprints(other)
        for data in mine.keys() & theirs.keys():
            if mine[data] != theirs[data]:
                raise ConfigError(
                    f"{first.results} and {other.results} were trained on other data (data "
                    f"fingerprints {', '.join(sorted(mine[data]))} and "
                    f"{', '.join(sorted(theirs[data]))}): not comparable"
                )
    varied = [*keys, "seed"]
    for other in others:
        a, b = (without_keys(p.manifest["recipe"] or {}, varied) for p in (first, other))
        if changed := differences(a, b):
            raise ConfigError(
                f"{first.results} and {other.results} differ in {changed[0]}: rows trained "
                "with another recipe are not comparable"
            )


def fingerprints(part: Part) -> dict[str, set[str]]:
    """A sweep's data fingerprints by the data settings that gave them (a sweep over
    ``data.subset`` has one per subset)."""
    found: dict[str, set[str]] = {}
    for recipe, fingerprint in zip(part.runs["settings"], part.runs["data_fingerprint"]):
        if isinstance(recipe, dict) and isinstance(fingerprint, str):
            data = json.dumps(recipe.get("data"), sort_keys=True, default=str)
            found.setdefault(data, set()).add(fingerprint)
    return found


def filled_overrides(runs: pd.DataFrame) -> pd.DataFrame:
    """Each run's value for every override key some run was given, read from its config where
    it was not given (a sweep that did not vary ``embedding`` ran its default); a job lost
    before it recorded a config takes the value its sweep's other runs agree on."""
    runs = runs.copy()
    for column in [c for c in runs.columns if c.startswith("override:")]:
        key = column.removeprefix("override:").lstrip("+~")
        lacking = runs[column].isna()
        read = [from_config(*path_of(key, c))(c, {}) for c in runs.loc[lacking, "config"]]
        runs.loc[lacking, column] = [None if v is None else str(v) for v in read]  # as typed
        for sweep, group in runs[runs[column].isna()].groupby("sweep_name"):
            known = runs.loc[(runs["sweep_name"] == sweep) & runs[column].notna(), column]
            if known.nunique() == 1:
                runs.loc[group.index, column] = known.iloc[0]
    return runs


def path_of(key: str, config: dict[str, Any]) -> tuple[str, ...]:
    """Where an override key's value is in a recorded config: a group's choice, or a field."""
    return ("choices", key) if key in (config.get("choices") or {}) else tuple(key.split("."))


def row_keys(runs: pd.DataFrame) -> list[str]:
    """The overrides that name the rows: those that vary and change what was trained (a
    ``sweep_name`` or ``trainer.progress`` given to one sweep names no row)."""
    return [k for k in varying_overrides(runs) if not may_differ_on_resume(k)]


def check_shared_rows(runs: pd.DataFrame, keys: list[str]) -> None:
    """A row in more than one sweep: refused when a seed is in both, or when its runs differ
    in anything but the seed."""
    labelled = runs.assign(label=label_runs(runs, keys))
    for label, group in labelled.groupby("label", sort=False):
        by_sweep = dict(list(group.groupby("sweep_name", sort=False)))
        if len(by_sweep) < 2:
            continue
        (a, first), *rest = by_sweep.items()
        for b, other in rest:
            # a seed that failed in one sweep may be run again in the other
            done = (set(g.loc[g["status"].isin(FINISHED), "seed"].dropna()) for g in (first, other))
            both = sorted(set.intersection(*done))
            if both:
                raise ConfigError(
                    f"row {label!r} ran seed {', '.join(map(str, map(int, both)))} in both "
                    f"{a} and {b}: one row only takes distinct seeds"
                )
            # the first run that recorded its config (a job lost before it started has none)
            one, two = (_compared(next((c for c in g["config"] if c), {})) for g in (first, other))
            if changed := differences(one, two):
                raise ConfigError(
                    f"row {label!r} is in {a} and {b} but its runs differ in {changed[0]}: "
                    "not the same configuration"
                )


def _compared(config: dict[str, Any]) -> dict[str, Any]:
    kept = compared_on_resume(config)
    return {k: v for k, v in kept.items() if k not in ("seed", "overrides")}


def notes_on_parts(parts: list[Part]) -> list[str]:
    """What may differ between compared sweeps, said."""
    notes = []
    for what, read in (
        ("harness commit", lambda m: (m.get("harness") or {}).get("commit")),
        ("device", lambda m: ", ".join(m.get("device") or [])),
        ("versions", lambda m: json.dumps(m.get("versions"), sort_keys=True)),
    ):
        seen = {p.name: read(p.manifest) for p in parts}
        if len(set(map(str, seen.values()))) > 1:
            listed = "; ".join(f"{name}: {value}" for name, value in seen.items())
            notes.append(f"the sweeps compared differ in {what} ({listed})")
    return notes


def with_configs(part: Part) -> pd.DataFrame:
    """A part's runs with each run's recorded config (for the checks between sweeps)."""
    source = Path(str(part.manifest["source"]))
    configs = []
    for run in part.runs["run"]:
        path = source / str(run).split("/", 1)[1] / "config.yaml"
        loaded = yaml.safe_load(path.read_text()) if path.is_file() else None
        configs.append(loaded if isinstance(loaded, dict) else {})
    return part.runs.assign(config=configs)


def compare_sweeps(
    folders: list[Path], results_root: Path, name: str | None, report: ReportSettings
) -> tuple[pd.DataFrame, Path]:
    """One results folder of the rows of ``folders``' sweeps (``name``, by default their names
    joined with ``+``); returns its table and where it is."""
    import pandas as pd

    if len(folders) < 2 or len({f.resolve() for f in folders}) < len(folders):
        raise ConfigError("--compare takes two or more different results folders")
    if len({f.name for f in folders}) < len(folders):
        raise ConfigError(
            "--compare: two results folders have one name, and a row names its sweep by "
            "it; rebuild one under another (src/report.py SWEEP_DIR --name NAME)"
        )
    parts = [read_part(folder) for folder in folders]
    runs = filled_overrides(pd.concat([with_configs(p) for p in parts], ignore_index=True))
    keys = row_keys(runs)
    unnamed = [f"override:{k}" for k in varying_overrides(runs) if k not in keys]
    runs = runs.drop(columns=unnamed)  # they changed nothing trained: no row is named by them
    check_same_data_and_recipe(parts, keys)
    check_shared_rows(runs, keys)
    name = check_sweep_name(name or "+".join(p.name for p in parts))
    drawn = [p.curves for p in parts if len(p.curves)]
    curves = pd.concat(drawn, ignore_index=True) if drawn else pd.DataFrame()
    runs.attrs["notes"] = notes_on_parts(parts)
    sources = " + ".join(str(p.results) for p in parts)
    sweep = {
        "name": name,
        "command": "python src/report.py --compare " + " ".join(map(str, folders)),
        "harness": parts[0].manifest.get("harness"),
        "commit": (parts[0].manifest.get("harness") or {}).get("commit"),
    }
    out_dir = results_root / name
    table = write_report(runs.drop(columns="config"), curves, out_dir, sources, report, sweep)
    return table, out_dir
