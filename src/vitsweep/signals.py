"""Every signal vitsweep handles, in one place.

- ``sigterm_interrupts``: SIGTERM (what SLURM and ``kill`` send) stops a run or a sweep the way
  Ctrl-C does, as a ``KeyboardInterrupt`` whose message names the signal.
- ``signals_held``: Ctrl-C and SIGTERM wait while an epoch's files are written, so the history
  row, the summary and the checkpoint always agree.
- ``WarningWatch``: a scheduler's warning that the time limit is near (USR2, which submitit
  asks SLURM for, ``signal_delay_s`` before it) stops the job as SIGTERM does, its last whole
  epoch kept; once the record says so, the launcher's own handler (submitit's: requeue the job,
  or say that no requeue is left) is handed the signal.
- ``OrphanWatch``: a job running in a worker process of a parallel launcher (joblib) stops
  itself, as if interrupted, when the sweep's main process is gone (killed with ``kill -9``,
  say), instead of training on for nobody; then the worker ends.

Python runs signal handlers in the main thread only, so each of these leaves signals alone
when it is entered from another thread.
"""

import contextlib
import os
import platform
import signal
import threading
from collections.abc import Iterator
from typing import Any

from vitsweep.errors import end_orphaned_worker

SWEEP_PID = "VITSWEEP_SWEEP_PID"  # the main process of a running sweep, for its workers: pid@host
# What a scheduler sends before the time limit: submitit's SLURM jobs ask for USR2.
WARNINGS = (signal.SIGUSR2,) if hasattr(signal, "SIGUSR2") else ()  # none on Windows


def raise_interrupt(signum: int, frame: object) -> None:
    """A signal handler that stops the program as Ctrl-C does."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def interrupt_on_sigterm() -> Any:
    """From now on, SIGTERM interrupts as Ctrl-C does; returns the handler it replaced, for
    ``restore_sigterm`` (None off the main thread, where nothing was changed)."""
    if not _in_main_thread():
        return None
    return signal.signal(signal.SIGTERM, raise_interrupt)


def restore_sigterm(previous: Any) -> None:
    if previous is not None and _in_main_thread():
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Let SIGTERM stop the block the way Ctrl-C does; the previous handler comes back after."""
    previous = interrupt_on_sigterm()
    try:
        yield
    finally:
        restore_sigterm(previous)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold Ctrl-C, SIGTERM and a time-limit warning back for the duration; one that arrives
    is raised again right after. (Swapping the handlers holds them back where masking would
    not: Python runs the handler in the main thread whichever thread the OS delivered the
    signal to.)"""
    if not _in_main_thread():
        yield
        return
    pending: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM, *WARNINGS)
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


class WarningWatch:
    """A job of a launcher that handles the time-limit warning (submitit's SLURM jobs: USR2):
    the warning interrupts the job as SIGTERM does, so its record says ``interrupted`` with its
    last whole epoch saved, instead of the launcher's handler ending it mid-epoch; then
    ``hand_on`` gives the signal to that handler, which requeues the job (it carries on from
    that epoch) or, with no requeue left, ends it. Where nobody handles the signal, nothing
    changes."""

    def __init__(self) -> None:
        self.launchers: Any = None
        self.caught: int | None = None

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        if not WARNINGS or not _in_main_thread() or not callable(signal.getsignal(WARNINGS[0])):
            yield
            return

        def warned(signum: int, frame: object) -> None:
            self.caught = signum
            raise_interrupt(signum, frame)

        self.launchers = signal.signal(WARNINGS[0], warned)
        try:
            yield
        finally:
            signal.signal(WARNINGS[0], self.launchers)

    def hand_on(self) -> None:
        """The launcher's handler, given the warning that came (once the record is written)."""
        if self.caught is not None and callable(self.launchers):
            caught, self.caught = self.caught, None
            self.launchers(caught, None)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


class OrphanWatch:
    """In a worker process of a sweep (its main process named in ``VITSWEEP_SWEEP_PID``, set
    by the sweep before it launches jobs): once that main process is gone, or this one was
    handed to another parent, interrupt the job (SIGTERM to this process), and once the job
    has recorded that, end the worker (``exit_if_orphaned``), which nobody will give work to
    again. In the sweep's own process, nothing."""

    def __init__(self, poll_s: float = 1.0) -> None:
        self.poll_s = poll_s
        self.orphaned = False

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        pid, _, host = os.environ.get(SWEEP_PID, "").partition("@")
        sweep_pid = int(pid) if pid.isdigit() else 0
        # Only a worker on the sweep's own machine can see its process (a SLURM job cannot).
        local = host == platform.node()
        if sweep_pid in (0, os.getpid()) or not local or not _in_main_thread():
            yield
            return
        parent, done = os.getppid(), threading.Event()

        def watch() -> None:
            while not done.wait(self.poll_s):
                if not _alive(sweep_pid) or os.getppid() != parent:
                    self.orphaned = True
                    os.kill(os.getpid(), signal.SIGTERM)
                    return

        threading.Thread(target=watch, name="vitsweep-orphan-watch", daemon=True).start()
        try:
            yield
        finally:
            done.set()

    def exit_if_orphaned(self) -> None:
        if self.orphaned:
            end_orphaned_worker()
