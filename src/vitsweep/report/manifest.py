"""manifest.json: what a reproduction needs of a sweep's table. Per row its overrides (less
the seed), seeds, runs, per-seed best top-1, and how each seed's run ended (its status and the
epochs it trained); for the sweep the harness commit and its state, the versions, the device
and the data fingerprints."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vitsweep.config import override_key
from vitsweep.report.aggregate import label_runs
from vitsweep.report.render import missing

if TYPE_CHECKING:
    import pandas as pd


def manifest(runs: pd.DataFrame, table: pd.DataFrame, sweep: dict[str, Any]) -> dict[str, Any]:
    """What a reproduction needs: per row its overrides (less the seed), seeds, runs, and per
    seed its best top-1, status and epochs trained; for the sweep the harness commit and its
    state, versions, device and data fingerprints."""
    labels = label_runs(runs, list(table.attrs.get("keys", [])))

    def distinct(frame: pd.DataFrame, column: str) -> list[str]:
        return sorted({str(v) for v in frame[column].dropna()})

    rows = []
    for _, row in table.iterrows():
        group = runs[labels == row["label"]]
        seeds = sorted({int(s) for s in group["seed"].dropna()})
        first = next(iter(group["overrides"]), [])
        ended = _by_seed(group)
        rows.append(
            {
                "label": row["label"],
                "overrides": [o for o in first if override_key(o) != "seed"],
                "seeds": seeds,
                "runs": list(group["run"]),
                "best_top1": {str(k): v for k, v in row["per_seed"].items()},
                "mean": _number(row["best_top1"]),
                "low": _number(row["best_top1_low"]),
                "high": _number(row["best_top1_high"]),
                "n": int(row["n"]),
                "status": {key: str(run["status"]) for key, run in ended.items()},
                "epochs": {key: _count(run.get("epochs_done")) for key, run in ended.items()},
                "data_fingerprint": distinct(group, "data_fingerprint"),
            }
        )
    harness = sweep.get("harness") or {"commit": None, "dirty": None, "diff_sha256": None}
    return {
        "sweep": sweep.get("name"),
        "command": sweep.get("command"),
        "harness": harness,
        "versions": {v: distinct(runs, v) for v in ("python", "torch", "cuda")},
        "device": distinct(runs, "device"),
        "data": distinct(runs, "data_fingerprint"),
        "recipe": shared_recipe(runs, list(table.attrs.get("keys", []))),
        "confidence": table.attrs.get("confidence"),
        "rows": rows,
    }


def without_keys(node: Any, keys: list[str]) -> Any:
    """A nested config less the dotted ``keys`` (``optim.lr``; ``optim``, a group, is the whole
    block)."""
    if not isinstance(node, dict):
        return node
    whole, inner = set(), {}
    for key in keys:
        head, _, rest = key.lstrip("+~").partition(".")
        if rest:
            inner.setdefault(head, []).append(rest)
        else:
            whole.add(head)
    return {
        k: without_keys(v, inner[k]) if k in inner else v for k, v in node.items() if k not in whole
    }


def shared_recipe(runs: pd.DataFrame, keys: list[str]) -> dict[str, Any] | None:
    """The recipe every row shares (trainer, optimiser, data), less what the rows vary: the
    first readable run's."""
    recipes = [r for r in runs.get("settings", []) if isinstance(r, dict) and any(r.values())]
    return without_keys(recipes[0], keys) if recipes else None


def _by_seed(group: pd.DataFrame) -> dict[str, Any]:
    """A row's runs keyed as its per-seed best top-1 is: by seed, or by run where a seed ran
    twice."""
    seeds = group["seed"].fillna(-1).astype(int)
    keys = seeds if seeds.is_unique else group["run"]
    return {str(key): run for key, (_, run) in zip(keys, group.iterrows())}


def _number(value: Any) -> float | None:
    return None if missing(value) else float(value)


def _count(value: Any) -> int | None:
    return None if missing(value) else int(value)
