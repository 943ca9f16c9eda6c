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

from vitsweep.errors import ConfigError
from vitsweep.files import write_atomic
from vitsweep.record import RENAMED, with_current_names
from vitsweep.stats import compare, mean_interval
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
    ("device", "device"),
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


HEADLINE = {"params", "gflops_per_image", "best_top1", "train_s_per_epoch"}
DONE = ("completed", "sized")
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
        "cuda": summary.get("cuda"),
        "image_size": config.get("data", {}).get("image_size", model.get("image_size")),
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


def varying_overrides(runs: pd.DataFrame, grid: dict[str, Any] | None = None) -> list[str]:
    """Override keys whose value differs between jobs, in command-line order, and the keys
    the sweep's grid sweeps (so a partial sweep's rows are still named by them)."""
    keys = [c.removeprefix("override:") for c in runs.columns if c.startswith("override:")]
    swept = [o.split("=", 1)[0].lstrip("+~") for o in (grid or {}).get("overrides", []) if "," in o]
    swept += list((grid or {}).get("params", {}))
    varying = [k for k in keys if runs[f"override:{k}"].nunique(dropna=False) > 1]
    return varying + [k for k in dict.fromkeys(swept) if k in keys and k not in varying]


def label_runs(runs: pd.DataFrame, keys: list[str]) -> pd.Series:
    """Name each row by the choices that vary (the seed left out: it is aggregated)."""
    if not keys:
        return runs["run"].astype(str)
    parts = [k + "=" + runs[f"override:{k}"].fillna("?").astype(str) for k in keys]
    return pd.concat(parts, axis=1).agg(" ".join, axis=1)


def _status(statuses: pd.Series) -> str:
    done = statuses.isin(DONE).sum()
    if statuses.nunique() == 1:
        return str(statuses.iloc[0])
    return f"{done}/{len(statuses)} completed"


def aggregate(runs: pd.DataFrame, keys: list[str], confidence: float) -> pd.DataFrame:
    """One row per configuration: the jobs that differ only in seed, as mean, std and n of
    each metric (over the jobs that completed), with a t-interval of best top-1."""
    labelled = runs.assign(label=label_runs(runs, keys))
    rows = []
    for label, group in labelled.groupby("label", sort=False):
        done = group[group["status"].isin(DONE)]
        row = group.iloc[0].to_dict() | {"label": label, "status": _status(group["status"])}
        row["device"] = "; ".join(sorted({str(d) for d in group["device"].dropna()})) or None
        for column in AGGREGATED:
            values = pd.to_numeric(done[column], errors="coerce").dropna()
            row[column] = values.mean() if len(values) else math.nan
            row[f"{column}_std"] = values.std(ddof=1) if len(values) > 1 else math.nan
        scored = done.dropna(subset=["best_top1"])
        interval = mean_interval(list(scored["best_top1"]), confidence)
        row |= {"n": interval.n, "best_top1_low": interval.low, "best_top1_high": interval.high}
        row["per_seed"] = dict(zip(scored["seed"].fillna(-1).astype(int), scored["best_top1"]))
        rows.append(row)
    return pd.DataFrame(rows)


def pick_baseline(table: pd.DataFrame, spec: int | str | None) -> int:
    """The baseline row's position: the first row, a 1-based row number, or the one row whose
    label has every ``key=value`` (or value) given, e.g. "attention=softmax embedding=patch"."""
    if spec is None or spec == "":
        return 0
    labels = list(table["label"])
    if isinstance(spec, int) or str(spec).isdigit():
        if 1 <= int(spec) <= len(labels):
            return int(spec) - 1
        raise ConfigError(f"report.baseline={spec}: there are {len(labels)} rows")
    wanted = str(spec).replace(",", " ").split()
    matches = [i for i, label in enumerate(labels)
               if all(w in label.split() or w in [p.split("=")[-1] for p in label.split()]
                      for w in wanted)]  # fmt: skip
    if len(matches) != 1:
        found = "no row" if not matches else f"{len(matches)} rows"
        raise ConfigError(f"report.baseline={spec!r} matches {found}; rows: {'; '.join(labels)}")
    return matches[0]


