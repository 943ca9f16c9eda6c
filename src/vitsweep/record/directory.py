"""The run directory: what every run leaves in its own directory, claimed, locked and written.

    config.yaml    the resolved config (every interpolation filled in), the group choices and
                   the command line's overrides
    history.csv    one row per epoch
    summary.json   size, cost, best/final accuracy, mean epoch times, status
    checkpoint.pt  the state to resume from (vitsweep.checkpoint)
    run.log        the log;  run.lock  held by the live process

A directory is claimed before anything is written into it: one that holds another run is
refused unless it is resumed with the same config (``vitsweep.record.resume`` decides), and
one that a live process holds is refused. Files are replaced atomically, and an epoch's
history row and checkpoint are written with Ctrl-C and SIGTERM held back, so they always agree.
A ``RunRecord`` is a training hook (``vitsweep.hooks.Hook``): it keeps every epoch ``fit``
hands it.
"""

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from vitsweep.checkpoint import Training, read_checkpoint, save_checkpoint
from vitsweep.errors import ConfigError
from vitsweep.files import DirectoryLock, write_atomic
from vitsweep.hooks import Hook
from vitsweep.record.resume import Earlier, decide_resume
from vitsweep.record.summary import DONE, history_csv, read_history, summarise_history
from vitsweep.signals import signals_held


class RunRecord(Hook):
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
    def claim(
        cls, run_dir: Path, config: dict[str, Any], resume: bool, restarted: bool = False
    ) -> "RunRecord":
        """Take ``run_dir`` for this run, or refuse with one line and leave it untouched:
        started afresh, carried on from its checkpoint, or left as it is when it is done
        (``vitsweep.record.resume.decide_resume``; ``restarted``: by its scheduler)."""
        record = cls(run_dir, config)
        try:
            record.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"cannot write the run directory {run_dir}: {err.strerror}") from None
        record.lock.acquire()  # first: no other process can claim it while this one looks
        try:
            earlier = record.read_earlier()
            action = decide_resume(record.run_dir, earlier, config, resume, restarted)
            if action == "leave":
                record.summary = earlier.summary  # nothing left to do: nothing rewritten
            else:
                if action == "carry_on" and earlier.checkpoint:
                    record.resume_state = read_checkpoint(record.checkpoint_path)
                record.lock.mark_owner()
                record._start(earlier if action == "carry_on" else None)
        except BaseException:
            record.release()
            raise
        return record

    def read_earlier(self) -> Earlier | None:
        """The run already in the directory, as its files say (None: no files of a run)."""
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
        if not (config or summary or history or self.checkpoint_path.exists()):
            return None
        return Earlier(config, summary, len(history), self.checkpoint_path.exists())

    def _start(self, earlier: Earlier | None) -> None:
        """Write the config and a fresh (or carried-on) summary; open run.log."""
        try:
            write_atomic(self.run_dir / "config.yaml", yaml.safe_dump(self.config, sort_keys=False))
        except OSError as err:
            raise ConfigError(f"cannot write into {self.run_dir}: {err.strerror}") from None
        if earlier is not None:
            kept = earlier.summary
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

    def end_epoch(self, row: dict[str, float], training: Training) -> None:
        """The epoch's checkpoint, history row and summary, written as one: an interrupt
        that arrives meanwhile lands after all three. The checkpoint (the largest file) goes
        first, so a disk that fills up mid-write leaves the previous epoch whole everywhere;
        and the checkpoint, holding the history too, is what a resume carries on from."""
        history = [*self.history, row]
        with signals_held():
            save_checkpoint(self.checkpoint_path, int(row["epoch"]), training, history)
            self._write_history(history)

    def on_resume(self, history: list[dict[str, Any]]) -> None:
        """Carrying on from a checkpoint: its history written again (history.csv and the
        summary's numbers, whatever became of them)."""
        self._write_history(list(history))

    def on_epoch(self, row: dict[str, Any], step: int, training: Training) -> None:
        """Each epoch kept: its checkpoint, history row and summary (``end_epoch``)."""
        self.end_epoch(row, training)

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
    no traceback is printed, not even when it is closed: the run goes on, or stops with its own
    one line."""

    broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.broken:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        self.broken = True

    def flush(self) -> None:
        try:
            super().flush()
        except OSError:
            self.broken = True

    def close(self) -> None:
        try:
            super().close()
        except OSError:  # its buffer could not be written out: the log is given up
            self.broken = True
