"""How a run stops when it does not complete, and what the user is told.

``ConfigError`` is a bad configuration or missing input: one line, no traceback, since it
is the input that is wrong, not the code. ``Diverged`` is a non-finite loss. Ctrl-C and
SIGTERM (SLURM preemption) interrupt. Each ends as a status in the run's summary.json.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vitsweep.record import RunRecord

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration or input problem the user can fix; the message names the fix."""


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""

    def __init__(self, step: int) -> None:
        super().__init__(f"non-finite loss at step {step}")
        self.step = step


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Let SIGTERM (what SLURM and `kill` send) stop a run the way Ctrl-C does."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread (a threaded launcher): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def find_config_error(err: BaseException | None) -> ConfigError | None:
    """The ConfigError behind ``err``, also when Hydra's instantiate wrapped it."""
    while err is not None and not isinstance(err, ConfigError):
        err = err.__cause__
    return err


@contextlib.contextmanager
def reported_failures(record: RunRecord, multirun: bool) -> Iterator[None]:
    """Record why a run stopped, and tell the user in one line when it was their input.

    A ``ConfigError`` prints one line and exits 2 (a single run) or marks the job failed and
    lets the sweep go on (a multirun); ``Diverged`` likewise, with exit 1. An interrupt is
    recorded and ends the process (exit 130) in either case: the user asked to stop. Any
    other exception is a bug: recorded, then re-raised with its traceback in a single run,
    and logged with it in a multirun.
    """
    try:
        yield
    except KeyboardInterrupt as err:
        record.update(status="interrupted", error=f"interrupted ({err or 'SIGINT'})")
        hint = "rerun with trainer.resume=true and the same run directory"
        print(
            f"interrupted: last finished epoch saved in {record.run_dir}; {hint}", file=sys.stderr
        )
        raise SystemExit(130) from None
    except Diverged as err:
        record.update(status="diverged", error=str(err), diverged_step=err.step)
        print(f"diverged: {err}", file=sys.stderr)
        if not multirun:
            raise SystemExit(1) from None
    except Exception as err:
        if (config_error := find_config_error(err)) is not None:
            record.update(status="failed", error=str(config_error))
            print(f"error: {config_error}", file=sys.stderr)
            if not multirun:
                raise SystemExit(2) from None
            return
        record.update(status="failed", error=f"{type(err).__name__}: {err}")
        if not multirun:
            raise
        log.exception("job failed; the sweep goes on")
