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
import re
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vitsweep.data import DataSettings, build_loaders
from vitsweep.datasets import ImageSet
from vitsweep.device import device_label, resolve_device, resolve_precision
from vitsweep.errors import ConfigError, Diverged, raise_interrupt, require
from vitsweep.fields import check_fields
from vitsweep.measure import describe_model
from vitsweep.models.vit import ATTENTION_ARGS, EMBEDDING_ARGS
from vitsweep.record import RunRecord
from vitsweep.sweep import ReportSettings, without_resume
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
    num: int | None = None  # the job's number in its multirun (which GPU it takes)


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
    dry_run: bool = False  # list the jobs, sized, and run none (vitsweep.callbacks.DryRun)
    report: dict[str, Any] | None = None  # how a sweep's table compares rows (ReportSettings)

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
    sets: tuple[ImageSet, ImageSet] | None = None  # the data, where building had to read it


def checked(path: str, node: Any, supplied: tuple[str, ...] = ()) -> Any:
    """The class or function a ``_target_`` node names, once the node's fields are checked
    against its signature."""
    require(isinstance(node, dict) and "_target_" in node, path, node,
            "a config node with a _target_ (choose an option of its group)")  # fmt: skip
    try:
        target = get_object(node["_target_"])
    except Exception:
        raise ConfigError(f"{path}._target_={node['_target_']!r} cannot be imported") from None
    check_fields(path, target, node, supplied)
    return target


def build(config: dict[str, Any], job_num: int | None = None) -> Parts:
    """Everything a bad config can break, before any data loads or W&B starts. ``job_num``:
    the job's number in a multirun, which spreads ``device=cuda`` jobs over the GPUs."""
    config = {k: v for k, v in config.items() if k not in RECORDED}
    check_fields("", RunConfig, config)
    run = RunConfig(**config)
    check_fields("trainer", TrainerSettings, run.trainer)
    check_fields("data", DataSettings, run.data)
    check_fields("device", resolve_device, run.device, supplied=("job_num",))
    check_fields("report", ReportSettings, run.report or {})
    ReportSettings(**(run.report or {}))
    settings, data = TrainerSettings(**run.trainer), DataSettings(**run.data)
    checked("data.source", data.source)
    device = resolve_device(**run.device, job_num=job_num)
    if device.type == "cuda":  # what allocates on "the current GPU" must use the job's
        torch.cuda.set_device(device)
    settings = replace(settings, precision=resolve_precision(settings.precision, device))
    checked("logger", run.logger)
    tracker = instantiate(run.logger)
    checked("model.embedding", run.model.get("embedding"), supplied=EMBEDDING_ARGS)
    checked("model.attention", run.model.get("attention"), supplied=ATTENTION_ARGS)
    checked("model", run.model, supplied=tuple(data.model_sizes()))
    checked("optim", run.optim, supplied=("params",))
    sets = None
    if data.sized_by_data:  # the model's sizes come from the data: read it now
        sets = data.load()
        data = data.completed(sets[0])
    torch.manual_seed(run.seed)
    model = instantiate(run.model, **data.model_sizes()).to(device)
    optimizer = build_optimizer(instantiate(run.optim), model, device)
    return Parts(model, optimizer, settings, data, device, tracker, run.seed, sets)


def train(parts: Parts, record: RunRecord, job: JobInfo) -> None:
    """Size the model, then (unless ``trainer.epochs=0``) load the data, start the tracker
    and train, recording every epoch."""
    p = parts
    if p.sets is not None:  # what was read from the data, kept with the run's config
        record.note_from_data(p.data, p.sets[0].classes)
    image_shape = (p.data.channels, p.data.image_size, p.data.image_size)
    versions = {"torch": torch.__version__, "cuda": torch.version.cuda}
    record.update(device=device_label(p.device), precision=p.settings.precision, **versions,
                  **describe_model(p.model, image_shape))  # fmt: skip
    if p.settings.epochs == 0:
        record.update(status="sized")
        return
    loaders = build_loaders(
        p.data, p.settings.batch_size, p.settings.eval_batch_size, p.device, p.seed, p.sets
    )  # p.sets: a data set the model was sized from is not read twice
    # A multirun's jobs share a W&B group (the sweep's name) and carry their overrides as
    # tags, so W&B groups them as the comparison table does.
    p.tracker.start(record.config, record.run_dir, job.name, job.sweep_name, job.overrides)
    exit_code = 1
    try:
        record.update(status="running")
        fit(p.model, *loaders, p.optimizer, p.settings, record, p.tracker, record.resume_state)
        record.update(status="completed")
        exit_code = 0
    except BaseException as err:  # the status W&B is told is the one the record keeps
        record.update(**failure_fields(err))
        raise
    finally:
        p.tracker.summary(record.summary)
        p.tracker.finish(exit_code)


