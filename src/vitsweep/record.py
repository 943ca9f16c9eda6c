"""The run record: what every run leaves in its own directory, and the rules that keep it.

    config.yaml    the resolved config (every interpolation filled in), the group choices and
                   the command line's overrides
    history.csv    one row per epoch
    summary.json   size, cost, best/final accuracy, mean epoch times, status
    checkpoint.pt  the state to resume from (vitsweep.checkpoint)
    run.log        the log;  run.lock  held by the live process

A directory is claimed before anything is written into it: one that holds another run is
refused (unless it is resumed with the same config), and one that a live process holds is
refused. Files are replaced atomically, and an epoch's history row and checkpoint are written
with Ctrl-C and SIGTERM held back, so they always agree.
"""

import csv
import dataclasses
import io
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from vitsweep.checkpoint import read_checkpoint, restore_checkpoint, save_checkpoint
from vitsweep.errors import ConfigError
from vitsweep.files import DirectoryLock, write_atomic
from vitsweep.signals import signals_held

DONE = ("completed", "sized")  # a resumed run in one of these states has nothing left to do
FINISHED = (*DONE, "pruned")  # ended as it should: a search stops hopeless trials on purpose


def free_on_resume(default: Any = None) -> Any:
    """A settings field that does not change what a run computes (how it is shown, logged or
    reported, where its data lives): a resumed run or sweep may differ in it."""
    return dataclasses.field(default=default, metadata={"free_on_resume": True})


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested configs."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = list(dict.fromkeys([*a, *b]))
        return [d for k in keys for d in differences(a.get(k), b.get(k), f"{path}{k}.")]
    return [] if a == b else [f"{path.rstrip('.')} ({a!r} -> {b!r})"]


def per_class_top1(confusion: list[list[int]], classes: list[str]) -> dict[str, float | None]:
    """Each true class's top-1 from a confusion matrix (rows: true, columns: predicted)."""
    return {name: (row[i] / sum(row) if sum(row) else None)
            for i, (name, row) in enumerate(zip(classes, confusion))}  # fmt: skip


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
            summary |= {"best_val_acc": chosen["val_acc"], "best_val_epoch": int(chosen["epoch"]),
                        "test_acc_at_best_val": chosen["test_acc"]}  # fmt: skip
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


