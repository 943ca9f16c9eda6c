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

import contextlib
import csv
import io
import json
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from vitsweep.checkpoint import read_checkpoint, restore_checkpoint, save_checkpoint
from vitsweep.errors import ConfigError
from vitsweep.files import DirectoryLock, write_atomic

DONE = ("completed", "sized")  # a resumed run in one of these states has nothing left to do


# Settings that do not change what a run computes, so a resume may differ in them: how it is
# shown and logged, where its data lives, the command line it was typed as, its sweep's name
# (checked by the sweep itself) and how that sweep's table is built.
NOT_COMPARED = {
    "trainer": {"resume", "progress", "log_every"},
    "data": {"root", "workers"},
    "": {"overrides", "logger", "sweep_name", "report", "dry_run", "from_data"},
}


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    """What must match for a run to be resumed: the config without ``NOT_COMPARED``."""
    kept = {k: v for k, v in config.items() if k not in NOT_COMPARED[""]}
    for block, keys in NOT_COMPARED.items():
        if block and isinstance(kept.get(block), dict):
            kept[block] = {k: v for k, v in kept[block].items() if k not in keys}
    return kept


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested configs."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = list(dict.fromkeys([*a, *b]))
        return [d for k in keys for d in differences(a.get(k), b.get(k), f"{path}{k}.")]
    return [] if a == b else [f"{path.rstrip('.')} ({a!r} -> {b!r})"]


def summarise_history(history: list[dict[str, float]]) -> dict[str, float]:
    """Best and final accuracy, and mean per-epoch costs, from the per-epoch rows."""
    if not history:
        return {}
    evaluated = [row for row in history if row.get("test_acc") is not None]
    summary = {
        "epochs_done": int(history[-1]["epoch"]),
        "train_s_per_epoch": sum(r["train_s"] for r in history) / len(history),
        "train_img_per_s": sum(r["train_img_per_s"] for r in history) / len(history),
        "peak_mem_mb": max(r["peak_mem_mb"] for r in history),
        "final_train_loss": history[-1]["train_loss"],
    }
    if evaluated:
        best = max(evaluated, key=lambda r: r["test_acc"])  # the first of equals
        summary |= {
            "best_test_acc": best["test_acc"],
            "best_epoch": int(best["epoch"]),
            "final_test_acc": evaluated[-1]["test_acc"],
            "test_s_per_epoch": sum(r["test_s"] for r in evaluated) / len(evaluated),
        }
    return summary


RENAMED = {"eval_s": "test_s", "eval_img_per_s": "test_img_per_s",
           "eval_s_per_epoch": "test_s_per_epoch"}  # fmt: skip  # names before 0.2


def with_current_names(row: dict[str, Any]) -> dict[str, Any]:
    return {RENAMED.get(k, k): v for k, v in row.items()}


def history_csv(history: list[dict[str, float]]) -> str:
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
        return [with_current_names({k: float(v) for k, v in r.items() if v != ""}) for r in rows]


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back for the duration; one that arrives is raised again right
    after. (Python runs signal handlers in the main thread, whichever thread the OS delivered
    the signal to, so swapping the handlers holds them back where masking would not.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {
        sig: signal.signal(sig, lambda signum, frame: pending.append(signum)) for sig in held
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if pending:
            signal.raise_signal(pending[0])


class RunRecord:
    """A claimed run directory. Build one with ``RunRecord.claim``; ``release`` gives the
    directory (its lock and log file) back at the end."""

    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        self.run_dir = Path(run_dir)
        self.config = config
        self.history: list[dict[str, float]] = []
        self.summary: dict[str, Any] = {"status": "running"}
        self.resume_state: dict[str, Any] | None = None  # a checkpoint to carry on from
        self.lock = DirectoryLock(self.run_dir)
        self.log_handler: logging.Handler | None = None

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    @classmethod
    def claim(cls, run_dir: Path, config: dict[str, Any], resume: bool) -> "RunRecord":
        """Take ``run_dir`` for this run, or refuse with one line and leave it untouched.

        Without ``resume``, a directory that holds a run is refused. With it, the run must
        have the same config; it carries on from its checkpoint, or is skipped if it is done.
        A directory with nothing worth keeping (none, or a run that failed before training)
        is started afresh either way."""
        record = cls(run_dir, config)
        record.run_dir.mkdir(parents=True, exist_ok=True)
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
        changed = differences(comparable(earlier["config"]), comparable(self.config))
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
        self.log_handler = logging.FileHandler(self.run_dir / "run.log")
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

    def end_epoch(self, row: dict[str, float], model, optimizer, scheduler, loader) -> None:
        """The epoch's history row, summary and checkpoint, written as one: an interrupt
        that arrives meanwhile lands after all three."""
        with signals_held():
            self.history.append(row)
            write_atomic(self.run_dir / "history.csv", history_csv(self.history))
            self.update(**summarise_history(self.history))
            save_checkpoint(
                self.checkpoint_path,
                int(row["epoch"]),
                model,
                optimizer,
                scheduler,
                loader,
                self.history,
            )

    def restore(self, state: dict[str, Any], model, optimizer, scheduler, loader) -> int:
        """Carry on from a checkpoint: every state, and the history up to its epoch."""
        epoch = restore_checkpoint(state, model, optimizer, scheduler, loader)
        self.history = [with_current_names(row) for row in state["history"]]
        return epoch

    def release(self) -> None:
        if self.log_handler is not None:
            logging.getLogger().removeHandler(self.log_handler)
            self.log_handler.close()
            self.log_handler = None
        self.lock.release()
