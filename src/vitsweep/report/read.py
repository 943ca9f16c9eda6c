"""Reading a sweep's runs into one DataFrame: from the jobs' local run records, or from W&B.

Both sources become the same columns (``row_from_run``): who the run is (its directory or W&B
name, status, overrides, seed), then every ``Column`` of vitsweep.report.columns. The curves are
the per-epoch histories, one frame for all runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from vitsweep.config import parse_overrides
from vitsweep.errors import a_few
from vitsweep.files import lock_is_held
from vitsweep.record.summary import FINISHED
from vitsweep.report.columns import columns, is_number_or_none
from vitsweep.settings import check_sweep_name, compared_on_resume
from vitsweep.slurm import FATE, live_fate, merge_fate, read_fate
from vitsweep.sweep import read_sweep_record

if TYPE_CHECKING:  # pandas is imported where a table is made: a run stays light
    import pandas as pd


def sweep_name(sweep_dir: str | os.PathLike, runs: pd.DataFrame | None = None) -> str:
    """A sweep's name: the ``sweep_name`` its record (or its jobs) kept, else its directory's.
    A name that is not a single folder name is refused (it names a folder under results/)."""
    name = read_sweep_record(Path(sweep_dir)).get("name")
    if not name and runs is not None and "sweep_name" in runs:
        name = next(iter(runs["sweep_name"].dropna()), None)
    return check_sweep_name(name or Path(sweep_dir).resolve().name)


def row_from_run(
    config: Mapping[str, Any],
    summary: Mapping[str, Any],
    overrides: Iterable[str],
    run_id: str,
) -> dict[str, Any]:
    """One table row from what every run records, whichever source it came from. A value
    that cannot be what its column holds (a string where a number belongs, a broken
    confusion matrix) makes this row ``unreadable``, naming the value; the others stand."""
    overrides = list(overrides)
    identity = {
        "run": run_id,
        "status": summary.get("status", "missing"),
        "overrides": overrides,
        **{f"override:{k}": v for k, v in parse_overrides(overrides).items()},
        "model": config.get("choices", {}).get("model"),
        "data": config.get("data", {}).get("name"),
        "seed": config.get("seed"),
        "sweep_name": config.get("sweep_name"),
        "torch": summary.get("torch"),
        "cuda": summary.get("cuda"),
        "error": summary.get("error"),
        "classes": summary.get("classes"),
        "confusion": summary.get("confusion"),
        "per_class_top1": summary.get("per_class_top1"),
        "train_images": summary.get("train_images"),
        "data_fingerprint": summary.get("data_fingerprint"),
        "python": summary.get("python"),
        "settings": recipe_of(config),
    }
    row = identity | {c.name: c.value(config, summary) for c in columns()}
    damaged = [f"{c.name}={row[c.name]!r}" for c in columns() if not c.admits(row[c.name])]
    damaged += [f"{key}={row[key]!r}"[:80] for key, ok in shapes(row).items() if not ok]
    if damaged:
        for key in damaged:
            row[key.split("=")[0]] = None
        row["status"] = "unreadable"
        row["error"] = f"its record holds values that cannot be read: {', '.join(damaged)}"
    return row


RECIPE = ("trainer", "optim", "data")  # the blocks two sweeps' rows must share to be compared


def recipe_of(config: Mapping[str, Any]) -> dict[str, Any]:
    """A run's recipe: its trainer, optimiser and data settings, less what a resume may
    change (progress bars, data.root and the like)."""
    kept = compared_on_resume(dict(config))
    return {block: kept.get(block) for block in RECIPE}


def shapes(row: Mapping[str, Any]) -> dict[str, bool]:
    """Whether each structured value of a row has the shape it is read with (absent is fine)."""
    classes, confusion, per_class = row["classes"], row["confusion"], row["per_class_top1"]
    square = isinstance(confusion, list) and all(
        isinstance(r, list) and len(r) == len(confusion) and all(map(_count, r)) for r in confusion
    )
    return {
        "seed": row["seed"] is None or _count(row["seed"]),
        "classes": classes is None or (isinstance(classes, list) and all(map(_text, classes))),
        "confusion": confusion is None or square,
        "per_class_top1": per_class is None
        or (isinstance(per_class, Mapping) and all(map(_fraction, per_class.values()))),
        "train_images": row["train_images"] is None or _count(row["train_images"]),
        "status": _text(row["status"]),
        "data_fingerprint": row["data_fingerprint"] is None or _text(row["data_fingerprint"]),
    }


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _fraction(value: Any) -> bool:
    return value is None or (is_number_or_none(value) and 0 <= value <= 1)


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _read(path: Path, parse: Any) -> Any:
    """A record file's content, None when absent, or an exception when it is not readable."""
    if not path.exists():
        return None
    try:
        return parse(path.read_text())
    except Exception as err:
        return err


