"""The run record: what every run leaves in its own output directory.

    config.yaml    the resolved config (every interpolation filled in)
    history.csv    one row per epoch
    summary.json   size, cost, best/final accuracy, mean epoch times, status

The comparison table reads these, so a run's results never depend on W&B being reachable.
Files are replaced atomically (write a temporary file, then rename), so a reader never sees
half a file, even when a run is killed mid-write.
"""

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from vitsweep.errors import ConfigError


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _without_resume(config: dict[str, Any]) -> dict[str, Any]:
    trainer = {k: v for k, v in config.get("trainer", {}).items() if k != "resume"}
    return {**config, "trainer": trainer}


def summarise_history(history: list[dict[str, float]]) -> dict[str, float]:
    """Best and final accuracy, and mean per-epoch costs, from the per-epoch rows."""
    if not history:
        return {}
    frame = pd.DataFrame(history)
    evaluated = frame.dropna(subset=["test_acc"]) if "test_acc" in frame else frame.iloc[:0]
    summary = {
        "epochs_done": int(frame["epoch"].max()),
        "train_s_per_epoch": float(frame["train_s"].mean()),
        "train_img_per_s": float(frame["train_img_per_s"].mean()),
        "peak_mem_mb": float(frame["peak_mem_mb"].max()),
        "final_train_loss": float(frame["train_loss"].iloc[-1]),
    }
    if len(evaluated):
        best = evaluated.loc[evaluated["test_acc"].idxmax()]
        summary |= {
            "best_test_acc": float(best["test_acc"]),
            "best_epoch": int(best["epoch"]),
            "final_test_acc": float(evaluated["test_acc"].iloc[-1]),
            "eval_s_per_epoch": float(evaluated["eval_s"].mean()),
        }
    return summary


class RunRecord:
    """A run's record. With ``resume``, an earlier record in ``run_dir`` is read back first.
    If that record's config is not the one given (``trainer.resume`` aside), the directory
    belongs to another run: ``foreign`` is set and nothing is ever written into it."""

    def __init__(self, run_dir: Path, config: dict[str, Any], resume: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.history: list[dict[str, float]] = []
        self.summary: dict[str, Any] = {"status": "running"}
        self.foreign = False
        config_path, summary_path = self.run_dir / "config.yaml", self.run_dir / "summary.json"
        if resume and summary_path.exists():
            earlier = yaml.safe_load(config_path.read_text()) if config_path.exists() else {}
            if _without_resume(earlier) != _without_resume(config):
                self.foreign = True
                return
            self.summary = json.loads(summary_path.read_text())
        write_atomic(config_path, yaml.safe_dump(config, sort_keys=False))

    def check_not_foreign(self) -> None:
        if self.foreign:
            raise ConfigError(
                f"{self.run_dir} holds a run with another config; resume with the same "
                "overrides, or start a new run directory"
            )

    def add_epoch(self, row: dict[str, float]) -> None:
        self.check_not_foreign()
        self.history.append(row)
        write_atomic(self.run_dir / "history.csv", pd.DataFrame(self.history).to_csv(index=False))
        self.update(**summarise_history(self.history))

    def update(self, **fields: Any) -> None:
        if self.foreign:  # another run's record: leave it as it is
            return
        self.summary.update(fields)
        write_atomic(self.run_dir / "summary.json", json.dumps(self.summary, indent=2) + "\n")
