"""Re-running a table: rows of a sweep's results folder, trained again with their recorded
overrides as a new sweep named after the folder reproduced (``<folder>-reproduced``, or
``name``), and a verdict per row.

    reproduce(Path("results/fmnist_ablation"), rows=[1], seeds=None)

The verdicts (``reproduction.md``): ``identical`` when every seed's best top-1 is the same number
(the CPU path is deterministic on one commit, device and data), else ``inside`` or ``outside``
the original row's interval, naming the manifest fields that differ (commit, versions, device,
data). A verdict compares like with like: only seeds the row had, each once, whose original
run completed, against reruns that trained the same epochs.

Refused in one line before anything is claimed or trained: a manifest that is not whole, a
commit not in this repository, rows or seeds repeated or not the row's, a seed whose original
run did not complete (a pruned trial, a failed run), a row that no longer composes or builds,
data that no longer match, and a reproduction whose directory or results folder already holds
an earlier one (never overwritten: ``--resume`` finishes a stopped one, ``--name`` starts
another).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitsweep.config import compose_job, override_key
from vitsweep.data import fingerprint, load_splits
from vitsweep.errors import ConfigError, first_line
from vitsweep.files import write_atomic
from vitsweep.job import JobInfo, check, run_job
from vitsweep.report.pipeline import write_report
from vitsweep.report.read import load_sweep
from vitsweep.settings import DataSettings, check_sweep_name
from vitsweep.stats import mean_interval
from vitsweep.sweep import (
    RECORD,
    claim_sweep,
    commit_exists,
    git_commit,
    harness_state,
    holds_jobs,
    read_sweep_record,
)

if TYPE_CHECKING:  # pandas is imported where a table is made: a run stays light
    import pandas as pd

ROOT = Path(__file__).resolve().parents[3]
NOT_REPEATED = ("seed", "sweep_name", "trainer.resume")  # set by the reproduction itself
NUMBER = (int, float, type(None))
ROW_FIELDS = {  # what a verdict reads of each manifest row, and the kinds it must be
    "label": (str,),
    "overrides": (list,),
    "seeds": (list,),
    "runs": (list,),
    "best_top1": (dict,),
    "mean": NUMBER,
    "low": NUMBER,
    "high": NUMBER,
    "n": (int,),
}
COMPARED = "completed"  # the only way of ending whose best top-1 a rerun is compared with
log = logging.getLogger(__name__)


def read_manifest(results_dir: Path) -> dict[str, Any]:
    path = Path(results_dir) / "manifest.json"
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        raise ConfigError(
            f"{path} cannot be read: reproduce a results folder that a sweep "
            "wrote (src/report.py writes its manifest)"
        ) from None
    if not isinstance(found, dict) or not isinstance(found.get("rows"), list):
        raise ConfigError(f"{path} is not a vitsweep manifest")
    for number, row in enumerate(found["rows"], 1):
        if not isinstance(row, dict):
            raise ConfigError(f"{path}: row {number} is not a mapping; {rebuild(found)}")
        for field, kinds in ROW_FIELDS.items():
            value = row.get(field)
            if field not in row or isinstance(value, bool) or not isinstance(value, kinds):
                raise ConfigError(
                    f"{path}: row {number} has no valid {field!r} "
                    f"({'missing' if field not in row else repr(value)}); {rebuild(found)}"
                )
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in row["seeds"]):
            raise ConfigError(
                f"{path}: row {number}'s seeds are not whole numbers; {rebuild(found)}"
            )
    return found


def rebuild(found: dict[str, Any]) -> str:
    """How to write a manifest again, from the sweep it came from."""
    source = found.get("source")
    return (
        f"rebuild it: python src/report.py {source}" if source else "rebuild it with src/report.py"
    )


def row_key(overrides: list[str]) -> tuple[str, ...]:
    """A row's identity: its overrides, less what every reproduction sets anew."""
    kept = [o for o in overrides if override_key(o) not in NOT_REPEATED]
    return tuple(sorted(kept))


