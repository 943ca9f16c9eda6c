"""A search's worker: trials of the sweep's one study until the budget is spent, each an
ordinary run (``vitsweep.job.run_job``) in ``multirun/<sweep>/trial_<n>/``, its validation
top-1 told to the pruner after every evaluated epoch (``PruneTrial``, a training hook)."""

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitsweep.config import compose_job, override_key
from vitsweep.errors import ConfigError, Pruned
from vitsweep.hooks import Hook
from vitsweep.job import JobInfo, run_job
from vitsweep.search.study import (
    count_trials,
    open_study,
    reseed,
    retry_stale,
    search_settings,
)
from vitsweep.settings import SearchSettings
from vitsweep.slurm import restarts

SWEEP_STARTED = "VITSWEEP_SWEEP_STARTED"  # when this run of the sweep began (a resume's cut)


def base_overrides(overrides: list[str], space: dict[str, Any]) -> list[str]:
    """The sweep's own overrides, less what the space sets and the search's own settings
    (``search.trials=40``: how the search runs, not what a trial trains)."""
    keys = {k.lstrip("+~") for k in space}
    kept = [o for o in overrides if override_key(o) not in keys]
    return [o for o in kept if not override_key(o).startswith("search.")]


def suggest(trial: Any, space: dict[str, dict[str, Any]]) -> list[str]:
    """The trial's overrides, one per setting of the space."""
    chosen = []
    for key, spec in space.items():
        log_scale = spec.get("log", False)
        if spec["type"] == "categorical":
            value = trial.suggest_categorical(key, list(spec["choices"]))
        elif spec["type"] == "int":
            step = spec.get("step", 1)
            value = trial.suggest_int(key, spec["low"], spec["high"], step=step, log=log_scale)
        else:
            step = spec.get("step")
            value = trial.suggest_float(key, spec["low"], spec["high"], step=step, log=log_scale)
        chosen.append(f"{key}={value}")
    return chosen


class TrialFailed(RuntimeError):
    """The trial's run failed or diverged: Optuna records it as failed, the search goes on."""


class PruneTrial(Hook):
    """A training hook: each evaluated epoch's validation top-1 told to the trial, which the
    pruner may stop (``Pruned``) after its ``startup_epochs`` and before its last epoch."""

    def __init__(self, trial: Any, startup_epochs: int, epochs: int) -> None:
        self.trial, self.startup_epochs, self.epochs = trial, startup_epochs, epochs

    def on_epoch(self, row: dict[str, Any], step: int, training: Any) -> None:
        if row.get("val_acc") is None:
            return
        epoch = int(row["epoch"])
        self.trial.report(row["val_acc"], epoch)
        if self.startup_epochs < epoch < self.epochs and self.trial.should_prune():
            raise Pruned(epoch)


@dataclass
class Worker:
    """One worker of a search: its settings, the sweep's own overrides, and its job."""

    settings: SearchSettings
    base: list[str]  # the sweep's overrides, less what the space and the worker set
    job: JobInfo

    @property
    def sweep_dir(self) -> Path:
        return Path(self.job.run_dir).parent


def run_worker(config: dict[str, Any], job: JobInfo) -> None:
    """One worker: trials of the sweep's study, until the budget is spent."""
    settings = search_settings(config["search"])
    worker = Worker(settings, base_overrides(list(job.overrides), settings.space), job)
    study = open_study(settings, worker.sweep_dir, str(job.sweep_name))
    started = float(os.environ.get(SWEEP_STARTED, time.time()))
    reseed(study, settings, started)  # a resumed search draws on, not its first trials again
    if (config.get("trainer") or {}).get("resume") and settings.worker == 0:
        retry_stale(study, started, worker.sweep_dir)
    elif restarts(os.environ) > 0:  # requeued by SLURM: its own cut trial carries on
        retry_stale(study, started, worker.sweep_dir, only_worker=settings.worker)
    with failed_trials_in_one_line():
        while count_trials(study) < settings.trials:
            study.optimize(lambda t: run_trial(t, worker), n_trials=1, catch=(TrialFailed,))


class OneLine(logging.Filter):
    """Optuna's warning about a failed trial without its traceback: the trial's own run said
    why in its line and its record; a bug still shows its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], TrialFailed):
            record.exc_info = None
        return True


@contextlib.contextmanager
def failed_trials_in_one_line() -> Iterator[None]:
    handlers, one_line = logging.getLogger("optuna").handlers, OneLine()
    for handler in handlers:  # where Optuna writes its own lines
        handler.addFilter(one_line)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(one_line)


def retried_from(trial: Any) -> int | None:
    """The trial this one retries (after a resume, or a worker's lost heartbeat), if any."""
    frozen = trial.study.get_trials(deepcopy=False)[trial.number]  # its attributes, as stored
    found = frozen.user_attrs.get("retry_of", frozen.system_attrs.get("failed_trial"))
    return None if found is None else int(found)


def run_trial(trial: Any, worker: Worker) -> float:
    """One trial: an ordinary run of the base config with the trial's overrides, its
    validation top-1 reported to the pruner after every evaluated epoch but the last. A retry
    carries on in the run directory of the trial it retries, from its last checkpoint. Its
    value is that run's own result, never a record read back from a file."""
    import optuna

    # the trial's number is one of its overrides: trials that draw one point are two rows
    overrides = [
        *worker.base,
        f"search.trial={trial.number}",
        *suggest(trial, worker.settings.space),
    ]
    run_dir = worker.sweep_dir / f"trial_{trial.number}"
    source = retried_from(trial)
    if source is not None and (worker.sweep_dir / f"trial_{source}").is_dir():
        (worker.sweep_dir / f"trial_{source}").rename(run_dir)  # its record goes on, not twice
        overrides.append("trainer.resume=true")
    try:  # a trial whose config cannot be composed is a failed trial, as its run would be
        config, choices = compose_job(overrides)
    except ConfigError as err:
        raise TrialFailed(f"trial {trial.number}: {err}") from None
    trial_job = JobInfo(
        run_dir=run_dir,
        multirun=True,
        choices=choices,
        overrides=overrides,
        name=f"trial {trial.number}",
        sweep_name=worker.job.sweep_name,
        num=worker.job.num,
    )
    prune = PruneTrial(trial, worker.settings.startup_epochs, int(config["trainer"]["epochs"]))
    trial.set_user_attr("run_dir", os.path.relpath(run_dir))  # as the sweep's own paths read
    trial.set_user_attr("worker", worker.settings.worker)  # before: a requeue finds its own
    result = run_job(config, trial_job, hooks=[prune])
    if result.status == "pruned":
        raise optuna.TrialPruned()
    if result.status != "completed" or result.summary.get("best_val_acc") is None:
        raise TrialFailed(
            f"trial {trial.number}: {result.status or 'no record'}: "
            f"{result.summary.get('error', 'no validation top-1')}"
        )
    return float(result.summary["best_val_acc"])
