"""The comparison table and curves of a sweep, from local run records or from W&B.

Both sources become one DataFrame with the same columns (``row_from_run``), so everything
after loading — seed aggregation, the markdown and CSV tables, the plots — is shared.

    runs, curves = load_sweep(sweep_dir)                  # the jobs' local run records
    runs, curves = load_wandb("entity/project", group)    # or the W&B public API
    write_report(runs, curves, out_dir, sweep_dir)        # tables and plots
"""

import contextlib
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from vitsweep.files import write_atomic
from vitsweep.record import RENAMED, with_current_names
from vitsweep.sweep import read_sweep_record

# The seed's comparison table, then the costs the harness adds; (column, heading).
DESCRIBE = [
    ("embedding", "feature extraction"),
    ("attention", "attention"),
    ("image_size", "image size"),
    ("dim", "dim"),
    ("patch_size", "patch size"),
    ("tokens", "tokens"),
    ("heads", "heads"),
    ("blocks", "blocks"),
]
METRICS = [
    ("params", "parameters"),
    ("gflops_per_image", "GFLOPs/img"),
    ("best_top1", "best top-1 %"),
    ("final_top1", "final top-1 %"),
    ("time_per_epoch_s", "s/epoch"),
    ("train_s_per_epoch", "train s/epoch"),
    ("test_s_per_epoch", "test s/epoch"),
    ("train_img_per_s", "train img/s"),
    ("peak_mem_mb", "peak MB"),
    ("epochs_done", "epochs"),
]
AGGREGATED = [
    "best_top1",
    "final_top1",
    "time_per_epoch_s",
    "train_s_per_epoch",
    "test_s_per_epoch",
    "train_img_per_s",
    "peak_mem_mb",
]


INTEGERS = {
    "image_size",
    "dim",
    "patch_size",
    "tokens",
    "heads",
    "blocks",
    "params",
    "epochs_done",
    "n",
    "seed",
}


def sweep_name(sweep_dir: str | os.PathLike, runs: pd.DataFrame | None = None) -> str:
    """A sweep's name: the ``sweep_name`` its record (or its jobs) kept, else its directory's."""
    name = read_sweep_record(Path(sweep_dir)).get("name")
    if not name and runs is not None and "sweep_name" in runs:
        name = next(iter(runs["sweep_name"].dropna()), None)
    return str(name or Path(sweep_dir).name)


def parse_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """['attention=softmax', 'seed=1'] -> {'attention': 'softmax', 'seed': '1'}."""
    pairs = (o.lstrip("+~").split("=", 1) for o in overrides if "=" in o)
    return {key: value for key, value in pairs}


def row_from_run(
    config: Mapping[str, Any],
    summary: Mapping[str, Any],
    overrides: Iterable[str],
    run_id: str,
) -> dict[str, Any]:
    """One table row from what every run records, whichever source it came from."""
    model = config.get("model", {})
    choices = config.get("choices", {})
    summary = with_current_names(summary)
    acc = {k: summary.get(f"{k}_test_acc") for k in ("best", "final")}
    train_s, test_s = summary.get("train_s_per_epoch"), summary.get("test_s_per_epoch")
    flops = summary.get("flops_per_image")
    return {
        "run": run_id,
        "status": summary.get("status", "missing"),
        **{f"override:{k}": v for k, v in parse_overrides(overrides).items()},
        "model": choices.get("model"),
        "embedding": choices.get("embedding"),
        "attention": choices.get("attention"),
        "data": config.get("data", {}).get("name"),
        "seed": config.get("seed"),
        "sweep_name": config.get("sweep_name"),
        "device": summary.get("device"),
        "torch": summary.get("torch"),
        "image_size": model.get("image_size"),
        "dim": model.get("dim"),
        "patch_size": model.get("embedding", {}).get("patch_size"),
        "tokens": summary.get("tokens"),
        "heads": model.get("heads"),
        "blocks": model.get("depth"),
        "params": summary.get("params"),
        "gflops_per_image": None if flops is None else flops / 1e9,
        "best_top1": None if acc["best"] is None else 100 * acc["best"],
        "final_top1": None if acc["final"] is None else 100 * acc["final"],
        "time_per_epoch_s": None if train_s is None else train_s + (test_s or 0.0),
        "train_s_per_epoch": train_s,
        "test_s_per_epoch": test_s,
        "train_img_per_s": summary.get("train_img_per_s"),
        "peak_mem_mb": summary.get("peak_mem_mb"),
        "epochs_done": summary.get("epochs_done"),
        "error": summary.get("error"),
    }


