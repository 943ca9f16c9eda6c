"""The one study of a search: where it is stored, its sampler and pruner, and how its trials
count against the budget (a trial retried after a lost worker or a resume counts once)."""

import json
import logging
import warnings
from pathlib import Path
from typing import Any

from vitsweep.errors import ConfigError, first_line
from vitsweep.fields import check_fields
from vitsweep.settings import SearchSettings

log = logging.getLogger(__name__)


def search_settings(search: dict[str, Any]) -> SearchSettings:
    """The ``search:`` block, its fields and ranges checked."""
    check_fields("search", SearchSettings, search)
    return SearchSettings(**search)


def storage_url(settings: SearchSettings, sweep_dir: Path) -> str:
    return settings.storage or f"sqlite:///{(Path(sweep_dir) / 'study.db').resolve()}"


def open_study(settings: SearchSettings, sweep_dir: Path, name: str) -> Any:
    """The sweep's study (created by the first to ask), with its sampler and pruner; a storage
    that cannot be opened is one ConfigError."""
    import optuna

    url = storage_url(settings, sweep_dir)
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna's words
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = open_storage(url, settings.heartbeat_s)
            return optuna.create_study(
                study_name=name,
                storage=storage,
                direction="maximize",
                load_if_exists=True,
                sampler=build_sampler(settings),
                pruner=build_pruner(settings),
            )
    except Exception as err:
        raise ConfigError(f"search.storage={url}: cannot be opened ({first_line(err)})") from None


def open_storage(url: str, heartbeat_s: int) -> Any:
    """A journal file (a shared file system), or a database (SQLite, PostgreSQL) whose
    heartbeats let a trial of a worker that died be failed and tried again."""
    import optuna

    if url.startswith("journal:"):
        backend = optuna.storages.journal.JournalFileBackend(url.removeprefix("journal:"))
        return optuna.storages.JournalStorage(backend)
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)
    return optuna.storages.RDBStorage(
        url,
        heartbeat_interval=heartbeat_s,
        grace_period=2 * heartbeat_s,
        heartbeat_stale_trial_callback=retry,
    )


def build_sampler(settings: SearchSettings) -> Any:
    import optuna

    seed = settings.sampler_seed + settings.worker  # workers must not all draw the same points
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def build_pruner(settings: SearchSettings) -> Any:
    import optuna

    first = max(settings.startup_epochs, 1)
    return {
        "median": lambda: optuna.pruners.MedianPruner(n_warmup_steps=settings.startup_epochs),
        "asha": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=first),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=first),
        "none": lambda: optuna.pruners.NopPruner(),
    }[settings.pruner]()


def retried_numbers(trials: list[Any]) -> set[int]:
    """The trials that another trial retries: by a heartbeat (Optuna's retry history) or by
    a resume (``retry_of``)."""
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return retried | {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}


def count_trials(study: Any) -> int:
    """Trials that count against the budget: finished ones, and those running now (not those
    waiting to run). A failed trial that was retried (by a heartbeat or a resume) is not
    counted: its retry is."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    failed = TrialState.FAIL
    return sum(
        1 for t in trials if t.state in live or (t.state == failed and t.number not in retried)
    )


def read_summary(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def retry_stale(study: Any, started: float, sweep_dir: Path) -> None:
    """On resume: a trial cut short by the last run of the sweep (still marked running, or
    failed with a record that says interrupted) is tried again by a new trial that carries on
    in its run directory (``vitsweep.search.worker.run_trial``), counted once."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    for trial in trials:
        status = read_summary(Path(sweep_dir) / f"trial_{trial.number}").get("status")
        began = trial.datetime_start.timestamp() if trial.datetime_start else started
        cut = (trial.state == TrialState.RUNNING and began < started) or (
            trial.state == TrialState.FAIL and status in ("interrupted", "running", "stopped")
        )
        if not cut or trial.number in retried:
            continue
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)  # a heartbeat
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})  # may be first
        log.info("trial %d was cut short: it carries on as a new trial", trial.number)
