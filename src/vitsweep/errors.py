"""Every way a run, a sweep or a report stops, described once: its status, its line, its exit.

Each stop that is not a bug is an exception type carrying what the record keeps (``status`` and
``record_fields``), what the user is told (``user_line``) and the exit code of the process
(``exit_code``). ``stop_of`` maps any exception (an interrupt and a bug included) to a ``Stop``,
and ``end_with`` carries a ``Stop`` out: the line on stderr and the exit. A run, a sweep's
callbacks, a search and ``src/report.py`` all end through these two.

``ConfigError`` is a bad configuration or missing input: one line, no traceback, since it is
the input that is wrong, not the code. ``Diverged`` is a non-finite loss. ``WriteError`` is a
record file that could not be written (a full disk, a directory made read-only).
"""

import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("vitsweep.run")

INTERRUPTED = 130  # the exit code of a process stopped by Ctrl-C or SIGTERM, as a shell's


@dataclass(frozen=True)
class Stop:
    """What one stop means for the record, the user and the process."""

    status: str  # the record's status: failed, diverged, pruned, interrupted, ...
    record: dict[str, Any] = field(default_factory=dict)  # what else the record keeps
    line: str | None = None  # told on stderr; None: nothing (or ``log_line`` at info)
    exit_code: int | None = None  # of a single run; None: the process goes on
    ends_sweep: bool = False  # the exit applies to a sweep's jobs too (not only a single run)
    traceback: bool = False  # a bug: its traceback, raised in a single run, logged in a sweep
    log_line: str | None = None


class Stopping(Exception):
    """A stop that is not a bug. Subclasses set ``status``, ``exit_code`` and where their line
    goes (``told``), and may say more in ``record_fields`` and ``user_line``."""

    status = "failed"  # what the record says
    exit_code: int | None = 1  # a single run's; None: the process goes on
    told = "stderr"  # the line on stderr, or "log": in the log only (at info)

    def record_fields(self) -> dict[str, Any]:
        return {"error": str(self)}

    def user_line(self, where: Path | None, epochs: int) -> str | None:
        return f"error: {self}"

    def stop(self, where: Path | None = None, epochs: int = 0) -> Stop:
        line = self.user_line(where, epochs)
        on_stderr = self.told == "stderr"
        return Stop(
            self.status,
            self.record_fields(),
            line if on_stderr else None,
            self.exit_code,
            log_line=None if on_stderr else line,
        )


class ConfigError(Stopping, ValueError):
    """A configuration or input problem the user can fix; the message names the fix."""

    exit_code = 2


class ReportError(Stopping, RuntimeError):
    """A sweep's table that could not be built (its records are kept)."""


class Diverged(Stopping, RuntimeError):
    """The loss (``what``: the training loss, or the test loss after it) became NaN or
    infinite."""

    status = "diverged"

    def __init__(self, step: int, what: str = "loss") -> None:
        super().__init__(f"non-finite {what} at step {step}")
        self.step = step

    def record_fields(self) -> dict[str, Any]:
        return {"error": str(self), "diverged_step": self.step}

    def user_line(self, where: Path | None, epochs: int) -> str:
        return f"diverged: {self}"


class Pruned(Stopping, RuntimeError):
    """A search stopped this trial after an epoch: its validation top-1 was not promising."""

    status = "pruned"
    exit_code = None
    told = "log"  # a search prunes on purpose: nothing went wrong

    def __init__(self, epoch: int) -> None:
        super().__init__(f"pruned after epoch {epoch}")
        self.epoch = epoch

    def record_fields(self) -> dict[str, Any]:
        return {"pruned_epoch": self.epoch}

    def user_line(self, where: Path | None, epochs: int) -> str:
        return f"{where}: {self}"


class WriteError(Stopping, OSError):
    """A file of the record could not be written; nothing half-written was left behind."""

    def __init__(self, path: Path, err: OSError) -> None:
        super().__init__(err.errno, f"cannot write {path}: {err.strerror or err}")
        self.path = path

    def __str__(self) -> str:
        return self.strerror

    def user_line(self, where: Path | None, epochs: int) -> str:
        return (
            f"error: {self} (recorded up to epoch {epochs}; make room, then rerun with "
            "trainer.resume=true: it carries on from the last whole checkpoint)"
        )


