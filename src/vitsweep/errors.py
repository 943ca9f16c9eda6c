"""The ways a run stops that are not bugs, and the one way to say what was wrong.

``ConfigError`` is a bad configuration or missing input: one line, no traceback, since it is
the input that is wrong, not the code. ``Diverged`` is a non-finite loss. ``WriteError`` is a
record file that could not be written (a full disk, a directory made read-only): one line
naming the file.
"""

from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration or input problem the user can fix; the message names the fix."""


class Diverged(RuntimeError):
    """The loss (``what``: the training loss, or the test loss after it) became NaN or
    infinite."""

    def __init__(self, step: int, what: str = "loss") -> None:
        super().__init__(f"non-finite {what} at step {step}")
        self.step = step


class Pruned(RuntimeError):
    """A search stopped this trial after an epoch: its validation top-1 was not promising."""

    def __init__(self, epoch: int) -> None:
        super().__init__(f"pruned after epoch {epoch}")
        self.epoch = epoch


class WriteError(OSError):
    """A file of the record could not be written; nothing half-written was left behind."""

    def __init__(self, path: Path, err: OSError) -> None:
        super().__init__(err.errno, f"cannot write {path}: {err.strerror or err}")
        self.path = path

    def __str__(self) -> str:
        return self.strerror


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
    for field, value, ok, allowed in rules:
        require(ok, f"{prefix}.{field}", value, allowed)