def plan(
    found: dict[str, Any],
    rows: list[int] | None,
    seeds: list[int] | None,
    results_dir: Path | None = None,
) -> list[dict]:
    """The rows to rerun (1-based numbers; all by default), each with the seeds to run and
    how each of those seeds' original runs ended. Refused: a row or seed given twice, a row
    the table lacks, a seed the row never had, and a seed whose original run did not complete
    (like is compared with like)."""
    total = len(found["rows"])
    for flag, given in (("--rows", rows), ("--seeds", seeds)):
        if given is not None and not given:
            raise ConfigError(f"{flag}: no numbers given; leave it out for all of them")
        twice = [x for i, x in enumerate(given or []) if x in (given or [])[:i]]
        if twice:
            raise ConfigError(
                f"{flag} {','.join(map(str, given))}: {twice[0]} is given twice; a reproduction "
                "runs each row and seed once"
            )
    numbers = rows or list(range(1, total + 1))
    bad = [n for n in numbers if not 1 <= n <= total]
    if bad:
        raise ConfigError(f"--rows {bad[0]}: the table has rows 1 to {total}")
    return [plan_row(found, number, seeds, results_dir) for number in numbers]


def plan_row(
    found: dict[str, Any], number: int, seeds: list[int] | None, results_dir: Path | None
) -> dict[str, Any]:
    """One row to rerun, with the seeds to run: each one the row had, and whose original run
    completed with a best top-1 in the manifest."""
    row = found["rows"][number - 1] | {"number": number}
    named = f"row {number} ({row['label']})"
    if len(row["runs"]) != len(row["seeds"]):
        raise ConfigError(
            f"{named}: its {len(row['runs'])} runs have {len(row['seeds'])} seeds (a seed "
            "ran twice, or a run has none): its seeds cannot be told apart; reproduce other "
            "rows (--rows)"
        )
    unknown = [s for s in seeds or [] if s not in row["seeds"]]
    if unknown:
        raise ConfigError(
            f"--seeds {unknown[0]}: {named} has seeds {', '.join(map(str, row['seeds']))} "
            "only; a reproduction reruns the seeds a row had"
        )
    run_seeds = seeds or row["seeds"]
    status, epochs = ended(row, results_dir, found)
    for seed in run_seeds:
        how = status.get(str(seed), "without a result")
        if how == COMPARED and not isinstance(row["best_top1"].get(str(seed)), int | float):
            how = "without a best top-1 in the manifest"
        if how != COMPARED:
            done = [s for s in row["seeds"] if status.get(str(s)) == COMPARED]
            instead = f"--seeds {','.join(map(str, done))}" if done else "other --rows"
            raise ConfigError(
                f"{named}: seed {seed}'s original run ended {how}, not completed, so a "
                f"rerun of all its epochs cannot be compared with it; choose {instead}"
            )
    return row | {"run_seeds": run_seeds, "status": status, "epochs": epochs}


def ended(row: dict[str, Any], results_dir: Path | None, found: dict) -> tuple[dict, dict]:
    """How each of a row's seeds ended in the original (status and epochs trained, keyed by
    seed). A manifest written before it recorded them: the row's status and epochs in the
    folder's comparison.csv, where it says every seed completed; else the row is refused."""
    if isinstance(row.get("status"), dict):
        epochs = row.get("epochs") if isinstance(row.get("epochs"), dict) else {}
        return {str(k): str(v) for k, v in row["status"].items()}, epochs
    table = _read_table(results_dir)
    match = table[table["label"] == row["label"]] if table is not None else []
    status = match["status"].iloc[0] if len(match) == 1 else None
    if status != COMPARED:
        said = f"its comparison.csv says {status}" if status else "no comparison.csv says"
        raise ConfigError(
            f"row {row['number']} ({row['label']}): the manifest does not record how each seed "
            f"ended and {said}, not completed; {rebuild(found)}"
        )
    epochs = match["epochs_done"].iloc[0]
    kept = None if epochs != epochs else int(epochs)  # NaN: not recorded
    scored = [str(s) for s in row["seeds"] if str(s) in row["best_top1"]]
    return {s: COMPARED for s in scored}, {s: kept for s in scored}


