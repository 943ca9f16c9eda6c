"""One job, from a composed config to a finished record.

    with reported_failures(job) as outcome:        # failures become statuses and one line
        record = outcome.claim(cfg)                # the run directory, or a refusal
        if not record.done:
            train(build(record.config), record, job)

``build`` checks every field against what reads it and builds every part (a bad config
stops here, before data loads or W&B starts); ``train`` loads the data, starts the tracker and
runs the loop. This is what ``src/run.py`` does for each run and each job of a multirun.
"""

import contextlib
import logging
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vitsweep.data import DataSettings, build_loaders
from vitsweep.device import device_label, resolve_device
from vitsweep.errors import ConfigError, Diverged, require
from vitsweep.fields import check_fields
from vitsweep.measure import describe_model
from vitsweep.models.vit import ATTENTION_ARGS, EMBEDDING_ARGS
from vitsweep.record import RunRecord
from vitsweep.train import TrainerSettings, build_optimizer, fit

log = logging.getLogger("vitsweep.run")


@dataclass
class JobInfo:
    """Where and as what a job runs, as its launcher tells it."""

    run_dir: Path
    multirun: bool = False
    choices: dict[str, str] = field(default_factory=dict)  # group -> option
    overrides: list[str] = field(default_factory=list)  # the command line's, for this job
    name: str = ""  # the W&B run's name: the job's overrides
    sweep_name: str | None = None  # a multirun's name: its W&B group and results folder


@dataclass
class RunConfig:
    """The top level of conf/config.yaml: the groups, and the few settings of their own."""

    seed: int
    trainer: dict[str, Any]
    model: dict[str, Any]
    optim: dict[str, Any]
    device: dict[str, Any]
    data: dict[str, Any]
    logger: dict[str, Any]
    sweep_name: str | None = None

    def __post_init__(self) -> None:
        require(self.seed >= 0, "seed", self.seed, "an integer >= 0")


@dataclass
class Parts:
    """Everything ``build`` makes: what ``train`` needs."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    settings: TrainerSettings
    data: DataSettings
    device: torch.device
    tracker: Any
    seed: int


def checked(path: str, node: dict[str, Any], supplied: tuple[str, ...] = ()) -> Any:
    """The class or function a ``_target_`` node names, once the node's fields are checked
    against its signature."""
    try:
        target = get_object(node["_target_"])
    except Exception:
        raise ConfigError(f"{path}._target_={node.get('_target_')!r} cannot be imported") from None
    check_fields(path, target, node, supplied)
    return target


def build(config: dict[str, Any]) -> Parts:
    """Everything a bad config can break, before any data loads or W&B starts."""
    config = {k: v for k, v in config.items() if k not in RECORDED}
    check_fields("", RunConfig, config)
    run = RunConfig(**config)
    check_fields("trainer", TrainerSettings, run.trainer)
    check_fields("data", DataSettings, run.data)
    check_fields("device", resolve_device, run.device)
    settings, data = TrainerSettings(**run.trainer), DataSettings(**run.data)
    checked("data.source", data.source)
    device = resolve_device(**run.device)
    checked("logger", run.logger)
    tracker = instantiate(run.logger)
    checked("model.embedding", run.model["embedding"], supplied=EMBEDDING_ARGS)
    checked("model.attention", run.model["attention"], supplied=ATTENTION_ARGS)
    checked("model", run.model)
    checked("optim", run.optim, supplied=("params",))
    torch.manual_seed(run.seed)
    model = instantiate(run.model).to(device)
    optimizer = build_optimizer(instantiate(run.optim), model, device)
    return Parts(model, optimizer, settings, data, device, tracker, run.seed)


def train(parts: Parts, record: RunRecord, job: JobInfo) -> None:
    """Size the model, then (unless ``trainer.epochs=0``) load the data, start the tracker
    and train, recording every epoch."""
    p = parts
    image_shape = (p.data.channels, p.data.image_size, p.data.image_size)
    versions = {"torch": torch.__version__, "cuda": torch.version.cuda}
    record.update(device=device_label(p.device), **versions, **describe_model(p.model, image_shape))
    if p.settings.epochs == 0:
        record.update(status="sized")
        return
    loaders = build_loaders(
        p.data, p.settings.batch_size, p.settings.eval_batch_size, p.device, p.seed
    )
    # A multirun's jobs share a W&B group (the sweep's name) and carry their overrides as
    # tags, so W&B groups them as the comparison table does.
    p.tracker.start(record.config, record.run_dir, job.name, job.sweep_name, job.overrides)
    exit_code = 1
    try:
        record.update(status="running")
        fit(p.model, *loaders, p.optimizer, p.settings, record, p.tracker, record.resume_state)
        record.update(status="completed")
        exit_code = 0
    finally:
        p.tracker.summary(record.summary)
        p.tracker.finish(exit_code)


RECORDED = ("choices", "overrides")  # what the record adds to the config: no settings


def recorded_config(cfg: DictConfig, job: JobInfo) -> dict[str, Any]:
    """The config as the record keeps it: resolved, with the job's choices and overrides."""
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"the config cannot be resolved: {str(err).splitlines()[0]}") from None
    kept = [o for o in job.overrides if not o.lstrip("+~").startswith("trainer.resume=")]
    return config | {"choices": job.choices, "sweep_name": job.sweep_name, "overrides": kept}


