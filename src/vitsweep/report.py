"""The comparison table and curves of a sweep, from local run records or from W&B.

Both sources become one DataFrame with the same columns (``row_from_run``), so everything
after loading — seed aggregation, the markdown and CSV tables, the plots — is shared.

    runs, curves = load_sweep(sweep_dir)                  # the jobs' local run records
    runs, curves = load_wandb("entity/project", group)    # or the W&B public API
    write_report(runs, curves, out_dir, title)            # tables and plots
"""

import contextlib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from vitsweep.record import write_atomic

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
    ("eval_s_per_epoch", "eval s/epoch"),
    ("train_img_per_s", "train img/s"),
    ("peak_mem_mb", "peak MB"),
    ("epochs_done", "epochs"),
]
AGGREGATED = [
    "best_top1", "final_top1", "time_per_epoch_s", "train_s_per_epoch", "eval_s_per_epoch",
    "train_img_per_s", "peak_mem_mb",
]  # fmt: skip


def sweep_name(sweep_dir: str | os.PathLike) -> str:
    """A sweep's name: its directory's name (multirun/<sweep_name>), or, for Hydra's dated
    layout (multirun/<date>/<time>), the date and time."""
    path = Path(sweep_dir)
    if re.fullmatch(r"\d\d-\d\d-\d\d", path.name) and path.parent.name:
        return f"{path.parent.name}_{path.name}"
    return path.name


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
    acc = {k: summary.get(f"{k}_test_acc") for k in ("best", "final")}
    train_s, eval_s = summary.get("train_s_per_epoch"), summary.get("eval_s_per_epoch")
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
        "time_per_epoch_s": None if train_s is None else train_s + (eval_s or 0.0),
        "train_s_per_epoch": train_s,
        "eval_s_per_epoch": eval_s,
        "train_img_per_s": summary.get("train_img_per_s"),
        "peak_mem_mb": summary.get("peak_mem_mb"),
        "epochs_done": summary.get("epochs_done"),
        "error": summary.get("error"),
    }


def _read_yaml(path: Path, default: Any) -> Any:
    return yaml.safe_load(path.read_text()) if path.exists() else default


def load_sweep(sweep_dir: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows and per-epoch curves of every job under ``sweep_dir`` (a job: a directory with
    .hydra/; one without a summary shows as ``missing``)."""
    rows, curves = [], []
    job_dirs = sorted(
        (p.parent.parent for p in Path(sweep_dir).glob("**/.hydra/overrides.yaml")),
        key=lambda p: [int(s) if s.isdigit() else s for s in p.parts],
    )
    for job in job_dirs:
        config = _read_yaml(job / "config.yaml", {})
        summary_path = job / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        overrides = _read_yaml(job / ".hydra" / "overrides.yaml", [])
        run_id = str(job.relative_to(sweep_dir))
        rows.append(row_from_run(config, summary, overrides, run_id))
        if (job / "history.csv").exists():
            curves.append(pd.read_csv(job / "history.csv").assign(run=run_id))
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
    epoch_keys = {"epoch/epoch": "epoch", "epoch/test_acc": "test_acc", "epoch/train_s": "train_s"}
    for run in runs:
        summary = {k: v for k, v in dict(run.summary).items() if not k.startswith("_")}
        if summary.get("status") in (None, "running") and run.state in ("failed", "crashed"):
            summary["status"] = "failed"
        rows.append(row_from_run(dict(run.config), summary, run.tags, run.name))
        history = run.history(keys=list(epoch_keys), pandas=True)
        if len(history):
            curves.append(history.rename(columns=epoch_keys).assign(run=run.name))
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
    formats = {"params": "{:,.0f}", "gflops_per_image": "{:.2f}", "train_img_per_s": "{:.0f}",
               "peak_mem_mb": "{:.0f}", "best_top1": "{:.2f}", "final_top1": "{:.2f}"}  # fmt: skip
    fmt = formats.get(column, "{:.2f}" if isinstance(value, float) else "{}")
    text = fmt.format(value)
    return text if isinstance(std, float) and math.isnan(std) else f"{text} ± {fmt.format(std)}"


def to_markdown(table: pd.DataFrame, keys: list[str]) -> str:
    """The table as markdown: the varying choices first, then the seed's columns, then costs."""
    describe = [(c, h) for c, h in DESCRIBE if c not in keys]
    columns = [(k, k) for k in keys] + describe + METRICS
    if "n" in table:
        columns.append(("n", "n"))
    columns.append(("status", "status"))
    lines = [
        "| " + " | ".join(h for _, h in columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for _, row in table.iterrows():
        cells = []
        for column, _ in columns:
            value = row.get(f"override:{column}", row.get(column))
            cells.append(_cell(column, value, row.get(f"{column}_std", math.nan)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(curves: pd.DataFrame, labels: Mapping[str, str], column: str, ylabel: str,
                path: Path, scale: float = 1.0) -> None:  # fmt: skip
    """One line per configuration (the mean over its seeds) of ``column`` against epoch."""
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
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def write_report(runs: pd.DataFrame, curves: pd.DataFrame, out_dir: Path, title: str) -> str:
    """Write comparison.md/.csv, accuracy.png and latency.png into ``out_dir``; returns the
    markdown table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = [k for k in varying_overrides(runs) if k != "seed"]
    table = comparison_table(runs)
    markdown = to_markdown(table, keys)
    write_atomic(out_dir / "comparison.md", f"# {title}\n\n{markdown}")
    write_atomic(out_dir / "comparison.csv", table.to_csv(index=False))
    labels = dict(zip(runs["run"], label_runs(runs, keys)))
    plot_curves(curves, labels, "test_acc", "test top-1 (%)", out_dir / "accuracy.png", 100)
    plot_curves(curves, labels, "train_s", "train seconds per epoch", out_dir / "latency.png")
    return markdown
