"""One job, from a composed config to a finished record (``run_job``):

    with job_life(job) as life:                    # one try/except/finally for the whole job
        record = life.claim(cfg)                   # the run directory, or a refusal
        if not record.done:
            train(life.build(record.config), record, job)

``check`` reads every field against what consumes it, cheaply (nothing is built, no data is
read); ``build`` then builds every part (a bad config stops here, before data loads or W&B
starts); ``train`` loads the data, starts the tracker and runs the loop. ``job_life`` turns
whatever stops a job into its record's status, one line for the user and an exit code, and
releases the directory and the tracker at the end. This is what ``src/run.py`` does for each run
and each job of a multirun.
"""

import contextlib
import dataclasses
import logging
import platform
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vitsweep.data import DataSettings, Splits, build_loaders, fingerprint
from vitsweep.device import device_label, resolve_device, resolve_precision
from vitsweep.errors import ConfigError, Diverged, Pruned, WriteError, first_line, require
from vitsweep.fields import check_fields
from vitsweep.measure import describe_model
from vitsweep.models.vit import ATTENTION_ARGS, EMBEDDING_ARGS
from vitsweep.record import RunRecord, free_on_resume
from vitsweep.search import SearchSettings
from vitsweep.signals import OrphanWatch, sigterm_interrupts
from vitsweep.sweep import ReportSettings, check_sweep_name, without_resume
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
    on_epoch: Callable[[dict[str, Any]], None] | None = None  # sees each epoch's row (a search)


@dataclass
class RunConfig:
    """The top level of conf/config.yaml: the groups, and the few settings of their own."""

    seed: int
    trainer: dict[str, Any]
    model: dict[str, Any]
    optim: dict[str, Any]
    device: dict[str, Any]
    data: dict[str, Any]
    logger: dict[str, Any] = free_on_resume()
    sweep_name: str | None = free_on_resume()  # checked by the sweep itself
    dry_run: bool = free_on_resume(False)  # list the jobs, sized, and run none
    report: dict[str, Any] | None = free_on_resume()  # how a sweep's table compares rows
    search: dict[str, Any] | None = None  # a search's settings (vitsweep.search)

    def __post_init__(self) -> None:
        require(0 <= self.seed < 2**63, "seed", self.seed, "an integer from 0 to 2**63 - 1")
        if self.sweep_name is not None:
            check_sweep_name(self.sweep_name)


BLOCKS = {"trainer": TrainerSettings, "data": DataSettings, "search": SearchSettings}
# What the record adds to the config: the group choices (compared on resume), the command
# line as typed and what was read from the data (neither of which changes the run).
RECORDED = {"choices": False, "overrides": True, "from_data": True}


def may_differ_on_resume(key: str) -> bool:
    """Whether a dotted config key (``trainer.progress``, ``report.baseline``) is a setting a
    resumed run may change: marked ``free_on_resume`` where it is declared."""
    head, _, rest = key.lstrip("+~").partition(".")
    if RECORDED.get(head, False):
        return True
    declared = {f.name: f for f in dataclasses.fields(RunConfig)}
    if head in declared and declared[head].metadata.get("free_on_resume"):
        return True
    if head in BLOCKS and rest:
        inner = {f.name: f for f in dataclasses.fields(BLOCKS[head])}
        setting = inner.get(rest.split(".")[0])
        return bool(setting and setting.metadata.get("free_on_resume"))
    return False


def compared(config: dict[str, Any]) -> dict[str, Any]:
    """What must match for a run to be resumed: the config less what may differ."""
    kept = {k: v for k, v in config.items() if not may_differ_on_resume(k)}
    if isinstance(kept.get("choices"), dict):  # a free setting's group choice (logger) is free
        kept["choices"] = {g: c for g, c in kept["choices"].items() if not may_differ_on_resume(g)}
    for block in BLOCKS:
        if isinstance(kept.get(block), dict):
            kept[block] = {k: v for k, v in kept[block].items()
                           if not may_differ_on_resume(f"{block}.{k}")}  # fmt: skip
    return kept


@dataclass
class Checked:
    """A config whose every field was checked against what reads it: the settings, and the
    tracker (built: its constructor checks its own fields, and it starts nothing)."""

    run: RunConfig
    settings: TrainerSettings
    data: DataSettings
    tracker: Any


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
    sets: Splits | None = None  # the data, where building had to read it


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


def check(config: dict[str, Any]) -> Checked:
    """Every field checked against the signature that reads it, and the settings' ranges;
    nothing built, no data read, no device touched: cheap enough to run before a refusal."""
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
    checked("logger", run.logger)
    checked("model.embedding", run.model.get("embedding"), supplied=EMBEDDING_ARGS)
    checked("model.attention", run.model.get("attention"), supplied=ATTENTION_ARGS)
    checked("model", run.model, supplied=tuple(data.model_sizes()))
    checked("optim", run.optim, supplied=("params",))
    return Checked(run, settings, data, instantiate(run.logger))


