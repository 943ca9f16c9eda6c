"""A sweep directory's own record, ``sweep.yaml``: which grid it holds, and what produced it.

A sweep claims its directory before any job runs, by creating ``sweep.yaml`` (exclusively, so
of two sweeps started with one name only one wins). A directory that holds a sweep is taken
again only to finish that same grid (``trainer.resume=true``); another grid is refused.
"""

import hashlib
import json
import os
import platform
import subprocess
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from vitsweep.config import expand_grid
from vitsweep.errors import ConfigError

RECORD = "sweep.yaml"


def grid_change(earlier: dict[str, Any], grid: dict[str, Any]) -> str:
    """What differs between two sweeps' grids, in words."""
    changes = []
    for part in ("overrides", "params"):
        old, new = earlier.get(part) or [], grid.get(part) or []
        if isinstance(old, dict) or isinstance(new, dict):
            old = [f"{k}={v}" for k, v in dict(old).items()]
            new = [f"{k}={v}" for k, v in dict(new).items()]
        gone = [o for o in old if o not in new]
        added = [o for o in new if o not in old]
        changes += [f"without {' '.join(gone)}"] if gone else []
        changes += [f"with {' '.join(added)}"] if added else []
    old_search, new_search = earlier.get("search") or {}, grid.get("search") or {}
    changed = [
        k
        for k in dict.fromkeys([*old_search, *new_search])
        if old_search.get(k) != new_search.get(k)
    ]
    changes += [f"search.{k}={new_search.get(k)} (was {old_search.get(k)})" for k in changed]
    return "; ".join(changes) or "another grid"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, timeout=10
    ).stdout


def harness_state(repo: Path) -> dict[str, Any]:
    """The harness's commit, whether src/ or conf/ differ from it, and a hash of that
    difference (so that two runs of one dirty tree can still be told apart). Files under src/
    or conf/ that git does not track (and does not ignore) differ from the commit too: a new
    experiment file is named in ``untracked``, and its content is in the hash."""
    try:
        commit = _git(repo, "rev-parse", "HEAD").strip()
        diff = _git(repo, "diff", "HEAD", "--", "src", "conf")
        listed = _git(repo, "ls-files", "--others", "--exclude-standard", "-z", "--", "src", "conf")
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None, "diff_sha256": None, "untracked": None}
    untracked = sorted(name for name in listed.split("\0") if name)
    digest = hashlib.sha256(diff.encode())  # a tracked diff alone hashes as it always has
    for name in untracked:
        digest.update(b"\0untracked\0" + name.encode() + b"\0")
        try:
            with open(Path(repo) / name, "rb") as file:
                for chunk in iter(lambda: file.read(1 << 20), b""):
                    digest.update(chunk)
        except OSError:
            digest.update(b"\0unreadable\0")
    dirty = bool(diff or untracked)
    return {
        "commit": commit,
        "dirty": dirty,
        "diff_sha256": digest.hexdigest()[:16] if dirty else None,
        "untracked": untracked,
    }


def git_commit(harness: dict[str, Any]) -> str:
    """The harness's commit in short, marked ``+uncommitted`` when its files differed."""
    if not harness.get("commit"):
        return "unknown (not a git checkout)"
    return harness["commit"][:12] + ("+uncommitted" if harness.get("dirty") else "")


def commit_exists(repo: Path, commit: str) -> bool:
    try:
        _git(repo, "cat-file", "-e", f"{commit}^{{commit}}")
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def grid_size(grid: dict[str, Any]) -> int | None:
    """How many jobs a sweep's recorded grid holds (None where it is no list of choices: an
    Optuna search space)."""
    if "overrides" not in grid:
        return None
    params = [f"{k}={v}" for k, v in (grid.get("params") or {}).items()]
    try:
        return len(expand_grid(params + list(grid.get("overrides") or [])))
    except Exception:
        return None