def job_dirs(sweep_dir: Path) -> list[Path]:
    """Every job's directory of a sweep: the folders right under it that hold a run record
    (Hydra puts job N in <sweep dir>/N), in job order. Deeper folders (a W&B run's files, an
    older run that happens to lie below) are not the sweep's jobs. A SLURM job that has not
    started (or was lost before it did) has only what SLURM says of it (``slurm.json``)."""
    names = ("config.yaml", "summary.json", FATE)
    found = {p.parent for name in names for p in sweep_dir.glob(f"*/{name}")}
    # numbers in numeric order, then other names: comparable keys whatever the names
    return sorted(found, key=lambda p: (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name))


def read_job(job: Path, run_id: str) -> dict[str, Any]:
    """One job's row. A summary that is absent shows as ``missing``, one that cannot be read
    as ``unreadable``, and one that still says ``running`` while no process holds the
    directory as ``stopped`` (killed, or its last writes failed). A job SLURM ended for good
    shows SLURM's status and reason (``vitsweep.slurm.merge_fate``)."""
    config = _read(job / "config.yaml", yaml.safe_load)
    summary = _read(job / "summary.json", json.loads)
    problems = [
        f"{name} cannot be read ({content if isinstance(content, Exception) else 'not a mapping'})"
        for name, content in (("config.yaml", config), ("summary.json", summary))
        if content is not None and not isinstance(content, dict)
    ]
    if config is None and summary is not None:  # what the run was is unknown: no row names it
        problems.append("config.yaml is missing")
    config = config if isinstance(config, dict) else {}
    summary = summary if isinstance(summary, dict) else {}
    if problems:
        summary = {"status": "unreadable", "error": "; ".join(problems)}
    elif summary.get("status") == "running" and not lock_is_held(job):
        stale = "its record says running, but no process holds it (killed, or a write failed)"
        summary = summary | {"status": "stopped", "error": stale}
    fate = read_fate(job)
    if fate is not None and not problems:
        if summary.get("status") not in FINISHED:  # one not over when it was written: as now
            fate = live_fate(fate)
        summary = merge_fate(summary, fate)
        config = config or never_started(fate.get("overrides"))
    overrides = config.get("overrides")
    return row_from_run(config, summary, overrides if isinstance(overrides, list) else [], run_id)


def search_worker(job: Path) -> dict[str, Any] | None:
    """What SLURM says of a search's worker job (None: the directory is no worker's; a
    worker's holds no record of its own, its trials are the rows)."""
    fate = read_fate(job)
    overrides = fate.get("overrides") if fate else None
    if not isinstance(overrides, list) or not any(str(o).startswith("search=") for o in overrides):
        return None
    return live_fate(fate)


def never_started(overrides: Any) -> dict[str, Any]:
    """What is known of a job lost before it started: its overrides (and its seed among them)."""
    overrides = [str(o) for o in overrides] if isinstance(overrides, list) else []
    seed = parse_overrides(overrides).get("seed")
    return {"overrides": overrides} | ({"seed": int(seed)} if str(seed).isdigit() else {})