def build(config: dict[str, Any], job_num: int | None = None) -> Parts:
    """Everything a bad config can break, before any data loads or W&B starts. ``job_num``:
    the job's number in a multirun, which spreads ``device=cuda`` jobs over the GPUs."""
    ok = check(config)
    run, settings, data = ok.run, ok.settings, ok.data
    device = resolve_device(**run.device, job_num=job_num)
    if device.type == "cuda":  # what allocates on "the current GPU" must use the job's
        torch.cuda.set_device(device)
    settings = replace(settings, precision=resolve_precision(settings.precision, device))
    sets = None
    if data.sized_by_data:  # the model's sizes come from the data: read it now
        sets = data.load()
        data = data.completed(sets[0])
    torch.manual_seed(run.seed)
    model = instantiate(run.model, **data.model_sizes()).to(device)
    optimizer = build_optimizer(instantiate(run.optim), model, device)
    return Parts(model, optimizer, settings, data, device, ok.tracker, run.seed, sets)


def train(parts: Parts, record: RunRecord, job: JobInfo) -> None:
    """Size the model, then (unless ``trainer.epochs=0``) load the data, start the tracker
    and train, recording every epoch. ``job_life`` records how it ends."""
    p = parts
    settings = p.settings
    if record.resume_state is not None and "precision" in record.summary:
        # a resumed run goes on in the precision it trained in, whatever "auto" says now
        settings = replace(settings, precision=record.summary["precision"])
    if p.sets is not None:  # what was read from the data, kept with the run's config
        record.note_from_data(p.data, p.sets.train.classes)
    image_shape = (p.data.channels, p.data.image_size, p.data.image_size)
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "cuda": torch.version.cuda}  # fmt: skip
    record.update(device=device_label(p.device), precision=settings.precision, **versions,
                  **describe_model(p.model, image_shape))  # fmt: skip
    if settings.epochs == 0:
        record.update(status="sized")
        return
    sets = p.sets or p.data.load()  # a data set the model was sized from is not read twice
    classes = sets.train.classes or [str(i) for i in range(p.data.num_classes)]
    sizes = {f"{name}_images": len(split) for name, split in sets._asdict().items() if split}
    record.update(classes=list(classes), **sizes, data_fingerprint=fingerprint(*sets))
    loaders = build_loaders(
        p.data, settings.batch_size, settings.eval_batch_size, p.device, p.seed, sets
    )
    # A multirun's jobs share a W&B group (the sweep's name) and carry their overrides as
    # tags, so W&B groups them as the comparison table does.
    p.tracker.start(record.config, record.run_dir, job.name, job.sweep_name, job.overrides)
    record.update(status="running")
    tracker = Watched(p.tracker, job.on_epoch) if job.on_epoch else p.tracker
    fit(p.model, loaders.train, loaders.test, p.optimizer, settings, record, tracker,
        record.resume_state, p.data.num_classes, loaders.val)  # fmt: skip
    record.complete(settings.epochs)


class Watched:
    """A tracker whose epoch rows are also shown to ``on_epoch`` (a search's pruner), after
    the record has kept them; ``on_epoch`` may stop the run by raising ``Pruned``."""

    def __init__(self, tracker: Any, on_epoch: Callable[[dict[str, Any]], None]) -> None:
        self.tracker, self.on_epoch = tracker, on_epoch

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.tracker.log(metrics, step=step)
        if "epoch" in metrics:
            self.on_epoch(metrics)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tracker, name)


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
        raise ConfigError(f"the config cannot be resolved: {first_line(err)}") from None
    kept = without_resume(job.overrides)
    return config | {"choices": job.choices, "sweep_name": job.sweep_name, "overrides": kept}


def find_config_error(err: BaseException | None) -> ConfigError | None:
    """The ConfigError behind ``err``, also when Hydra's instantiate wrapped it."""
    while err is not None and not isinstance(err, ConfigError):
        err = err.__cause__
    return err


def failure_fields(err: BaseException) -> dict[str, Any]:
    """What the record keeps of why a run stopped: its status and error."""
    if isinstance(err, KeyboardInterrupt):
        return {"status": "interrupted", "error": f"interrupted ({str(err) or 'SIGINT'})"}
    if isinstance(err, Diverged):
        return {"status": "diverged", "error": str(err), "diverged_step": err.step}
    if isinstance(err, Pruned):
        return {"status": "pruned", "pruned_epoch": err.epoch}
    if (config_error := find_config_error(err)) is not None:
        return {"status": "failed", "error": str(config_error)}
    if isinstance(err, WriteError):
        return {"status": "failed", "error": str(err)}
    return {"status": "failed", "error": f"{type(err).__name__}: {err}"}


