"""Where the config tree lives, what it offers, and composing it outside ``src/run.py``.

Every list of options (tests, benchmarks) comes from here, that is from the YAML files under
``conf/``: adding ``conf/attention/mine.yaml`` adds ``mine`` everywhere.
"""

from collections.abc import Iterable
from pathlib import Path

from omegaconf import DictConfig

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
GROUPS = ("attention", "embedding", "model", "optim", "device", "data", "logger")


def options(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    """The options of a config group: the names of its YAML files."""
    return sorted(path.stem for path in (Path(conf_dir) / group).glob("*.yaml"))


def compose_config(overrides: Iterable[str] = (), conf_dir: Path = CONF_DIR) -> DictConfig:
    """The config ``src/run.py`` would run with these overrides (without Hydra's own part)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base="1.3"):
        return compose("config", overrides=list(overrides))
