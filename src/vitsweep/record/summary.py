"""A run's history and what is read from it: the per-epoch rows as history.csv, and the
summary's numbers (best and final top-1, the epoch a validation split picks, per-class top-1,
mean costs), all pure functions of the history."""

import csv
import io
from pathlib import Path
from typing import Any

DONE = ("completed", "sized")  # a resumed run in one of these states has nothing left to do
FINISHED = (*DONE, "pruned")  # ended as it should: a search stops hopeless trials on purpose


def per_class_top1(confusion: list[list[int]], classes: list[str]) -> dict[str, float | None]:
    """Each true class's top-1 from a confusion matrix (rows: true, columns: predicted)."""
    return {
        name: (row[i] / sum(row) if sum(row) else None)
        for i, (name, row) in enumerate(zip(classes, confusion))
    }


def summarise_history(
    history: list[dict[str, Any]], classes: list[str] | None = None
) -> dict[str, Any]:
    """Best and final accuracy, and mean per-epoch costs, from the per-epoch rows; at the best
    epoch, its confusion matrix and each class's top-1 (named by ``classes``)."""
    if not history:
        return {}
    evaluated = [row for row in history if row.get("test_acc") is not None]
    summary = {
        "epochs_done": int(history[-1]["epoch"]),
        "train_s_per_epoch": sum(r["train_s"] for r in history) / len(history),
        "train_img_per_s": sum(r["train_img_per_s"] for r in history) / len(history),
        "final_train_loss": history[-1]["train_loss"],
    }
    if peaks := [r["peak_mem_mb"] for r in history if r.get("peak_mem_mb") is not None]:
        summary["peak_mem_mb"] = max(peaks)  # CUDA's allocator peak
    if evaluated:
        best = max(evaluated, key=lambda r: r["test_acc"])  # the first of equals
        summary |= {
            "best_test_acc": best["test_acc"],
            "best_epoch": int(best["epoch"]),
            "final_test_acc": evaluated[-1]["test_acc"],
            "test_s_per_epoch": sum(r["test_s"] for r in evaluated) / len(evaluated),
        }
        validated = [row for row in evaluated if row.get("val_acc") is not None]
        if validated:  # the epoch a search would pick, and the test top-1 it would get
            chosen = max(validated, key=lambda r: r["val_acc"])
            summary |= {
                "best_val_acc": chosen["val_acc"],
                "best_val_epoch": int(chosen["epoch"]),
                "test_acc_at_best_val": chosen["test_acc"],
            }
        if best.get("confusion") is not None:
            names = classes or [str(i) for i in range(len(best["confusion"]))]
            summary["confusion"] = best["confusion"]
            summary["per_class_top1"] = per_class_top1(best["confusion"], names)
    return summary


def history_csv(history: list[dict[str, Any]]) -> str:
    """The history's numbers as CSV (a confusion matrix stays in the checkpoint and summary)."""
    history = [{k: v for k, v in row.items() if not isinstance(v, list)} for row in history]
    columns = list(dict.fromkeys(key for row in history for key in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return out.getvalue()


def read_history(path: Path) -> list[dict[str, float]]:
    if not path.exists():
        return []
    with open(path, newline="") as file:
        rows = csv.DictReader(file)
        return [{k: float(v) for k, v in r.items() if v != ""} for r in rows]