def read_curve(path: Path, run_id: str) -> pd.DataFrame | str:
    """A job's history.csv as numbers, or why it cannot be read (a truncated or damaged file
    gives no curve, and the table says so)."""
    import pandas as pd

    if not path.exists():
        return pd.DataFrame()
    try:
        history = pd.read_csv(path)
        if "epoch" not in history or history.empty:
            raise ValueError("no epoch column")
        history = history.apply(pd.to_numeric, errors="coerce").dropna(subset=["epoch"])
    except Exception as err:
        return f"{run_id}: history.csv cannot be read ({type(err).__name__}); no curve drawn"
    return history.assign(run=run_id)


def load_sweep(sweep_dir: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows and per-epoch curves of every job under ``sweep_dir``. What could not be read is
    listed in ``runs.attrs["notes"]``."""
    import pandas as pd

    sweep_dir = Path(sweep_dir)
    rows, curves, notes, seen = [], [], [], {}
    for job in job_dirs(sweep_dir):
        run_id = str(job.relative_to(sweep_dir))
        if (worker := search_worker(job)) is not None:  # its trials are the rows
            if worker.get("state") != "COMPLETED":
                notes.append(f"search worker {run_id}: {merge_fate({}, worker)['error']}")
            continue
        record = record_of(job)
        if record is not None and (same := seen.setdefault(record, run_id)) != run_id:
            notes.append(f"{run_id} is a copy of {same} (the same record): counted once")
            continue
        rows.append(read_job(job, run_id))
        curve = read_curve(job / "history.csv", run_id)
        if isinstance(curve, str):
            notes.append(curve)
        elif len(curve):
            curves.append(curve)
    runs = pd.DataFrame(rows)
    runs.attrs["notes"] = notes + missing_trials(sweep_dir, [Path(r) for r in runs.get("run", [])])
    return runs, pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()


def record_of(job: Path) -> bytes | None:
    """A trained job's record as bytes (its config and its summary, which holds the seconds
    each epoch took): two directories that hold the same bytes are one run copied, never two
    seeds. None for a record without measured times, which could be two runs alike."""
    try:
        summary = (job / "summary.json").read_bytes()
        config = (job / "config.yaml").read_bytes() if (job / "config.yaml").is_file() else b""
    except OSError:
        return None
    return config + b"\0" + summary if b'"train_s_per_epoch"' in summary else None


def missing_trials(sweep_dir: Path, runs: list[Path]) -> list[str]:
    """A search's trials whose records are gone (``trial_<n>`` folders missing below the
    highest one), in a note: a table of the others would otherwise pass for the search."""
    numbers = {
        int(r.name[6:]) for r in runs if r.name.startswith("trial_") and r.name[6:].isdigit()
    }
    gone = sorted(set(range(max(numbers, default=-1) + 1)) - numbers)
    if not gone:
        return []
    shown = a_few((f"trial_{n}" for n in gone), most=5)
    return [f"{len(gone)} of the search's trials have no record here ({shown}): not in the table"]


def load_wandb(path: str, group: str, api: Any = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows and curves of every W&B run in ``group`` of ``path`` ("entity/project")."""
    if api is None:
        import wandb

        api = wandb.Api()
    runs = list(api.runs(path, filters={"group": group}))
    return frame_from_wandb_runs(runs)


def frame_from_wandb_runs(runs: Iterable[Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The adapter from W&B run objects (config, summary, tags, history) to the table's
    schema. The summary holds the run record's summary; the tags hold the job's overrides;
    per-epoch metrics are logged under the history's own names."""
    import pandas as pd

    rows, curves = [], []
    for run in runs:
        summary = {k: v for k, v in dict(run.summary).items() if not k.startswith("_")}
        if summary.get("status") in (None, "running") and run.state in ("failed", "crashed"):
            summary["status"] = "failed"
        rows.append(row_from_run(dict(run.config), summary, run.tags, run.name))
        history = run.history(keys=["epoch", "test_acc", "train_s"], pandas=True)
        if len(history):
            curves.append(history.assign(run=run.name))
    runs_frame = pd.DataFrame(rows)
    runs_frame.attrs["notes"] = []
    return runs_frame, pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()