def _read_table(results_dir: Path | None) -> Any:
    import pandas as pd

    try:
        table = pd.read_csv(Path(results_dir) / "comparison.csv")
    except Exception:
        return None
    return table if {"label", "status", "epochs_done"} <= set(table.columns) else None


def compose_row(row: dict[str, Any], name: str = "check") -> tuple[dict[str, Any], dict[str, str]]:
    """A row's config as its first job would run (plain) and its choices; one that no longer
    composes (an option renamed since) or no longer builds (a field gone) is one ConfigError."""
    seed = (row.get("run_seeds") or row["seeds"] or [0])[0]
    try:
        config, choices = compose_job(
            [*row_key(row["overrides"]), f"seed={seed}", f"sweep_name={name}"]
        )
    except Exception as err:
        raise ConfigError(
            f"row {row['number']}: its overrides no longer compose ({first_line(err)})"
        ) from None
    try:
        check(config)
    except Exception as err:
        raise ConfigError(
            f"row {row['number']}: it no longer builds here ({first_line(err)})"
        ) from None
    return config, choices


def check_data(row: dict[str, Any], config: dict[str, Any]) -> None:
    """The data this row would load here is the data it was trained on (its fingerprint)."""
    if not row.get("data_fingerprint"):
        return
    try:
        found = fingerprint(*load_splits(DataSettings(**config["data"])))
    except Exception as err:  # not here, or not readable: one line, before anything is claimed
        cause = err.__cause__ if isinstance(err.__cause__, ConfigError) else err
        raise ConfigError(
            f"row {row['number']}: its data cannot be loaded here ({first_line(cause)})"
        ) from None
    if found not in row["data_fingerprint"]:
        raise ConfigError(
            f"row {row['number']}: its data's fingerprint here is {found}, the "
            f"manifest's {', '.join(row['data_fingerprint'])}: not the data it was "
            "trained on"
        )


def reproduction_name(results_dir: Path, name: str | None) -> str:
    """The reproduction's sweep name: ``name``, else the folder reproduced (never the sweep
    recorded inside it: a copied folder has its own reproduction) with ``-reproduced``."""
    folder = Path(results_dir).resolve().name
    return check_sweep_name(name if name else f"{folder}-reproduced")


