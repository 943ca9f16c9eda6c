"""Re-running a table: rows of a sweep's results folder, trained again with their recorded
overrides as a new sweep ``<sweep_name>-reproduced``, and a verdict per row.

    reproduce(Path("results/fmnist_ablation"), rows=[1], seeds=None)

The verdicts (``reproduction.md``): ``identical`` when every seed's best top-1 is the same number
(the CPU path is deterministic on one commit, device and data), else ``inside`` or ``outside``
the original row's interval, naming the manifest fields that differ (commit, versions, device,
data). A manifest whose commit is not in this repository, or whose data the data here no longer
match, is refused before anything trains.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitsweep.config import compose_job, override_key, plain
from vitsweep.data import fingerprint, load_splits
from vitsweep.errors import ConfigError, first_line
from vitsweep.files import write_atomic
from vitsweep.job import JobInfo, run_job
from vitsweep.report.pipeline import write_report
from vitsweep.report.read import load_sweep
from vitsweep.settings import DataSettings, check_sweep_name
from vitsweep.stats import mean_interval
from vitsweep.sweep import claim_sweep, commit_exists, git_commit, harness_state

if TYPE_CHECKING:
    import pandas as pd

ROOT = Path(__file__).resolve().parents[3]
NOT_REPEATED = ("seed", "sweep_name", "trainer.resume")  # set by the reproduction itself
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
    return found


def row_key(overrides: list[str]) -> tuple[str, ...]:
    """A row's identity: its overrides, less what every reproduction sets anew."""
    kept = [o for o in overrides if override_key(o) not in NOT_REPEATED]
    return tuple(sorted(kept))


def plan(found: dict[str, Any], rows: list[int] | None, seeds: list[int] | None) -> list[dict]:
    """The rows to rerun (1-based numbers; all by default), each with the seeds to run."""
    numbers = rows or list(range(1, len(found["rows"]) + 1))
    bad = [n for n in numbers if not 1 <= n <= len(found["rows"])]
    if bad:
        raise ConfigError(f"--rows {bad[0]}: the table has rows 1 to {len(found['rows'])}")
    chosen = []
    for number in numbers:
        row = found["rows"][number - 1]
        chosen.append(row | {"number": number, "run_seeds": seeds or row["seeds"]})
    return chosen


