"""The config tree and Hydra: where the tree lives, what it offers, composing it, and reading
overrides. Every use of Hydra's internals is named here, so the rest of the package takes
plain settings (dicts and dataclasses) and never a ``DictConfig``.

Every list of options (tests, benchmarks) comes from here, that is from the YAML files under
``conf/``: adding ``conf/attention/mine.yaml`` adds ``mine`` everywhere.
"""

import itertools
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vitsweep.errors import ConfigError, first_line

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
GROUPS = ("attention", "embedding", "model", "optim", "device", "data", "logger")
# Hydra's own sweeper, by the internal path its config names it with.
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def options(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    """The options of a config group: the names of its YAML files (``_shared.yaml`` and the
    like, which options include, are none)."""
    paths = (Path(conf_dir) / group).glob("*.yaml")
    return sorted(path.stem for path in paths if not path.stem.startswith("_"))


def plain(cfg: DictConfig | Any) -> Any:
    """A config node as plain data, every interpolation resolved; a value left to the user
    (``???``) or one that cannot be resolved is one ConfigError."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        if missing := re.search(r"Missing mandatory value: ([\w.]+)", str(err)):
            key = missing.group(1)
            raise ConfigError(
                f"{key} is required: set it on the command line ({key}=...)"
            ) from None
        raise ConfigError(f"the config cannot be resolved: {first_line(err)}") from None


def choices_of(choices: Any) -> dict[str, str]:
    """Hydra's group choices (``hydra.runtime.choices``: group -> option), its own left out."""
    return {k: v for k, v in choices.items() if not k.startswith("hydra")}


def without_hydra(cfg: DictConfig) -> DictConfig:
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])


def compose_config(overrides: Iterable[str] = (), conf_dir: Path = CONF_DIR) -> DictConfig:
    """The config ``src/run.py`` would run with these overrides (without Hydra's own part), as
    Hydra's own object: for entry points and tests that build parts from its nodes."""
    return without_hydra(_compose(overrides, conf_dir))


def compose_job(
    overrides: Iterable[str], conf_dir: Path = CONF_DIR
) -> tuple[dict[str, Any], dict[str, str]]:
    """A job's config as ``src/run.py`` runs it, as plain data (every interpolation resolved:
    one that cannot be is a ConfigError), and its group choices."""
    cfg = _compose(overrides, conf_dir)
    return plain(without_hydra(cfg)), choices_of(cfg.hydra.runtime.choices)


def _compose(overrides: Iterable[str], conf_dir: Path) -> DictConfig:
    """Composed with Hydra's node: from inside a running Hydra app (a search worker) through
    its own config loader, elsewhere (a reproduction, a test) through Hydra's compose API."""
    if GlobalHydra.instance().is_initialized():
        loader = GlobalHydra.instance().config_loader()
        return loader.load_configuration("config", list(overrides), RunMode.RUN)
    with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def compose_sweep_job(sweep_config: DictConfig, overrides: list[str]) -> dict[str, Any]:
    """One job of a running multirun, as plain data: the sweep's config with the job's
    overrides, composed by Hydra's own loader as its launcher would."""
    loader = GlobalHydra.instance().config_loader()
    return plain(without_hydra(loader.load_sweep_config(sweep_config, overrides)))


def sweeper_of(cfg: DictConfig) -> str | None:
    return OmegaConf.select(cfg, "hydra.sweeper._target_")


def uses_basic_sweeper(cfg: DictConfig) -> bool:
    return sweeper_of(cfg) == BASIC_SWEEPER


def sweeper_params(cfg: DictConfig) -> dict[str, str]:
    """The sweeper's own parameters (an experiment's grid), as written."""
    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {}
    return {str(k): str(v) for k, v in params.items()}


def command_line(cfg: DictConfig) -> list[str]:
    """The overrides typed on the command line (of a run, or of a whole sweep)."""
    return list(cfg.hydra.overrides.task)


def override_key(override: str) -> str:
    """The key an override sets: '+model.foo=1' -> 'model.foo'."""
    return override.split("=", 1)[0].lstrip("+~")


def without_resume(overrides: list[str]) -> list[str]:
    return [o for o in overrides if override_key(o) != "trainer.resume"]


def parse_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """['attention=softmax', '+seed=1'] -> {'attention': 'softmax', 'seed': '1'}, read by
    Hydra's own override parser (a quoted value may hold '=' and spaces)."""
    overrides = [o for o in overrides if "=" in o]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # not Hydra's syntax (hand-made tags): key=value as written
        return dict(o.lstrip("+~").split("=", 1) for o in overrides)
    return {o.key_or_group: str(o.value()) for o in parsed}


def expand_grid(arguments: list[str]) -> list[list[str]]:
    """The jobs of a grid as Hydra's basic sweeper makes them: each list of choices a factor
    of the product, a later override replacing an earlier one of the same key."""
    factors: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides(arguments):
        key = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                raise ConfigError(f"{key}: the basic sweeper takes lists of choices, not ranges")
            factors[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            factors[key] = [f"{key}={override.get_value_element_as_str()}"]
    return [list(job) for job in itertools.product(*factors.values())]


def sweep_jobs(cfg: DictConfig) -> list[list[str]]:
    """The override lists of the jobs Hydra's basic sweeper will launch, in its order: the
    sweeper's parameters (an experiment's grid), then the command line."""
    params = [f"{k}={v}" for k, v in sweeper_params(cfg).items()]
    return expand_grid(params + command_line(cfg))