def holds_jobs(sweep_dir: Path) -> bool:
    """Whether jobs of an earlier sweep (with or without a sweep.yaml) are in the directory."""
    return any(sweep_dir.glob("*/config.yaml")) or any(sweep_dir.glob("**/.hydra/overrides.yaml"))


WAYS = "choose another sweep_name (or hydra.sweep.dir)"


def claim_sweep(
    sweep_dir: Path, grid: dict[str, Any], resume: bool, about: dict[str, Any]
) -> dict[str, Any]:
    """Take ``sweep_dir`` for the sweep of ``grid`` (its command-line overrides and sweeper
    parameters), or refuse with one line. Returns the sweep's record."""
    if (sweep_dir / RECORD).exists():
        return resumed_sweep(sweep_dir, grid, resume, about.get("name"))
    if holds_jobs(sweep_dir) and not resume:
        raise ConfigError(
            f"{sweep_dir} holds an earlier sweep; add trainer.resume=true to finish it "
            f"with the same command, or {WAYS}"
        )
    if sweep_dir.exists():
        check_writable(sweep_dir)
    record = {
        "grid": grid,
        **about,
        "started": datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "pid": os.getpid(),
    }
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        with open(sweep_dir / RECORD, "x") as file:  # exclusive: one of two same-named sweeps wins
            yaml.safe_dump(record, file, sort_keys=False)
    except FileExistsError:
        raise ConfigError(f"{sweep_dir} was claimed by another sweep just now; {WAYS}") from None
    except OSError as err:
        raise ConfigError(f"cannot write the sweep directory {sweep_dir}: {err.strerror}") from None
    return record


def resumed_sweep(
    sweep_dir: Path, grid: dict[str, Any], resume: bool, name: str | None
) -> dict[str, Any]:
    """The record of the sweep already in ``sweep_dir``, if this is that sweep, resumed (and
    its directory writable); else a refusal naming what differs."""
    earlier = read_sweep_record(sweep_dir)
    if not earlier:
        raise ConfigError(f"{sweep_dir / RECORD} cannot be read; {WAYS}")
    if earlier.get("grid") != grid:
        command = earlier.get("command", "another command")
        change = grid_change(earlier.get("grid") or {}, grid)
        raise ConfigError(
            f"{sweep_dir} holds another sweep ({command}): this one is {change}; {WAYS}"
        )
    if name is not None and earlier.get("name") not in (None, name):
        raise ConfigError(
            f"{sweep_dir} holds the sweep named {earlier['name']!r}; add "
            f"sweep_name={earlier['name']} to resume it"
        )
    if not resume:
        raise ConfigError(
            f"{sweep_dir} holds this sweep already; add trainer.resume=true to finish it, or {WAYS}"
        )
    check_writable(sweep_dir)
    return earlier


def check_writable(directory: Path) -> None:
    """Refuse, in one line, a directory this process cannot write into (and so cannot resume
    its jobs in), before any job starts."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise ConfigError(f"cannot write the sweep directory {directory}: {err.strerror}") from None


def check_results_folder(out_dir: Path, source: str | os.PathLike) -> None:
    """A results folder belongs to one sweep: one that holds another sweep's table (its
    manifest names another source) is refused, never overwritten."""
    try:
        earlier = json.loads((Path(out_dir) / "manifest.json").read_text()).get("source")
    except (OSError, ValueError, AttributeError):
        return
    if earlier is not None and Path(str(earlier)).resolve() != Path(str(source)).resolve():
        raise ConfigError(
            f"{out_dir} holds the table of another sweep ({earlier}); choose "
            "another sweep_name (report.py: --name)"
        )


def read_sweep_record(sweep_dir: Path) -> dict[str, Any]:
    path = Path(sweep_dir) / RECORD
    try:
        record = yaml.safe_load(path.read_text()) if path.exists() else {}
    except (OSError, yaml.YAMLError):
        return {}
    return record if isinstance(record, dict) else {}