def report_failure(err: BaseException, job: JobInfo, record: RunRecord | None) -> None:
    """Tell the user why a job stopped, and end the process where the policy says so:
    an interrupt always (exit 130: the user asked to stop, sweep included); bad input (2), a
    record that cannot be written and divergence (1), and a bug (its traceback) only in a
    single run, as a sweep goes on."""
    where = record.run_dir if record is not None else job.run_dir
    if isinstance(err, KeyboardInterrupt):
        print(f"interrupted: the last finished epoch is saved in {where}; rerun the same "
              "command with trainer.resume=true to carry on", file=sys.stderr)  # fmt: skip
        raise SystemExit(130) from None
    if isinstance(err, Pruned):
        log.info("%s: %s", where, err)
        return
    config_error = find_config_error(err)
    if config_error is not None or isinstance(err, Diverged | WriteError):
        epochs = record.summary.get("epochs_done", 0) if record is not None else 0
        line = (
            f"error: {config_error}" if config_error is not None
            else f"diverged: {err}" if isinstance(err, Diverged)
            else f"error: {err} (recorded up to epoch {epochs}; make room, then rerun with "
                 "trainer.resume=true: it carries on from the last whole checkpoint)"
        )  # fmt: skip
        print(line, file=sys.stderr)
        if not job.multirun:
            raise SystemExit(2 if config_error is not None else 1) from None
    elif not job.multirun:
        raise err
    else:
        log.error("job failed; the sweep goes on", exc_info=err)


class JobLife:
    """What ``job_life`` hands its block: ``claim`` takes the run directory, ``build`` makes
    the parts (and keeps the tracker, to be finished however the job ends)."""

    def __init__(self, job: JobInfo) -> None:
        self.job = job
        self.record: RunRecord | None = None
        self.tracker: Any = None

    def claim(self, cfg: DictConfig) -> RunRecord:
        """The run directory, taken for this run; or a refusal (one line), nothing written. A
        finished run is skipped. Either way a bad field is said first (``check``: cheap)."""
        resume = OmegaConf.select(cfg, "trainer.resume", default=False)
        require(isinstance(resume, bool), "trainer.resume", resume, "true or false")
        config = recorded_config(cfg, self.job)
        try:
            record = RunRecord.claim(self.job.run_dir, config, resume, compared)
        except ConfigError:
            check(config)  # a bad field says more than "holds another run"
            raise
        if record.done:  # skipped, but not with a bad field unsaid; its record stays as it is
            try:
                check(config)
            finally:
                record.release()
            log.info("%s is already %s; skipped", self.job.run_dir, record.summary["status"])
        self.record = record
        return record

    def build(self, config: dict[str, Any]) -> Parts:
        parts = build(config, self.job.num)
        self.tracker = parts.tracker
        return parts

    @property
    def best_accuracy(self) -> float | None:
        return None if self.record is None else self.record.summary.get("best_test_acc")

    def fail(self, err: BaseException) -> None:
        """Keep why the job stopped in its record, where the record can still be written."""
        if self.record is None:
            return
        try:
            self.record.update(**failure_fields(err))
        except OSError as write_err:
            log.warning("the run's status could not be recorded: %s", write_err)

    def finish(self, ok: bool) -> None:
        """Tell the tracker how the run ended and give the directory back."""
        if self.tracker is not None and self.record is not None:
            self.tracker.summary(self.record.summary)
            self.tracker.finish(0 if ok else 1)
        if self.record is not None:
            self.record.release()


@contextlib.contextmanager
def job_life(job: JobInfo) -> Iterator[JobLife]:
    """A job's whole life in one try/except/finally: SIGTERM interrupts it as Ctrl-C does, a
    worker whose sweep is gone stops; whatever stops it becomes its record's status
    (``failure_fields``) and one line with an exit code (``report_failure``); the tracker and
    the directory are released at the end, whatever happened."""
    life, ok, orphan = JobLife(job), False, OrphanWatch()
    try:
        with sigterm_interrupts(), orphan.watching():
            yield life
        ok = True
    except (KeyboardInterrupt, Exception) as err:
        life.fail(err)
        report_failure(err, job, life.record)
    finally:
        life.finish(ok)
        orphan.exit_if_orphaned()  # a worker whose sweep is gone ends, its record written


def run_job(cfg: DictConfig, job: JobInfo) -> float | None:
    """A run, or one job of a sweep: claim its directory, build, train, record; returns its
    best test accuracy (None if it has none)."""
    with job_life(job) as life:  # whatever stops the job: its status, one line, an exit code
        record = life.claim(cfg)  # the run directory: refused if it holds another run
        if not record.done:
            train(life.build(record.config), record, job)
    return life.best_accuracy
