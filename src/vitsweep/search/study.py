"""The one study of a search: where it is stored, its sampler and pruner, and how its trials
count against the budget (a trial retried after a lost worker or a resume counts once)."""

import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

from vitsweep.errors import ConfigError, a_few, first_line
from vitsweep.fields import check_fields
from vitsweep.settings import SearchSettings

log = logging.getLogger(__name__)


def search_settings(search: dict[str, Any]) -> SearchSettings:
    """The ``search:`` block, its fields and ranges checked."""
    check_fields("search", SearchSettings, search)
    return SearchSettings(**search)


def storage_url(settings: SearchSettings, sweep_dir: Path) -> str:
    return settings.storage or f"sqlite:///{(Path(sweep_dir) / 'study.db').resolve()}"


OPEN_TRIES = 3  # workers a cluster starts at one instant race to create a new storage's tables


def open_study(settings: SearchSettings, sweep_dir: Path, name: str) -> Any:
    """The sweep's study (created by the first to ask), with its sampler and pruner; a storage
    that cannot be opened is one ConfigError. A worker that lost the race to create the
    storage's tables (SLURM starts an array's workers together) opens it again."""
    url = storage_url(settings, sweep_dir)
    for attempt in range(OPEN_TRIES):
        try:
            return create_study(settings, url, name)
        except Exception as err:
            if attempt + 1 == OPEN_TRIES or not lost_a_race(err):
                raise ConfigError(
                    f"search.storage={url}: cannot be opened ({first_line(err)})"
                ) from None
            time.sleep(1 + attempt)
    return None  # not reached: the last attempt returns or raises


def lost_a_race(err: Exception) -> bool:
    """Another worker was creating the same storage's tables or study at that instant."""
    said = f"{type(err).__name__}: {err}"
    return any(w in said for w in ("IntegrityError", "already exists", "database is locked"))


def create_study(settings: SearchSettings, url: str, name: str) -> Any:
    import optuna

    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna's words
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.create_study(
            study_name=name,
            storage=open_storage(url, settings.heartbeat_s),
            direction="maximize",
            load_if_exists=True,
            sampler=build_sampler(settings),
            pruner=build_pruner(settings),
        )


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


def build_sampler(settings: SearchSettings, earlier: int = 0) -> Any:
    """The worker's sampler. Workers draw with seeds of their own (``sampler_seed + worker``);
    a search resumed after ``earlier`` trials draws from a seed of its own too, so that it
    goes on from where the study is instead of proposing its first trials again."""
    import numpy as np
    import optuna

    seed = settings.sampler_seed + settings.worker
    if earlier:
        seed = int(np.random.SeedSequence([seed, earlier]).generate_state(1)[0])
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def reseed(study: Any, settings: SearchSettings, started: float) -> None:
    """Give a worker of a resumed search a sampler seeded by the trials of the sweep's earlier
    runs (those that began before ``started``, when this run of the sweep began)."""
    trials = study.get_trials(deepcopy=False)
    earlier = sum(1 for t in trials if t.datetime_start and t.datetime_start.timestamp() < started)
    if earlier:
        study.sampler = build_sampler(settings, earlier)


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


def find_study(settings: SearchSettings, sweep_dir: Path, name: str) -> Any | None:
    """The sweep's study if its storage already holds one, never creating anything (a new
    search's study is made by its first worker, once the sweep is claimed)."""
    import optuna

    url = storage_url(settings, sweep_dir)
    local = url.removeprefix("journal:") if url.startswith("journal:") else None
    if settings.storage is None:
        local = str(Path(sweep_dir) / "study.db")
    if local is not None and not Path(local).exists():
        return None
    try:
        storage = open_storage(url, settings.heartbeat_s)
        names = optuna.study.get_all_study_names(storage)
        return optuna.load_study(study_name=name, storage=storage) if name in names else None
    except Exception as err:
        raise ConfigError(f"search.storage={url}: cannot be opened ({first_line(err)})") from None


def check_study_agrees(study: Any, sweep_dir: Path) -> None:
    """A study and the sweep directory's trial records tell one story: refused in one line
    when the directory holds trials the study does not know (its storage replaced), or the
    study holds finished trials whose records are gone (the directory removed), since a
    search would then report or count numbers no run here trained."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False) if study is not None else []
    known = {t.number for t in trials}
    records = sorted(
        int(p.name.removeprefix("trial_"))
        for p in Path(sweep_dir).glob("trial_*")
        if p.name.removeprefix("trial_").isdigit() and any(p.glob("*.json"))
    )
    if strays := [n for n in records if n not in known]:
        shown = a_few(f"trial_{n}" for n in strays)
        raise ConfigError(
            f"{sweep_dir} holds records of trials its study does not know ({shown}): the "
            "study's storage was replaced or deleted; restore it, or choose another sweep_name"
        )
    retried, finished = retried_numbers(trials), (TrialState.COMPLETE, TrialState.PRUNED)
    lost = [
        t.number
        for t in trials
        if t.state in finished and t.number not in retried and t.number not in records
    ]
    if lost:
        shown = a_few(f"trial_{n}" for n in lost)
        raise ConfigError(
            f"the study {study.study_name} holds {len(lost)} finished trials whose records are "
            f"not in {sweep_dir} ({shown}): restore them, or choose another sweep_name"
        )


def read_summary(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def retry_stale(
    study: Any, started: float, sweep_dir: Path, only_worker: int | None = None
) -> None:
    """On resume: a trial cut short by the last run of the sweep (still marked running, or
    failed with a record that says interrupted) is tried again by a new trial that carries on
    in its run directory (``vitsweep.search.worker.run_trial``), counted once. A worker that
    SLURM restarted (``only_worker``) retries its own cut trial alone, running or failed: no
    other worker runs it."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    for trial in trials:
        status = read_summary(Path(sweep_dir) / f"trial_{trial.number}").get("status")
        began = trial.datetime_start.timestamp() if trial.datetime_start else started
        mine = only_worker is not None and trial.user_attrs.get("worker") == only_worker
        cut = (trial.state == TrialState.RUNNING and (began < started or mine)) or (
            trial.state == TrialState.FAIL and status in ("interrupted", "running", "stopped")
        )
        if not cut or trial.number in retried or (only_worker is not None and not mine):
            continue
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)  # a heartbeat
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})  # may be first
        log.info("trial %d was cut short: it carries on as a new trial", trial.number)
