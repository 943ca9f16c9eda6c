"""What a search is refused for before any trial: every setting, every choice and both ends of
every range of its space composed and built, a validation split to tune on, a study that
opens, and an SQLite study kept off network file systems."""

from pathlib import Path
from typing import Any

from vitsweep.config import compose_job
from vitsweep.errors import ConfigError, first_line, require
from vitsweep.job import check
from vitsweep.search.study import check_study_agrees, find_study, search_settings, storage_url
from vitsweep.search.worker import base_overrides


def check_search(config: dict[str, Any], overrides: list[str], sweep_dir: Path) -> None:
    """Everything a search can be refused for, before any trial, creating nothing.
    ``config``: the sweep's (plain), ``overrides``: its command line."""
    settings = search_settings(config["search"])
    require(not config.get("dry_run"), "dry_run", True, "false in a search: its trials are "
            "drawn as it goes, there is no grid to list")  # fmt: skip
    epochs = (config.get("trainer") or {}).get("epochs", 1)
    require(epochs != 0, "trainer.epochs", epochs, "at least 1 in a search: it trains trials")
    fraction = (config.get("data") or {}).get("val_fraction", 0)
    require(
        bool(fraction) and fraction > 0,
        "data.val_fraction",
        fraction,
        "a fraction > 0 in a search: tuning on the test set is no search",
    )
    base = base_overrides(overrides, settings.space)
    for trial_overrides in sample_points(settings.space):  # a misspelt choice fails here
        try:
            config, choices = compose_job([*base, *trial_overrides])
        except Exception as err:
            raise ConfigError(
                f"search.space: {' '.join(trial_overrides)} cannot be composed ({first_line(err)})"
            ) from None
        check(config | {"choices": choices})
    check_storage_place(storage_url(settings, sweep_dir), read_mounts())
    study = find_study(settings, sweep_dir, str(config["sweep_name"]))
    check_study_agrees(study, sweep_dir)


# File systems shared over a network, where SQLite's locks are not to be trusted (optuna #815,
# #6036; SQLite's own FAQ): a cluster's home and scratch are usually one of these.
NETWORK_FS = ("nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "beegfs", "ceph", "fuse.sshfs")


def read_mounts() -> str:
    """/proc/mounts (empty where there is none: not Linux)."""
    try:
        return Path("/proc/mounts").read_text()
    except OSError:
        return ""


def file_system_of(path: Path, mounts: str) -> str | None:
    """The type of the file system ``path`` is on, from /proc/mounts' lines (the deepest
    mount point above it)."""
    found: tuple[int, str] | None = None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = Path(fields[1].replace("\\040", " "))
        if (path == point or point in path.parents) and (
            found is None or len(point.parts) > found[0]
        ):
            found = (len(point.parts), fields[2])
    return found[1] if found else None


def check_storage_place(url: str, mounts: str) -> None:
    """An SQLite study on a network file system is refused: its workers' writes would
    corrupt it or fail on locks."""
    if not url.startswith("sqlite:///"):
        return
    place = Path(url.removeprefix("sqlite:///")).resolve()
    kind = file_system_of(place, mounts)
    if kind in NETWORK_FS:
        raise ConfigError(
            f"search.storage={url}: the study's SQLite file would be on {kind}, a network "
            "file system, where SQLite's locks fail (optuna #815); use "
            "search.storage=postgresql://USER:PASSWORD@HOST/DB, or journal:PATH on a local disk"
        )


def sample_points(space: dict[str, dict[str, Any]]) -> list[list[str]]:
    """A few points of the space that together touch every choice and both ends of every
    range: enough to find a setting that cannot be composed or built."""
    ends = {
        k: (list(v["choices"]) if v["type"] == "categorical" else [v["low"], v["high"]])
        for k, v in space.items()
    }
    widest = max(len(values) for values in ends.values())
    return [[f"{k}={values[i % len(values)]}" for k, values in ends.items()] for i in range(widest)]
