"""Each default has one source, the settings dataclasses; where a YAML file repeats one so that
a user reads it where they set it, it must say the same."""

import dataclasses

import pytest
import yaml

from tests.helpers import CONF
from vitsweep.settings import (
    DataSettings,
    ReportSettings,
    RunConfig,
    SearchSettings,
    TrainerSettings,
)

# The top level's own settings with a default in RunConfig that the YAML does not repeat:
# the groups' choices and a sweep's name (the YAML's is a time stamp).
RUN_OWN = ("logger", "sweep_name", "report", "search")
DATA_OWN = ("root", "channels", "num_classes", "mean", "std")  # each data set says its own


def defaults(settings: type) -> dict:
    """A settings dataclass's fields that have a default, with it."""
    found = {}
    for f in dataclasses.fields(settings):
        if f.default is not dataclasses.MISSING:
            found[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            found[f.name] = f.default_factory()
    return found


def read(path: str) -> dict:
    return yaml.safe_load((CONF / path).read_text())


@pytest.mark.parametrize(
    ("settings", "written", "not_written"),
    [
        (TrainerSettings, lambda: read("config.yaml")["trainer"], ()),
        (ReportSettings, lambda: read("config.yaml")["report"], ()),
        (RunConfig, lambda: {"dry_run": read("config.yaml")["dry_run"]}, RUN_OWN),
        # the space is each search's own; the worker's number is set by the grid
        (SearchSettings, lambda: read("search/optuna.yaml")["search"], ("space",)),
        # the data set's own fields (source, name, sizes, statistics, root) are each file's
        (DataSettings, lambda: read("data/_shared.yaml"), DATA_OWN),
    ],
    ids=["trainer", "report", "top-level", "search", "data"],
)
def test_a_yaml_file_repeats_its_settings_defaults_exactly(settings, written, not_written):
    expected = {k: v for k, v in defaults(settings).items() if k not in not_written}
    given = {k: v for k, v in written().items() if k not in not_written}
    assert given == expected


def test_every_data_set_starts_from_the_shared_data_defaults():
    for path in sorted((CONF / "data").glob("*.yaml")):
        if path.name.startswith("_"):
            continue
        listed = yaml.safe_load(path.read_text()).get("defaults")
        assert listed == ["_shared", "_self_"], path.name
