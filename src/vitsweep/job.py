"""One job, from a composed config to a finished record (``run_job``):

    with job_life(job) as life:                    # one try/except/finally for the whole job
        record = life.claim(config)                # the run directory, or a refusal
        if not record.done:
            train_job(life.build(record.config), record, job, hooks)

``check`` reads every field against what consumes it, cheaply (nothing is built, no data is
read); ``build`` then builds every part (a bad config stops here, before data loads or W&B
starts); ``train_job`` loads the data, starts the tracker and runs the loop, whose epochs go
to the record, the tracker and any hooks of the caller (a search's pruner). ``job_life`` turns
whatever stops a job into its record's status, one line for the user and an exit code
(``vitsweep.errors``), and releases the directory and the tracker at the end. ``run_job``
returns the job's status and summary. This is what ``src/run.py`` does for each run and each
job of a multirun; the config it takes is plain data (``vitsweep.config.plain``).
"""

import contextlib
import logging
import os
import platform
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_object, instantiate

from vitsweep.config import without_resume
from vitsweep.data import Splits, build_loaders, complete_settings, fingerprint, load_splits
from vitsweep.device import device_label, resolve_device, resolve_precision, use_given_cpus
from vitsweep.errors import ConfigError, end_with, first_line, require, stop_of
from vitsweep.fields import check_fields
from vitsweep.hooks import Hook
from vitsweep.measure import describe_model
from vitsweep.models.vit import ATTENTION_ARGS, EMBEDDING_ARGS
from vitsweep.record import RunRecord
from vitsweep.settings import RECORDED, DataSettings, ReportSettings, RunConfig, TrainerSettings
from vitsweep.signals import OrphanWatch, WarningWatch, sigterm_interrupts
from vitsweep.slurm import job_id, restarts
from vitsweep.train import build_optimizer, fit

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
class JobResult:
    """How a job ended: its record's status and summary (empty where no directory was
    claimed), as ``summary.json`` holds them."""

    run_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str | None:
        return self.summary.get("status")

    @property
    def best_accuracy(self) -> float | None:
        return self.summary.get("best_test_acc")


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
    """Everything ``build`` makes: what ``train_job`` needs."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    settings: TrainerSettings
    data: DataSettings
    device: torch.device
    tracker: Any
    seed: int
    sets: Splits | None = None  # the data, where building had to read it


def check_target(path: str, node: Any, supplied: tuple[str, ...] = ()) -> Any:
    """The class or function a ``_target_`` node names, once the node's fields are checked
    against its signature."""
    require(
        isinstance(node, dict) and "_target_" in node,
        path,
        node,
        "a config node with a _target_ (choose an option of its group)",
    )
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
    check_target("data.source", data.source)
    check_target("logger", run.logger)
    check_target("model.embedding", run.model.get("embedding"), supplied=EMBEDDING_ARGS)
    check_target("model.attention", run.model.get("attention"), supplied=ATTENTION_ARGS)
    check_target("model", run.model, supplied=tuple(data.model_sizes()))
    check_target("optim", run.optim, supplied=("params",))
    return Checked(run, settings, data, instantiate(run.logger))


def build(config: dict[str, Any], job_num: int | None = None) -> Parts:
    """Everything a bad config can break, before any data loads or W&B starts. ``job_num``:
    the job's number in a multirun, which spreads ``device=cuda`` jobs over the GPUs."""
    ok = check(config)
    run, settings, data = ok.run, ok.settings, ok.data
    device = resolve_device(**run.device, job_num=job_num)
    use_given_cpus()  # a cluster's job trains on the CPUs it was given, not the whole node's
    if device.type == "cuda":  # what allocates on "the current GPU" must use the job's
        torch.cuda.set_device(device)
    settings = replace(settings, precision=resolve_precision(settings.precision, device))
    sets = None
    if data.sized_by_data:  # the model's sizes come from the data: read it now
        sets = load_splits(data)
        data = complete_settings(data, sets.train)
    torch.manual_seed(run.seed)
    model = instantiate(run.model, **data.model_sizes()).to(device)
    optimizer = build_optimizer(instantiate(run.optim), model, device)
    return Parts(model, optimizer, settings, data, device, ok.tracker, run.seed, sets)


def describe_run(parts: Parts, record: RunRecord) -> None:
    """What the record keeps before training: the device, precision, versions and the
    model's size (and what was read from the data, with the run's config)."""
    p = parts
    if p.sets is not None:
        record.note_from_data(p.data, p.sets.train.classes)
    image_shape = (p.data.channels, p.data.image_size, p.data.image_size)
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    record.update(
        device=device_label(p.device),
        precision=p.settings.precision,
        **versions,
        **describe_model(p.model, image_shape),
    )


def train_job(parts: Parts, record: RunRecord, job: JobInfo, hooks: Sequence[Hook] = ()) -> None:
    """Size the model, then (unless ``trainer.epochs=0``) load the data, start the tracker
    and train, each epoch to the record, then the tracker, then ``hooks``. ``job_life``
    records how it ends."""
    p = parts
    if record.resume_state is not None and "precision" in record.summary:
        # a resumed run goes on in the precision it trained in, whatever "auto" says now
        p = replace(p, settings=replace(p.settings, precision=record.summary["precision"]))
    describe_run(p, record)
    if p.settings.epochs == 0:
        record.update(status="sized")
        return
    sets = p.sets or load_splits(p.data)  # a data set the model was sized from is not read twice
    classes = sets.train.classes or [str(i) for i in range(p.data.num_classes)]
    sizes = {f"{name}_images": len(split) for name, split in sets._asdict().items() if split}
    record.update(classes=list(classes), **sizes, data_fingerprint=fingerprint(*sets))
    s = p.settings
    loaders = build_loaders(p.data, s.batch_size, s.eval_batch_size, p.device, p.seed, sets)
    # A multirun's jobs share a W&B group (the sweep's name) and carry their overrides as
    # tags, so W&B groups them as the comparison table does.
    p.tracker.start(record.config, record.run_dir, job.name, job.sweep_name, job.overrides)
    record.update(status="running")
    fit(
        p.model,
        p.optimizer,
        loaders,
        s,
        [record, p.tracker, *hooks],
        record.resume_state,
        p.data.num_classes,
    )
    record.complete(s.epochs)