class Outcome:
    """What ``reported_failures`` hands its block: ``claim`` takes the run directory."""

    def __init__(self, job: JobInfo) -> None:
        self.job = job
        self.record: RunRecord | None = None

    def claim(self, cfg: DictConfig) -> RunRecord:
        resume = cfg.trainer.get("resume", False)
        require(isinstance(resume, bool), "trainer.resume", resume, "true or false")
        self.record = RunRecord.claim(self.job.run_dir, recorded_config(cfg, self.job), resume)
        if self.record.done:
            log.info("%s is already %s; skipped", self.job.run_dir, self.record.summary["status"])
        return self.record

    @property
    def best_accuracy(self) -> float | None:
        return None if self.record is None else self.record.summary.get("best_test_acc")


def find_config_error(err: BaseException | None) -> ConfigError | None:
    """The ConfigError behind ``err``, also when Hydra's instantiate wrapped it."""
    while err is not None and not isinstance(err, ConfigError):
        err = err.__cause__
    return err


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Let SIGTERM (what SLURM and ``kill`` send) stop a run the way Ctrl-C does."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread (a threaded launcher): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def reported_failures(job: JobInfo) -> Iterator[Outcome]:
    """Record why a job stopped, and tell the user in one line when it was their input.

    A ``ConfigError`` prints one line and exits 2 (a single run) or marks the job failed and
    lets the sweep go on (a multirun); ``Diverged`` likewise, with exit 1. An interrupt
    (Ctrl-C, SIGTERM) is recorded and ends the process with exit 130, sweep included: the user
    asked to stop. Any other exception is a bug: recorded, then re-raised with its traceback
    in a single run, and logged with it in a multirun. The run directory is released at the
    end, whatever happened.
    """
    outcome = Outcome(job)

    def fail(**fields: Any) -> None:
        if outcome.record is not None:
            outcome.record.update(**fields)

    try:
        with sigterm_interrupts():
            yield outcome
    except KeyboardInterrupt as err:
        fail(status="interrupted", error=f"interrupted ({err or 'SIGINT'})")
        where = outcome.record.run_dir if outcome.record else job.run_dir
        print(
            f"interrupted: the last finished epoch is saved in {where}; rerun the same "
            "command with trainer.resume=true to carry on",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    except Diverged as err:
        fail(status="diverged", error=str(err), diverged_step=err.step)
        print(f"diverged: {err}", file=sys.stderr)
        if not job.multirun:
            raise SystemExit(1) from None
    except Exception as err:
        if (config_error := find_config_error(err)) is not None:
            fail(status="failed", error=str(config_error))
            print(f"error: {config_error}", file=sys.stderr)
            if not job.multirun:
                raise SystemExit(2) from None
            return
        fail(status="failed", error=f"{type(err).__name__}: {err}")
        if not job.multirun:
            raise
        log.exception("job failed; the sweep goes on")
    finally:
        if outcome.record is not None:
            outcome.record.release()
