"""Files that are never seen half-written, names that are safe as file names, and a lock that
keeps two processes out of one run directory."""

import contextlib
import fcntl
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import IO

from vitsweep.errors import ConfigError


def write_atomic(path: Path, content: str | Callable[[Path], object]) -> None:
    """Replace ``path`` in one step: write a hidden temporary file beside it, then rename it
    over ``path``. ``content`` is the text, or a function that writes a file at a given path
    (``torch.save``, ``savefig``). A crash mid-write leaves the previous file whole."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(content, str):
        tmp.write_text(content)
    else:
        content(tmp)
    os.replace(tmp, path)


def slug(label: str) -> str:
    """A label as a file name: 'NVIDIA H200' -> 'nvidia_h200'."""
    return re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_").lower()


class DirectoryLock:
    """An exclusive lock on a directory (``run.lock``), held while this process works in it.

    The operating system drops a ``flock`` when its process ends, however it ends, so a run
    killed with ``kill -9`` never leaves a lock that blocks the resume.
    """

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / "run.lock"
        self.file: IO[str] | None = None

    def holder(self) -> str | None:
        """The pid of the live process holding the lock, or None; takes nothing."""
        if not self.path.exists():
            return None
        with open(self.path) as file:
            try:
                fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return file.read().strip() or "unknown"
            fcntl.flock(file, fcntl.LOCK_UN)
        return None

    def acquire(self) -> None:
        file = open(self.path, "a+")  # noqa: SIM115 (held open for as long as the lock)
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            pid = file.read().strip() or "unknown"
            file.close()
            raise ConfigError(
                f"{self.path.parent} is in use by a live run (pid {pid}); wait for it to end, "
                "or choose another directory"
            ) from None
        file.truncate(0)
        file.write(f"{os.getpid()}\n")
        file.flush()
        self.file = file

    def release(self) -> None:
        if self.file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None