class Unfinished(Stopping, RuntimeError):
    """A sweep whose table is written but some of whose jobs did not finish."""

    status = "unfinished"

    def user_line(self, where: Path | None, epochs: int) -> None:
        return None  # the table and its notes said it


class Listed(Stopping, RuntimeError):
    """A dry run that listed its jobs and ran none: exit 0, or 2 if a job would fail."""

    status = "listed"

    def __init__(self, failed: int) -> None:
        super().__init__(f"{failed} jobs would fail")
        self.exit_code = 2 if failed else 0

    def user_line(self, where: Path | None, epochs: int) -> None:
        return None  # the listing said it


def find_stop(err: BaseException | None) -> Stopping | None:
    """The ``Stopping`` behind ``err``, also when a library (Hydra's instantiate) wrapped it."""
    while err is not None and not isinstance(err, Stopping):
        err = err.__cause__
    return err


def stop_of(err: BaseException, where: Path | None = None, epochs: int = 0) -> Stop:
    """Any exception as a stop. ``where``: the run directory; ``epochs``: how many are recorded.
    An interrupt stops a sweep too (exit 130: the user asked to stop); a bug is a traceback."""
    if isinstance(err, KeyboardInterrupt):
        line = (
            f"interrupted: the last finished epoch is saved in {where}; rerun the same "
            "command with trainer.resume=true to carry on"
        )
        if str(err) == "SIGUSR2":  # a scheduler's time-limit warning: the job requeues itself
            line = f"interrupted near the time limit: the last finished epoch is saved in {where}"
        return Stop(
            "interrupted",
            {"error": f"interrupted ({str(err) or 'SIGINT'})"},
            line,
            INTERRUPTED,
            ends_sweep=True,
        )
    known = find_stop(err)
    if known is not None:
        return known.stop(where, epochs)
    return Stop("failed", {"error": f"{type(err).__name__}: {err}"}, traceback=True)


def tell(stop: Stop) -> Stop:
    """Say a stop: its line on stderr, or its log line at info."""
    if stop.line:
        print(stop.line, file=sys.stderr)
    if stop.log_line:
        log.info(stop.log_line)
    return stop


def end_with(err: BaseException, multirun: bool = False, **context: Any) -> None:
    """Tell the user how ``err`` stopped things and end the process where its stop says so:
    a single run (or a sweep's start, or ``report.py``) exits with the stop's code; a sweep's
    job goes on to the next one unless the stop ends sweeps too. A bug is raised again in a
    single run, logged with its traceback in a sweep."""
    stop = tell(stop_of(err, **context))
    if stop.traceback:
        if not multirun:
            raise err
        log.error("job failed; the sweep goes on", exc_info=err)
    elif stop.exit_code is not None and (stop.ends_sweep or not multirun):
        raise SystemExit(stop.exit_code) from None


def exit_code_of(err: BaseException) -> int:
    """The exit code a stop gives a command that returns it (``src/report.py``), its line told."""
    stop = tell(stop_of(err))
    if stop.traceback:
        raise err
    return stop.exit_code or 0


def end_orphaned_worker() -> None:
    """A sweep's worker process whose sweep is gone, its record written: it ends at once, as
    interrupted (its pool is gone with the sweep: there is nothing to return to)."""
    os._exit(INTERRUPTED)


def a_few(items: Iterable[str], most: int = 3, sep: str = ", ") -> str:
    """The first ``most`` of ``items`` for a message, with "..." where there are more."""
    items = list(items)
    return sep.join(items[:most]) + (f"{sep}..." if len(items) > most else "")


def first_line(err: BaseException) -> str:
    """An exception in one line: its message's first line, or its type where it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def require(ok: bool, field: str, value: Any, allowed: str) -> None:
    """Raise a one-line ``ConfigError`` naming the field, its value and what it may be."""
    if not ok:
        raise ConfigError(f"{field}={value!r}: expected {allowed}")


def require_each(prefix: str, rules: list[tuple[str, Any, bool, str]]) -> None:
    """``require`` for a table of (field, value, ok, allowed) rules under one prefix."""
    for field_, value, ok, allowed in rules:
        require(ok, f"{prefix}.{field_}", value, allowed)
