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
    return compose_job(overrides, conf_dir)[0]


def compose_job(overrides: Iterable[str], conf_dir: Path = CONF_DIR) -> tuple[DictConfig, dict]:
    """A job's config as ``src/run.py`` composes it (without Hydra's own node) and its group
    choices: from inside a running Hydra app (a search worker) through its own config loader,
    elsewhere (a reproduction) through Hydra's compose API."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    if GlobalHydra.instance().is_initialized():
        loader = GlobalHydra.instance().config_loader()
        cfg = loader.load_configuration("config", list(overrides), RunMode.RUN)
    else:
        from hydra import compose, initialize_config_dir

        with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base="1.3"):
            cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra")}
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), choices