class RunRecord:
    """A claimed run directory. Build one with ``RunRecord.claim``; ``release`` gives the
    directory (its lock and log file) back at the end."""

    def __init__(
        self,
        run_dir: Path,
        config: dict[str, Any],
        compared: Callable[[dict[str, Any]], dict[str, Any]] = dict,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.config = config
        self.compared = compared  # what of a config must match for a resume
        self.history: list[dict[str, float]] = []
        self.summary: dict[str, Any] = {"status": "running"}
        self.resume_state: dict[str, Any] | None = None  # a checkpoint to carry on from
        self.lock = DirectoryLock(self.run_dir)
        self.log_handler: logging.Handler | None = None

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    @classmethod
    def claim(
        cls,
        run_dir: Path,
        config: dict[str, Any],
        resume: bool,
        compared: Callable[[dict[str, Any]], dict[str, Any]] = dict,
    ) -> "RunRecord":
        """Take ``run_dir`` for this run, or refuse with one line and leave it untouched.

        Without ``resume``, a directory that holds a run is refused. With it, the run must
        have the same config (``compared(config)`` of both must match: the settings a resume
        may change left out); it carries on from its checkpoint, or is skipped if it is done.
        A directory with nothing worth keeping (none, or a run that failed before training)
        is started afresh either way."""
        record = cls(run_dir, config, compared)
        try:
            record.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"cannot write the run directory {run_dir}: {err.strerror}") from None
        record.lock.acquire()  # first: no other process can claim it while this one looks
        try:
            earlier = record._read_earlier()
            if earlier is not None:
                record._check_resumable(earlier, resume)
            if earlier is not None and earlier["summary"].get("status") in DONE:
                record.summary = earlier["summary"]  # nothing left to do: nothing rewritten
            else:
                record.lock.mark_owner()
                record._start(earlier)
        except BaseException:
            record.release()
            raise
        return record

    def _read_earlier(self) -> dict[str, Any] | None:
        """The run already in the directory, if it holds one worth keeping."""
        config_path, summary_path = self.run_dir / "config.yaml", self.run_dir / "summary.json"
        try:
            config = yaml.safe_load(config_path.read_text()) if config_path.exists() else {}
            summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
            history = read_history(self.run_dir / "history.csv")
            if not isinstance(config, dict) or not isinstance(summary, dict):
                raise ValueError("not a mapping")
        except (OSError, ValueError, yaml.YAMLError) as err:
            raise ConfigError(
                f"{self.run_dir} holds files of a run that cannot be read ({err}); "
                "choose another directory"
            ) from None
        started = bool(history) or self.checkpoint_path.exists()
        if not started and summary.get("status") in (None, "failed", "running"):
            return None  # it never trained: nothing to keep
        return {"config": config, "summary": summary, "epochs": len(history)}

    def _check_resumable(self, earlier: dict[str, Any], resume: bool) -> None:
        status, epochs = earlier["summary"].get("status"), earlier["epochs"]
        held = f"{self.run_dir} already holds a run ({status}, {epochs} epochs)"
        if not resume:
            raise ConfigError(
                f"{held}; add trainer.resume=true to continue it with the same "
                "config, or choose a new directory"
            )
        changed = differences(self.compared(earlier["config"]), self.compared(self.config))
        if changed:
            shown = "; ".join(changed[:3]) + ("; ..." if len(changed) > 3 else "")
            raise ConfigError(
                f"{held} with another config ({shown}); resume it with the "
                "same overrides, or choose a new directory"
            )
        if status in DONE:
            return
        if self.checkpoint_path.exists():
            self.resume_state = read_checkpoint(self.checkpoint_path)
        elif epochs:
            raise ConfigError(
                f"{held} but no checkpoint.pt to resume from; restore it from a copy, or start "
                "a new run directory"
            )

    def _start(self, earlier: dict[str, Any] | None) -> None:
        """Write the config and a fresh (or carried-on) summary; open run.log."""
        try:
            write_atomic(self.run_dir / "config.yaml", yaml.safe_dump(self.config, sort_keys=False))
        except OSError as err:
            raise ConfigError(f"cannot write into {self.run_dir}: {err.strerror}") from None
        if earlier is not None:
            kept = earlier["summary"]
            self.summary = {k: v for k, v in kept.items() if k not in ("error", "diverged_step")}
            if self.summary.get("status") not in DONE:
                self.summary["status"] = "running"
        self.update()
        self.log_handler = RunLog(self.run_dir / "run.log")
        format_ = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
        self.log_handler.setFormatter(logging.Formatter(format_))
        logging.getLogger().addHandler(self.log_handler)

    def note_from_data(self, data: Any, classes: list[str] | None) -> None:
        """Keep what was read from the data itself (channels, classes, normalisation) with
        the config, as ``from_data``."""
        found = {k: getattr(data, k) for k in ("channels", "num_classes", "mean", "std")}
        self.config["from_data"] = found | ({"classes": list(classes)} if classes else {})
        write_atomic(self.run_dir / "config.yaml", yaml.safe_dump(self.config, sort_keys=False))

    @property
    def done(self) -> bool:
        return self.summary.get("status") in DONE

    def update(self, **fields: Any) -> None:
        self.summary.update(fields)
        write_atomic(self.run_dir / "summary.json", json.dumps(self.summary, indent=2) + "\n")

    def _write_history(self, history: list[dict[str, float]]) -> None:
        write_atomic(self.run_dir / "history.csv", history_csv(history))
        self.history = history
        self.update(**summarise_history(history, self.summary.get("classes")))

    def end_epoch(self, row: dict[str, float], model, optimizer, scheduler, loader) -> None:
        """The epoch's checkpoint, history row and summary, written as one: an interrupt
        that arrives meanwhile lands after all three. The checkpoint (the largest file) goes
        first, so a disk that fills up mid-write leaves the previous epoch whole everywhere;
        and the checkpoint, holding the history too, is what a resume carries on from."""
        history = [*self.history, row]
        with signals_held():
            save_checkpoint(
                self.checkpoint_path, int(row["epoch"]), model, optimizer, scheduler, loader,
                history,
            )  # fmt: skip
            self._write_history(history)

    def restore(self, state: dict[str, Any], model, optimizer, scheduler, loader) -> int:
        """Carry on from a checkpoint: every state, and the history up to its epoch, written
        again (history.csv and the summary's numbers, whatever became of them)."""
        epoch = restore_checkpoint(state, model, optimizer, scheduler, loader)
        self._write_history(list(state["history"]))
        return epoch

    def complete(self, epochs: int) -> None:
        """Mark the run completed: only with the numbers of all its ``epochs``."""
        done = self.summary.get("epochs_done")
        if done != epochs or self.summary.get("best_test_acc") is None:
            raise RuntimeError(
                f"{self.run_dir}: training ended after epoch {done} of {epochs} "
                "without its numbers; not marked completed"
            )
        self.update(status="completed")

    def release(self) -> None:
        if self.log_handler is not None:
            logging.getLogger().removeHandler(self.log_handler)
            self.log_handler.close()
            self.log_handler = None
        self.lock.release()


class RunLog(logging.FileHandler):
    """run.log. Once a line cannot be written (a full disk), the file is not tried again and
    no traceback is printed: the run goes on, or stops with its own one line."""

    broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.broken:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        self.broken = True