def compose_row(row: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """A row's config as recorded (plain) and its choices; one that no longer composes (an
    option renamed since) is one ConfigError."""
    try:
        cfg, choices = compose_job(list(row_key(row["overrides"])))
        return plain(cfg), choices
    except Exception as err:
        raise ConfigError(
            f"row {row['number']}: its overrides no longer compose ({first_line(err)})"
        ) from None


def check_data(row: dict[str, Any]) -> None:
    """The data this row would load here is the data it was trained on (its fingerprint)."""
    if not row.get("data_fingerprint"):
        return
    config, _ = compose_row(row)
    found = fingerprint(*load_splits(DataSettings(**config["data"])))
    if found not in row["data_fingerprint"]:
        raise ConfigError(
            f"row {row['number']}: its data's fingerprint here is {found}, the "
            f"manifest's {', '.join(row['data_fingerprint'])}: not the data it was "
            "trained on"
        )


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
        cfg, choices = compose_job(overrides)
        job = JobInfo(
            run_dir=sweep_dir / str(num),
            multirun=True,
            choices=choices,
            overrides=overrides,
            name=",".join(overrides),
            sweep_name=name,
            num=num,
        )
        run_job(plain(cfg), job)


def judge(row: dict[str, Any], again: dict[str, float]) -> str:
    original = {str(k): v for k, v in row["best_top1"].items()}
    if not again:
        return "no result"
    complete = {str(s) for s in row["run_seeds"]} == set(again)  # no seed failed this time
    if complete and all(original.get(str(s)) == v for s, v in again.items()):
        return "identical"
    mean = sum(again.values()) / len(again)
    if row["n"] < 2 or row["low"] is None:
        return "no interval to test (n=1)"
    return "inside" if row["low"] <= mean <= row["high"] else "outside"


def what_differs(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The manifest fields that differ between the original sweep and its reproduction."""
    fields = {
        "commit": lambda m: git_commit(m.get("harness") or {}),
        "diff": lambda m: (m.get("harness") or {}).get("diff_sha256"),
        **{v: (lambda m, v=v: m.get("versions", {}).get(v)) for v in ("python", "torch", "cuda")},
        "device": lambda m: m.get("device"),
        "data": lambda m: m.get("data"),
    }
    return [
        f"{name} ({read(before)} → {read(after)})"
        for name, read in fields.items()
        if read(before) != read(after)
    ]


def per_row_results(chosen: list[dict], runs: pd.DataFrame) -> list[dict[str, float]]:
    """Each chosen row's new best top-1 by seed, matched by the overrides its runs recorded."""
    keys = runs["overrides"].map(row_key)
    done = runs["status"].isin(("completed",)) & runs["best_top1"].notna()
    return [
        {
            str(int(r["seed"])): float(r["best_top1"])
            for _, r in runs[done & (keys == row_key(row["overrides"]))].iterrows()
        }
        for row in chosen
    ]


def interval(mean: Any, low: Any, high: Any, n: int) -> str:
    import pandas as pd  # only when a table is made: a run stays light

    if mean is None or pd.isna(mean):
        return "—"
    return f"{mean:.2f} [{low:.2f}, {high:.2f}] (n={n})" if n >= 2 else f"{mean:.2f} (n={n})"


def reproduction_text(found: dict, chosen: list[dict], results: list[dict], after: dict) -> str:
    """reproduction.md: per row, the original and reproduced best top-1, and the verdict."""
    import pandas as pd  # only when a table is made: a run stays light

    lines = []
    for row, again in zip(chosen, results):
        new = mean_interval(list(again.values()), found.get("confidence") or 0.95)
        per_seed = ", ".join(
            f"{s}: {row['best_top1'].get(s, float('nan')):.2f} → {v:.2f}" for s, v in again.items()
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
    differs = what_differs(found, after)
    said = "; ".join(differs) if differs else "nothing: the same commit, versions, device and data"
    return (
        f"# Reproduction of {found.get('sweep')}\n\nOriginal: `{found.get('command')}`\n\n"
        f"{table}\n\nWhat differs from the original sweep: {said}.\n\n`identical`: every "
        "seed's best top-1 is the same number. `inside` / `outside`: the reproduced mean "
        "against the original row's interval.\n"
    )


def reproduce(
    results_dir: Path,
    rows: list[int] | None = None,
    seeds: list[int] | None = None,
    results_root: Path = Path("results"),
    resume: bool = False,
) -> Path:
    """Rerun ``rows`` of ``results_dir`` (its manifest.json) as the sweep
    ``<sweep>-reproduced``, then write its table and reproduction.md; returns that folder.
    Refused in one line (a ConfigError) before anything trains when it cannot be honest."""
    found = read_manifest(results_dir)
    commit = (found.get("harness") or {}).get("commit")
    if not commit or not commit_exists(ROOT, commit):
        raise ConfigError(
            f"{results_dir}: its harness commit {commit} is not in this repository; "
            "fetch it first, or reproduce in a clone that has it"
        )
    chosen = plan(found, rows, seeds)
    for row in chosen:
        check_data(row)
    name = check_sweep_name(f"{found.get('sweep') or Path(results_dir).name}-reproduced")
    sweep_dir, harness = Path("multirun") / name, harness_state(ROOT)
    grid = {
        "reproduces": str(results_dir),
        "rows": [r["number"] for r in chosen],
        "seeds": [r["run_seeds"] for r in chosen],
    }
    about = {
        "name": name,
        "command": f"python src/report.py --reproduce {results_dir}",
        "commit": git_commit(harness),
        "harness": harness,
    }
    claim_sweep(sweep_dir, grid, resume, about)
    run_rows(chosen, sweep_dir, name, resume)
    runs, curves = load_sweep(sweep_dir)
    out_dir = results_root / name
    write_report(runs, curves, out_dir, sweep_dir)
    after = read_manifest(out_dir)
    text = reproduction_text(found, chosen, per_row_results(chosen, runs), after)
    write_atomic(out_dir / "reproduction.md", text)
    return out_dir