def recorded_config(config: dict[str, Any], job: JobInfo) -> dict[str, Any]:
    """The config as the record keeps it: with the job's choices and overrides."""
    kept = without_resume(job.overrides)
    return config | {"choices": job.choices, "sweep_name": job.sweep_name, "overrides": kept}


class JobLife:
    """What ``job_life`` hands its block: ``claim`` takes the run directory, ``build`` makes
    the parts (and keeps the tracker, to be finished however the job ends)."""

    def __init__(self, job: JobInfo) -> None:
        self.job = job
        self.record: RunRecord | None = None
        self.tracker: Any = None

    def claim(self, config: dict[str, Any]) -> RunRecord:
        """The run directory, taken for this run; or a refusal (one line), nothing written. A
        finished run is skipped. Either way a bad field is said first (``check``: cheap)."""
        resume = (config.get("trainer") or {}).get("resume", False)
        require(isinstance(resume, bool), "trainer.resume", resume, "true or false")
        config = recorded_config(config, self.job)
        restarted = restarts(os.environ) > 0  # requeued: the same task, carried on where it was
        try:
            record = RunRecord.claim(self.job.run_dir, config, resume, restarted)
        except ConfigError:
            check(config)  # a bad field says more than "holds another run"
            raise
        if record.done:  # skipped, but not with a bad field unsaid; its record stays as it is
            try:
                check(config)
            finally:
                record.release()
            log.info("%s is already %s; skipped", self.job.run_dir, record.summary["status"])
        elif job_id(os.environ) is not None:  # which SLURM job it is, and how often it restarted
            record.update(slurm_job_id=job_id(os.environ), slurm_restarts=restarts(os.environ))
        self.record = record
        return record

    def build(self, config: dict[str, Any]) -> Parts:
        parts = build(config, self.job.num)
        self.tracker = parts.tracker
        return parts

    def result(self) -> JobResult:
        summary = dict(self.record.summary) if self.record is not None else {}
        return JobResult(self.job.run_dir, summary)

    def fail(self, err: BaseException) -> None:
        """Keep why the job stopped in its record, where the record can still be written."""
        if self.record is None:
            return
        stop = stop_of(err)
        try:
            self.record.update(status=stop.status, **stop.record)
        except OSError as write_err:
            log.warning("the run's status could not be recorded: %s", write_err)

    def hand_on(self, warning: WarningWatch) -> None:
        """A time-limit warning that came, to the launcher, which requeues the job; where no
        requeue is left (``max_num_timeout``), the record says ``timeout``."""
        try:
            warning.hand_on()
        except Exception as err:
            if self.record is not None:
                why = f"its time limit came with no requeue left ({first_line(err)})"
                self.record.update(status="timeout", error=why)
            raise

    def finish(self, ok: bool) -> None:
        """Tell the tracker how the run ended and give the directory back."""
        if self.tracker is not None and self.record is not None:
            self.tracker.summary(self.record.summary)
            self.tracker.finish(0 if ok else 1)
        if self.record is not None:
            self.record.release()


@contextlib.contextmanager
def job_life(job: JobInfo) -> Iterator[JobLife]:
    """A job's whole life in one try/except/finally: SIGTERM and a time-limit warning
    interrupt it as Ctrl-C does, a worker whose sweep is gone stops; whatever stops it
    becomes its record's status, one line and an exit code (``vitsweep.errors.stop_of``); the
    tracker and the directory are released at the end, whatever happened."""
    life, ok, orphan, warning = JobLife(job), False, OrphanWatch(), WarningWatch()
    try:
        with sigterm_interrupts(), warning.watching(), orphan.watching():
            yield life
        ok = True
    except (KeyboardInterrupt, Exception) as err:
        life.fail(err)
        where = life.record.run_dir if life.record is not None else job.run_dir
        epochs = life.record.summary.get("epochs_done", 0) if life.record is not None else 0
        end_with(err, job.multirun, where=where, epochs=epochs)
    finally:
        life.finish(ok)
        orphan.exit_if_orphaned()  # a worker whose sweep is gone ends, its record written
        life.hand_on(warning)  # near its time limit, its record written: requeued by SLURM


def run_job(config: dict[str, Any], job: JobInfo, hooks: Sequence[Hook] = ()) -> JobResult:
    """A run, or one job of a sweep: claim its directory, build, train, record; returns how it
    ended. ``hooks`` see every epoch after the record and the tracker (a search's pruner)."""
    with job_life(job) as life:  # whatever stops the job: its status, one line, an exit code
        record = life.claim(config)  # the run directory: refused if it holds another run
        if not record.done:
            train_job(life.build(record.config), record, job, hooks)
    return life.result()


@contextlib.contextmanager
def stops_told(multirun: bool, where: Path | None = None) -> Iterator[None]:
    """Whatever stops the block outside a job's life (a config that cannot be resolved, a
    search worker that cannot open its study): one line and its exit code, as for a job."""
    try:
        yield
    except (KeyboardInterrupt, Exception) as err:
        end_with(err, multirun, where=where)
