"""What a search is refused for before any trial: every setting, every choice and both ends of
every range of its space composed and built, a validation split to tune on, and a study that
opens."""

from pathlib import Path
from typing import Any

from vitsweep.config import compose_job
from vitsweep.errors import ConfigError, first_line, require
from vitsweep.job import check
from vitsweep.search.study import check_study_agrees, find_study, search_settings
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
    study = find_study(settings, sweep_dir, str(config["sweep_name"]))
    check_study_agrees(study, sweep_dir)


def sample_points(space: dict[str, dict[str, Any]]) -> list[list[str]]:
    """A few points of the space that together touch every choice and both ends of every
    range: enough to find a setting that cannot be composed or built."""
    ends = {
        k: (list(v["choices"]) if v["type"] == "categorical" else [v["low"], v["high"]])
        for k, v in space.items()
    }
    widest = max(len(values) for values in ends.values())
    return [[f"{k}={values[i % len(values)]}" for k, values in ends.items()] for i in range(widest)]