def add_comparisons(table: pd.DataFrame, baseline: int, confidence: float) -> pd.DataFrame:
    """Each row's difference in best top-1 against the baseline row, with its interval and
    p-value (paired by seed where both ran the same seeds, Welch otherwise)."""
    reference = table["per_seed"].iloc[baseline]
    found = [compare(reference, per_seed, confidence) for per_seed in table["per_seed"]]
    alpha = 1 - confidence
    return table.assign(
        baseline=[i == baseline for i in range(len(table))],
        diff_best_top1=[d.diff for d in found],
        diff_low=[d.low for d in found],
        diff_high=[d.high for d in found],
        p_value=[d.p for d in found],
        test=[d.test for d in found],
        significant=[d.p < alpha for d in found],
    )


def comparison_table(
    runs: pd.DataFrame,
    baseline: int | str | None = None,
    confidence: float = 0.95,
    keys: list[str] | None = None,
) -> pd.DataFrame:
    """The sweep's table: one row per configuration (its seeds aggregated; ``keys`` name the
    rows, by default the overrides that vary), compared with the baseline row."""
    if keys is None:
        keys = [k for k in varying_overrides(runs) if k != "seed"]
    table = aggregate(runs, keys, confidence)
    return add_comparisons(table, pick_baseline(table, baseline), confidence)


def _number(value: Any, fmt: str = "{:.2f}") -> str:
    return "—" if value is None or pd.isna(value) else fmt.format(value)


def _cell(column: str, value: Any, std: Any = math.nan) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, str):
        with contextlib.suppress(ValueError):  # an override like optim.lr=0.000646642...
            return value if float(value).is_integer() else f"{float(value):.4g}"
        return value
    formats = {"params": "{:,.0f}", "gflops_per_image": "{:.3g}", "train_img_per_s": "{:.0f}",
               "peak_mem_mb": "{:.0f}"}  # fmt: skip
    integer = column in INTEGERS or isinstance(value, int)
    default = "{:.0f}" if integer else "{:.2f}" if isinstance(value, float) else "{}"
    fmt = formats.get(column, default)
    text = fmt.format(value)
    return text if pd.isna(std) else f"{text} ± {fmt.format(std)}"


def _interval(row: pd.Series) -> str:
    if row["n"] < 2:
        return f"n={row['n']}"
    return f"[{row['best_top1_low']:.2f}, {row['best_top1_high']:.2f}]"


def _difference(row: pd.Series) -> tuple[str, str]:
    """The Δ and p cells of a row."""
    if row["baseline"]:
        return "baseline", ""
    if pd.isna(row["diff_best_top1"]):
        return "—", ""
    diff = f"{row['diff_best_top1']:+.2f}"
    if row["test"] == "n=1":
        return diff, "n=1"
    star = " *" if row["significant"] else ""
    return (
        f"{diff} [{row['diff_low']:+.2f}, {row['diff_high']:+.2f}]",
        f"{_p_value(row['p_value'])} ({row['test']}){star}",
    )


def _p_value(p: float) -> str:
    """Three decimals, and never a p of 0: below 0.001 it is written as such."""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def to_markdown(table: pd.DataFrame, keys: list[str], headline: bool = False) -> str:
    """The table as markdown: the varying choices first (they name the rows), then the seed's
    columns and the costs (or, for ``headline``, the few that matter most), then how sure the
    accuracy is."""
    if headline:
        columns = [(k, k) for k in keys] + [(c, h) for c, h in METRICS if c in HEADLINE]
    else:
        columns = [(k, k) for k in keys] + [(c, h) for c, h in DESCRIBE if c not in keys]
        columns += METRICS
    cells = {
        heading: [
            _cell(column, row.get(f"override:{column}", row.get(column)),
                  row.get(f"{column}_std", math.nan))
            for _, row in table.iterrows()
        ]
        for column, heading in columns
    }  # fmt: skip
    differences = [_difference(row) for _, row in table.iterrows()]
    cells |= {
        "95% CI": [_interval(row) for _, row in table.iterrows()],
        "n": [str(n) for n in table["n"]],
        "Δ best top-1 vs baseline [95% CI]": [d for d, _ in differences],
        "p": [p for _, p in differences],
        "status": list(table["status"]),
    }
    return pd.DataFrame(cells).to_markdown(index=False, disable_numparse=True) + "\n"