RECORDED = ("choices", "overrides", "from_data")  # what the record adds: no settings


def recorded_config(cfg: DictConfig, job: JobInfo) -> dict[str, Any]:
    """The config as the record keeps it: resolved, with the job's choices and overrides."""
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        if missing := re.search(r"Missing mandatory value: ([\w.]+)", str(err)):
            key = missing.group(1)
            raise ConfigError(
                f"{key} is required: set it on the command line ({key}=...)"
            ) from None
        raise ConfigError(f"the config cannot be resolved: {str(err).splitlines()[0]}") from None
    kept = without_resume(job.overrides)
    return config | {"choices": job.choices, "sweep_name": job.sweep_name, "overrides": kept}


class Outcome:
    """What ``reported_failures`` hands its block: ``claim`` takes the run directory."""

    def __init__(self, job: JobInfo) -> None:
        self.job = job
        self.record: RunRecord | None = None

    def claim(self, cfg: DictConfig) -> RunRecord:
        """The run directory, taken for this run; or a refusal (one line), nothing written."""
        resume = OmegaConf.select(cfg, "trainer.resume", default=False)
        require(isinstance(resume, bool), "trainer.resume", resume, "true or false")
        config = recorded_config(cfg, self.job)
        try:
            record = RunRecord.claim(self.job.run_dir, config, resume)
        except ConfigError as refusal:
            if (bad_field := config_error_of(build, config)) is not None:
                raise bad_field from None  # a bad field says more than "holds another run"
            raise refusal from None
        if record.done:  # skipped, but not with a bad field unsaid; its record stays as it is
            if (bad_field := config_error_of(build, config)) is not None:
                record.release()
                raise bad_field from None
            log.info("%s is already %s; skipped", self.job.run_dir, record.summary["status"])
        self.record = record
        return record

    @property
    def best_accuracy(self) -> float | None:
        return None if self.record is None else self.record.summary.get("best_test_acc")


def config_error_of(function: Any, *args: Any) -> ConfigError | None:
    """The ConfigError that ``function(*args)`` raises, if any (other errors are not ours to
    report here)."""
    try:
        function(*args)
    except Exception as err:
        return find_config_error(err)
    return None


def find_config_error(err: BaseException | None) -> ConfigError | None:
    """The ConfigError behind ``err``, also when Hydra's instantiate wrapped it."""
    while err is not None and not isinstance(err, ConfigError):
        err = err.__cause__
    return err


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Let SIGTERM (what SLURM and ``kill`` send) stop a run the way Ctrl-C does."""
    try:
        previous = signal.signal(signal.SIGTERM, raise_interrupt)
    except ValueError:  # not the main thread (a threaded launcher): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def failure_fields(err: BaseException) -> dict[str, Any]:
    """What the record keeps of why a run stopped: its status and error."""
    if isinstance(err, KeyboardInterrupt):
        return {"status": "interrupted", "error": f"interrupted ({err or 'SIGINT'})"}
    if isinstance(err, Diverged):
        return {"status": "diverged", "error": str(err), "diverged_step": err.step}
    if (config_error := find_config_error(err)) is not None:
        return {"status": "failed", "error": str(config_error)}
    return {"status": "failed", "error": f"{type(err).__name__}: {err}"}


def report_failure(err: BaseException, job: JobInfo, where: Path) -> None:
    """Tell the user why a job stopped, and end the process where the policy says so:
    an interrupt always (exit 130: the user asked to stop, sweep included); bad input (2),
    divergence (1) and a bug (its traceback) only in a single run, as a sweep goes on."""
    if isinstance(err, KeyboardInterrupt):
        print(f"interrupted: the last finished epoch is saved in {where}; rerun the same "
              "command with trainer.resume=true to carry on", file=sys.stderr)  # fmt: skip
        raise SystemExit(130) from None
    if isinstance(err, Diverged):
        print(f"diverged: {err}", file=sys.stderr)
        if not job.multirun:
            raise SystemExit(1) from None
    elif (config_error := find_config_error(err)) is not None:
        print(f"error: {config_error}", file=sys.stderr)
        if not job.multirun:
            raise SystemExit(2) from None
    elif not job.multirun:
        raise err
    else:
        log.error("job failed; the sweep goes on", exc_info=err)


@contextlib.contextmanager
def reported_failures(job: JobInfo) -> Iterator[Outcome]:
    """Record why a job stopped (``failure_fields``), tell the user and exit as
    ``report_failure`` says, and release the run directory at the end, whatever happened."""
    outcome = Outcome(job)
    try:
        with sigterm_interrupts():
            yield outcome
    except (KeyboardInterrupt, Exception) as err:
        if outcome.record is not None:
            outcome.record.update(**failure_fields(err))
        report_failure(err, job, outcome.record.run_dir if outcome.record else job.run_dir)
    finally:
        if outcome.record is not None:
            outcome.record.release()