def _read(path: Path, parse: Any) -> Any:
    """A record file's content, None when absent, or an exception when it is not readable."""
    if not path.exists():
        return None
    try:
        return parse(path.read_text())
    except Exception as err:
        return err


def job_dirs(sweep_dir: Path) -> list[Path]:
    """Every job's directory under a sweep (a directory with a run record, or an older one
    with Hydra's .hydra/), in job order."""
    found = {p.parent for name in ("config.yaml", "summary.json") for p in sweep_dir.rglob(name)}
    found |= {p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")}
    found = {p for p in found if p != sweep_dir and not {".hydra", "wandb"} & set(p.parts)}
    return sorted(found, key=lambda p: [int(s) if s.isdigit() else s for s in p.parts])


def load_sweep(sweep_dir: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows and per-epoch curves of every job under ``sweep_dir``. A job whose summary is
    absent shows as ``missing``; one whose record cannot be read, as ``unreadable``."""
    sweep_dir = Path(sweep_dir)
    rows, curves = [], []
    for job in job_dirs(sweep_dir):
        config = _read(job / "config.yaml", yaml.safe_load)
        summary = _read(job / "summary.json", json.loads)
        problems = [
            f"{name} cannot be read ({content})"
            for name, content in (("config.yaml", config), ("summary.json", summary))
            if content is not None and not isinstance(content, dict)
        ]
        config = config if isinstance(config, dict) else {}
        summary = summary if isinstance(summary, dict) else {}
        if problems:
            summary = {"status": "unreadable", "error": "; ".join(problems)}
        overrides = config.get("overrides")
        if overrides is None:  # records written before 0.2 kept them in Hydra's .hydra/
            overrides = _read(job / ".hydra" / "overrides.yaml", yaml.safe_load)
        overrides = overrides if isinstance(overrides, list) else []
        run_id = str(job.relative_to(sweep_dir))
        rows.append(row_from_run(config, summary, overrides, run_id))
        with contextlib.suppress(Exception):  # a history that cannot be read has no curve
            history = pd.read_csv(job / "history.csv").rename(columns=RENAMED)
            curves.append(history.assign(run=run_id))
    return pd.DataFrame(rows), pd.concat(curves) if curves else pd.DataFrame()


def load_wandb(path: str, group: str, api: Any = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows and curves of every W&B run in ``group`` of ``path`` ("entity/project")."""
    if api is None:
        import wandb

        api = wandb.Api()
    runs = list(api.runs(path, filters={"group": group}))
    return frame_from_wandb_runs(runs)


def frame_from_wandb_runs(runs: Iterable[Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The adapter from W&B run objects (config, summary, tags, history) to the table's
    schema. The summary holds the run record's summary; the tags hold the job's overrides."""
    rows, curves = [], []
    # Per-epoch metrics are logged under the history's own names (before 0.2: "epoch/...").
    epoch_keys = ["epoch", "test_acc", "train_s"]
    old_keys = {f"epoch/{k}": k for k in epoch_keys}
    for run in runs:
        summary = {k: v for k, v in dict(run.summary).items() if not k.startswith("_")}
        if summary.get("status") in (None, "running") and run.state in ("failed", "crashed"):
            summary["status"] = "failed"
        rows.append(row_from_run(dict(run.config), summary, run.tags, run.name))
        history = run.history(keys=epoch_keys, pandas=True)
        if not len(history):
            history = run.history(keys=list(old_keys), pandas=True).rename(columns=old_keys)
        if len(history):
            curves.append(history.assign(run=run.name))
    return pd.DataFrame(rows), pd.concat(curves) if curves else pd.DataFrame()


def varying_overrides(runs: pd.DataFrame) -> list[str]:
    """Override keys whose value differs between jobs, in command-line order."""
    keys = [c for c in runs.columns if c.startswith("override:")]
    return [c.removeprefix("override:") for c in keys if runs[c].nunique(dropna=False) > 1]


def label_runs(runs: pd.DataFrame, keys: list[str]) -> pd.Series:
    """Name each row by the choices that vary (the seed left out when it is aggregated)."""
    if not keys:
        return runs["run"].astype(str)
    parts = [k + "=" + runs[f"override:{k}"].astype(str) for k in keys]
    return pd.concat(parts, axis=1).agg(" ".join, axis=1)


def aggregate_seeds(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Jobs that differ only in seed become one row: mean, std and n of each metric."""
    labelled = runs.assign(label=label_runs(runs, keys))
    rows = []
    for label, group in labelled.groupby("label", sort=False):
        done = group[group["status"] == "completed"]
        row = group.iloc[0].to_dict() | {"label": label, "n": len(done)}
        row["status"] = (
            "completed" if len(done) == len(group) else f"{len(done)}/{len(group)} completed"
        )
        for column in AGGREGATED:
            values = pd.to_numeric(done[column], errors="coerce").dropna()
            row[column] = values.mean() if len(values) else math.nan
            row[f"{column}_std"] = values.std(ddof=1) if len(values) > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def comparison_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The sweep's table: one row per job, or per configuration when seeds repeat it."""
    keys = varying_overrides(runs)
    if "seed" in keys:
        keys.remove("seed")
        return aggregate_seeds(runs, keys)
    return runs.assign(label=label_runs(runs, keys))


def _cell(column: str, value: Any, std: Any = math.nan) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, str):
        with contextlib.suppress(ValueError):  # an override like optim.lr=0.000646642...
            return value if float(value).is_integer() else f"{float(value):.4g}"
        return value
    formats = {
        "params": "{:,.0f}",
        "gflops_per_image": "{:.2f}",
        "train_img_per_s": "{:.0f}",
        "peak_mem_mb": "{:.0f}",
        "best_top1": "{:.2f}",
        "final_top1": "{:.2f}",
    }
    integer = column in INTEGERS or isinstance(value, int)
    fmt = formats.get(
        column, "{:.0f}" if integer else "{:.2f}" if isinstance(value, float) else "{}"
    )
    text = fmt.format(value)
    return text if isinstance(std, float) and math.isnan(std) else f"{text} ± {fmt.format(std)}"


def to_markdown(table: pd.DataFrame, keys: list[str]) -> str:
    """The table as markdown: the varying choices first, then the seed's columns, then costs."""
    describe = [(c, h) for c, h in DESCRIBE if c not in keys]
    columns = [(k, k) for k in keys] + describe + METRICS
    if "n" in table:
        columns.append(("n", "n"))
    columns.append(("status", "status"))
    cells = {
        heading: [
            _cell(
                column,
                row.get(f"override:{column}", row.get(column)),
                row.get(f"{column}_std", math.nan),
            )
            for _, row in table.iterrows()
        ]
        for column, heading in columns
    }
    return pd.DataFrame(cells).to_markdown(index=False, disable_numparse=True) + "\n"


def footer(runs: pd.DataFrame, curves: pd.DataFrame, sweep: dict[str, Any]) -> str:
    """What produced the numbers: command, jobs and seeds, device, versions, commit, compute."""
    seeds = sorted({int(s) for s in runs["seed"].dropna()})
    devices = ", ".join(sorted({str(d) for d in runs["device"].dropna()})) or "—"
    versions = ", ".join(sorted({str(v) for v in runs["torch"].dropna()})) or "—"
    compute_s = sum(curves[c].sum() for c in ("train_s", "test_s") if c in curves)
    command = sweep.get("command")
    lines = [
        f"- command: `{command}`" if command else "- command: not recorded",
        f"- jobs: {len(runs)}; seeds: {', '.join(map(str, seeds)) or '—'}",
        f"- device: {devices}; torch {versions}",
        f"- harness commit: {sweep.get('commit', 'not recorded')}",
        f"- compute: {compute_s / 60:.1f} min of training and evaluation in all",
    ]
    return "What produced these numbers:\n\n" + "\n".join(lines) + "\n"


def write_report(
    runs: pd.DataFrame, curves: pd.DataFrame, out_dir: Path, source: str | os.PathLike
) -> str:
    """Write comparison.md/.csv and the plots into ``out_dir``; returns the markdown table.
    ``source`` is the sweep directory (its sweep.yaml gives the footer) or a W&B group."""
    from vitsweep.plots import plot_curves

    out_dir.mkdir(parents=True, exist_ok=True)
    keys = [k for k in varying_overrides(runs) if k != "seed"]
    table = comparison_table(runs)
    markdown = to_markdown(table, keys)
    sweep = read_sweep_record(Path(source)) if Path(source).is_dir() else {}
    title = f"# Sweep {out_dir.name}\n\nFrom {source} ({len(runs)} jobs).\n\n"
    write_atomic(out_dir / "comparison.md", title + markdown + "\n" + footer(runs, curves, sweep))
    write_atomic(out_dir / "comparison.csv", table.to_csv(index=False))
    labels = dict(zip(runs["run"], label_runs(runs, keys)))
    plot_curves(curves, labels, "test_acc", "test top-1 (%)", out_dir / "accuracy.png", 100)
    plot_curves(curves, labels, "train_s", "train seconds per epoch", out_dir / "latency.png")
    return markdown