def footer(runs: pd.DataFrame, curves: pd.DataFrame, sweep: dict[str, Any]) -> str:
    """What produced the numbers: command, jobs and seeds, device, versions, commit, compute."""
    seeds = sorted({int(s) for s in runs["seed"].dropna()})
    devices = ", ".join(sorted({str(d) for d in runs["device"].dropna()})) or "not recorded"
    torch_versions = ", ".join(sorted({str(v) for v in runs["torch"].dropna()})) or "—"
    cuda = ", ".join(sorted({str(v) for v in runs["cuda"].dropna()})) or "none"
    compute_s = sum(curves[c].sum() for c in ("train_s", "test_s") if c in curves)
    command = sweep.get("command")
    lines = [
        f"- command: `{command}`" if command else "- command: not recorded",
        f"- jobs: {len(runs)}; seeds: {', '.join(map(str, seeds)) or '—'}",
        f"- device: {devices}; torch {torch_versions}, CUDA {cuda}",
        f"- harness commit: {sweep.get('commit', 'not recorded')}",
        f"- compute: {compute_s / 60:.1f} min of training and evaluation in all",
    ]
    return "What produced these numbers:\n\n" + "\n".join(lines) + "\n"


def how_to_read(table: pd.DataFrame, confidence: float) -> str:
    base = table.loc[table["baseline"], "label"].iloc[0]
    return (
        f"Best top-1 is the mean ± standard deviation over the n seeds that completed; "
        f"{confidence:.0%} CI is its Student-t interval. Δ is each row's mean best top-1 minus "
        f"the baseline's (`{base}`), with its {confidence:.0%} interval and two-sided p-value: "
        "paired by seed where both rows ran the same seeds, Welch's t-test otherwise; * marks "
        f"p < {1 - confidence:.2f}. With n=1 there is no interval.\n"
    )


def write_report(
    runs: pd.DataFrame,
    curves: pd.DataFrame,
    out_dir: Path,
    source: str | os.PathLike,
    baseline: int | str | None = None,
    confidence: float = 0.95,
) -> str:
    """Write comparison.md/.csv and the plots into ``out_dir``; returns the headline table.
    ``source`` is the sweep directory (its sweep.yaml gives the footer) or a W&B group."""
    from vitsweep.plots import plot_curves, plot_pareto

    out_dir.mkdir(parents=True, exist_ok=True)
    sweep = read_sweep_record(Path(source)) if Path(source).is_dir() else {}
    keys = [k for k in varying_overrides(runs, sweep.get("grid")) if k != "seed"]
    table = comparison_table(runs, baseline, confidence, keys)
    headline = to_markdown(table, keys, headline=True)
    text = "\n".join([
        f"# Sweep {out_dir.name}\n\nFrom {source} ({len(runs)} jobs).\n",
        headline, how_to_read(table, confidence),
        "All columns:\n", to_markdown(table, keys), footer(runs, curves, sweep),
    ])  # fmt: skip
    write_atomic(out_dir / "comparison.md", text)
    write_atomic(out_dir / "comparison.csv", table.drop(columns="per_seed").to_csv(index=False))
    labels = dict(zip(runs["run"], label_runs(runs, keys)))
    plot_curves(curves, labels, "test_acc", "test top-1 (%)", out_dir / "accuracy.png", 100)
    plot_curves(curves, labels, "train_s", "train seconds per epoch", out_dir / "latency.png")
    plot_pareto(table, out_dir / "pareto.png")
    return headline
