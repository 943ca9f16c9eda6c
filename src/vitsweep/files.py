"""Files that are never seen half-written, names that are safe as file names, and a lock that
keeps two processes out of one run directory."""

import contextlib
import fcntl
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import IO

from vitsweep.errors import ConfigError, WriteError


def write_atomic(path: Path, content: str | Callable[[Path], object]) -> None:
    """Replace ``path`` in one step: write a hidden temporary file beside it, then rename it
    over ``path``. ``content`` is the text, or a function that writes a file at a given path
    (``torch.save``, ``savefig``). A crash mid-write leaves the previous file whole; a write
    that fails removes its temporary file and raises ``WriteError`` naming ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if isinstance(content, str):
            tmp.write_text(content)
        else:
            content(tmp)
        os.replace(tmp, path)
    except OSError as err:  # a full disk, a read-only directory: nothing half-written stays
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise WriteError(path, err) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def slug(label: str) -> str:
    """A label as a file name: 'NVIDIA H200' -> 'nvidia_h200'."""
    return re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_").lower()


class DirectoryLock:
    """An exclusive lock on a directory (``run.lock``), held while this process works in it.

    The operating system drops a ``flock`` when its process ends, however it ends, so a run
    killed with ``kill -9`` never leaves a lock that blocks the resume. Taking the lock changes
    nothing in the directory but creating an empty ``run.lock`` where there was none (removed
    again if the run is refused); ``mark_owner`` writes the pid once the directory is taken.
    """

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / "run.lock"
        self.file: IO[str] | None = None
        self.created = False

    def acquire(self) -> None:
        self.created = not self.path.exists()
        try:
            file = open(self.path, "a+")  # noqa: SIM115 (held open for as long as the lock)
        except OSError as err:
            raise ConfigError(
                f"cannot write the run directory {self.path.parent}: {err.strerror}"
            ) from None
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
        self.file = file

    def mark_owner(self) -> None:
        """Write this process's pid into the lock file: the directory is taken."""
        assert self.file is not None
        self.file.truncate(0)
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()
        self.created = False

    def release(self) -> None:
        if self.file is None:
            return
        if self.created:  # refused before taking the directory: leave it as it was
            with contextlib.suppress(OSError):
                self.path.unlink()
        with contextlib.suppress(OSError):
            fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()
        self.file = None


def lock_is_held(directory: Path) -> bool:
    """Whether a live process holds ``directory``'s ``run.lock`` (nothing is created or
    changed to find out)."""
    try:
        file = open(Path(directory) / "run.lock")  # noqa: SIM115
    except OSError:
        return False
    with file:
        try:
            fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(file, fcntl.LOCK_UN)
        return False
