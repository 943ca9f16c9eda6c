"""The two ways a run stops that are not bugs, and the one way to say what was wrong.

``ConfigError`` is a bad configuration or missing input: one line, no traceback, since it is
the input that is wrong, not the code. ``Diverged`` is a non-finite loss.
"""

import signal
from typing import Any


class ConfigError(ValueError):
    """A configuration or input problem the user can fix; the message names the fix."""


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""

    def __init__(self, step: int) -> None:
        super().__init__(f"non-finite loss at step {step}")
        self.step = step


def require(ok: bool, field: str, value: Any, allowed: str) -> None:
    """Raise a one-line ``ConfigError`` naming the field, its value and what it may be."""
    if not ok:
        raise ConfigError(f"{field}={value!r}: expected {allowed}")


def require_each(prefix: str, rules: list[tuple[str, Any, bool, str]]) -> None:
    """``require`` for a table of (field, value, ok, allowed) rules under one prefix."""
    for field, value, ok, allowed in rules:
        require(ok, f"{prefix}.{field}", value, allowed)


def raise_interrupt(signum: int, frame: object) -> None:
    """A signal handler that stops the program as Ctrl-C does (for SIGTERM: SLURM, kill)."""
    raise KeyboardInterrupt(signal.Signals(signum).name)