def check_free(sweep_dir: Path, out_dir: Path, grid: dict[str, Any], resume: bool) -> None:
    """An earlier reproduction is never overwritten or mixed with this one: without
    ``resume`` its directory and results folder must be free; with it, the directory must hold
    this very reproduction (same folder, rows and seeds), and the results folder be its own."""
    earlier = read_sweep_record(sweep_dir) if (sweep_dir / RECORD).exists() else None
    again = "--resume finishes it if it was stopped, --name NAME starts another"
    if not resume:
        if earlier is not None or holds_jobs(sweep_dir):
            what = (
                "this reproduction"
                if (earlier or {}).get("grid") == grid
                else "an earlier reproduction"
            )
            raise ConfigError(f"{sweep_dir} holds {what} already; {again}")
        if out_dir.exists() and any(out_dir.iterdir()):
            raise ConfigError(
                f"{out_dir} holds an earlier reproduction's results, never overwritten; "
                "--name NAME starts another"
            )
        return
    if earlier is None:
        raise ConfigError(
            f"--resume: {sweep_dir} holds no reproduction to finish; leave out --resume to start "
            "one (--name NAME if its results folder is taken)"
        )
    if earlier.get("grid") != grid:
        was = earlier.get("grid") or {}
        rows = ", ".join(
            f"{n} (seeds {','.join(map(str, s))})"
            for n, s in zip(was.get("rows") or [], was.get("seeds") or [])
        )
        raise ConfigError(
            f"--resume: {sweep_dir} holds the reproduction of {was.get('reproduces')}, rows "
            f"{rows or '?'}; resume it with those --rows and --seeds, or --name NAME starts "
            "another"
        )
    source = _source_of(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and source != sweep_dir.resolve():
        raise ConfigError(
            f"{out_dir} holds the results of another sweep ({source}), never overwritten; "
            "--name NAME starts another"
        )


def _source_of(out_dir: Path) -> Path | None:
    try:
        return Path(str(json.loads((out_dir / "manifest.json").read_text())["source"])).resolve()
    except Exception:
        return None


def run_rows(chosen: list[dict], sweep_dir: Path, name: str, resume: bool) -> None:
    """Each row's seeds as jobs of one sweep, through the same build and train as every run."""
    jobs = [
        [*row_key(row["overrides"]), f"seed={seed}", f"sweep_name={name}"]
        + (["trainer.resume=true"] if resume else [])
        for row in chosen
        for seed in row["run_seeds"]
    ]
    for num, overrides in enumerate(jobs):
        log.info("job %d of %d: %s", num + 1, len(jobs), " ".join(overrides))
        config, choices = compose_job(overrides)
        job = JobInfo(
            run_dir=sweep_dir / str(num),
            multirun=True,
            choices=choices,
            overrides=overrides,
            name=",".join(overrides),
            sweep_name=name,
            num=num,
        )
        run_job(config, job)


def judge(row: dict[str, Any], again: dict[str, tuple[float, int | None]]) -> str:
    """The verdict on a row: its reruns that completed, against the original seeds' best
    top-1 (each of which completed), only where each trained the epochs its original did."""
    original = {str(k): v for k, v in row["best_top1"].items()}
    if not again:
        return "no result: no rerun completed"
    epochs = row.get("epochs") or {}
    unlike = [
        f"seed {s} trained {e} epochs, its original {epochs[s]}"
        for s, (_, e) in again.items()
        if epochs.get(s) is not None and e != epochs[s]
    ]
    if unlike:
        return f"not comparable: {'; '.join(unlike)}"
    lost = [str(s) for s in row["run_seeds"] if str(s) not in again]
    if not lost and all(original.get(s) == v for s, (v, _) in again.items()):
        return "identical"
    mean = sum(v for v, _ in again.values()) / len(again)
    if row["n"] < 2 or row["low"] is None or row["high"] is None:
        verdict = "no interval to test (n=1)"
    else:
        verdict = "inside" if row["low"] <= mean <= row["high"] else "outside"
    return verdict + (f" (seeds {', '.join(lost)} did not complete again)" if lost else "")


def what_differs(
    before: dict[str, Any], after: dict[str, Any], chosen: list[dict] | None = None
) -> list[str]:
    """The manifest fields that differ between the original sweep and its reproduction; the
    data compared are those of the rows reproduced (another row's data set is no difference)."""
    if chosen and all(r.get("data_fingerprint") for r in chosen):
        before = before | {"data": sorted({f for r in chosen for f in r["data_fingerprint"]})}
    fields = {
        "commit": lambda m: git_commit(m.get("harness") or {}),
        "diff": lambda m: (m.get("harness") or {}).get("diff_sha256"),
        "untracked files": lambda m: (m.get("harness") or {}).get("untracked") or None,
        **{v: (lambda m, v=v: m.get("versions", {}).get(v)) for v in ("python", "torch", "cuda")},
        "device": lambda m: m.get("device"),
        "data": lambda m: m.get("data"),
    }
    return [
        f"{name} ({read(before)} → {read(after)})"
        for name, read in fields.items()
        if read(before) != read(after)
    ]


def per_row_results(
    chosen: list[dict], runs: pd.DataFrame
) -> list[dict[str, tuple[float, int | None]]]:
    """Each chosen row's new best top-1 and epochs trained by seed, from its reruns that
    completed (matched by the overrides its runs recorded), only the seeds it asked for."""
    keys = runs["overrides"].map(row_key)
    done = runs["status"].isin((COMPARED,)) & runs["best_top1"].notna()
    results = []
    for row in chosen:
        wanted = {str(s) for s in row["run_seeds"]}
        mine = runs[done & (keys == row_key(row["overrides"]))]
        results.append(
            {
                str(int(r["seed"])): (float(r["best_top1"]), _epochs(r.get("epochs_done")))
                for _, r in mine.iterrows()
                if str(int(r["seed"])) in wanted
            }
        )
    return results


def _epochs(value: Any) -> int | None:
    return None if value is None or value != value else int(value)


def interval(mean: Any, low: Any, high: Any, n: int) -> str:
    import pandas as pd

    if mean is None or pd.isna(mean):
        return "—"
    return f"{mean:.2f} [{low:.2f}, {high:.2f}] (n={n})" if n >= 2 else f"{mean:.2f} (n={n})"


def reproduction_text(found: dict, chosen: list[dict], results: list[dict], after: dict) -> str:
    """reproduction.md: per row, the original and reproduced best top-1, and the verdict."""
    import pandas as pd

    lines = []
    for row, again in zip(chosen, results):
        new = mean_interval([v for v, _ in again.values()], found.get("confidence") or 0.95)
        per_seed = ", ".join(
            f"{s}: {row['best_top1'][s]:.2f} → {v:.2f}" for s, (v, _) in again.items()
        )
        lines.append(
            {
                "row": str(row["number"]),
                "configuration": row["label"],
                "original best top-1 %": interval(row["mean"], row["low"], row["high"], row["n"]),
                "reproduced": interval(new.mean, new.low, new.high, new.n),
                "per seed (original → reproduced)": per_seed or "—",
                "verdict": judge(row, again),
            }
        )
    table = pd.DataFrame(lines).to_markdown(index=False, disable_numparse=True)
    differs = what_differs(found, after, chosen)
    said = "; ".join(differs) if differs else "nothing: the same commit, versions, device and data"
    return (
        f"# Reproduction of {found.get('sweep')}\n\nOriginal: `{found.get('command')}`\n\n"
        f"{table}\n\nWhat differs from the original sweep: {said}.\n\n`identical`: every "
        "seed's best top-1 is the same number. `inside` / `outside`: the reproduced mean "
        "against the original row's interval. Only seeds whose original run completed are "
        "rerun; `not comparable`: a rerun trained other epochs than its original.\n"
    )


def check_commit(results_dir: Path, found: dict[str, Any]) -> None:
    """The commit that made the table is in this repository (else nothing can say what
    differs)."""
    commit = (found.get("harness") or {}).get("commit")
    if not commit or not commit_exists(ROOT, commit):
        raise ConfigError(
            f"{results_dir}: its harness commit {commit} is not in this repository; "
            "fetch it first, or reproduce in a clone that has it"
        )


def reproduce(
    results_dir: Path,
    rows: list[int] | None = None,
    seeds: list[int] | None = None,
    results_root: Path = Path("results"),
    resume: bool = False,
    name: str | None = None,
) -> Path:
    """Rerun ``rows`` of ``results_dir`` (its manifest.json) as the sweep ``name`` (default
    ``<folder>-reproduced``), then write its table and reproduction.md; returns that folder.
    Refused in one line (a ConfigError) before anything is claimed or trains when it cannot be
    honest."""
    results_dir = Path(results_dir)
    found = read_manifest(results_dir)
    check_commit(results_dir, found)
    chosen = plan(found, rows, seeds, results_dir)
    name = reproduction_name(results_dir, name)
    configs = [compose_row(row, name)[0] for row in chosen]
    sweep_dir, out_dir = Path("multirun") / name, Path(results_root) / name
    grid = {
        "reproduces": str(results_dir),
        "rows": [r["number"] for r in chosen],
        "seeds": [r["run_seeds"] for r in chosen],
        "row_overrides": [list(row_key(r["overrides"])) for r in chosen],
    }
    check_free(sweep_dir, out_dir, grid, resume)
    for row, config in zip(chosen, configs):  # the data last: loading them takes the longest
        check_data(row, config)
    harness = harness_state(ROOT)
    command = f"python src/report.py --reproduce {results_dir}"
    about = {"name": name, "command": command, "commit": git_commit(harness), "harness": harness}
    claim_sweep(sweep_dir, grid, resume, about)
    run_rows(chosen, sweep_dir, name, resume)
    runs, curves = load_sweep(sweep_dir)
    write_report(runs, curves, out_dir, sweep_dir)
    after = read_manifest(out_dir)
    text = reproduction_text(found, chosen, per_row_results(chosen, runs), after)
    write_atomic(out_dir / "reproduction.md", text)
    return out_dir
