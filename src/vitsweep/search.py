"""A search that stops hopeless trials early, on one machine or many.

    python src/run.py -m search=optuna search.trials=40 search.workers=4 search.pruner=asha

Hydra launches ``search.workers`` jobs through whichever launcher is configured (joblib on one
machine, submitit on SLURM). Each job is an Optuna worker: it loads the sweep's one study from
``search.storage`` and runs trials until ``search.trials`` are finished in total, so no worker
waits for another. A trial is an ordinary run (``multirun/<sweep>/trial_<n>/``, its record,
its W&B run) built and trained by ``vitsweep.job.run_job`` like every run; after each evaluated
epoch its validation top-1 goes to the pruner, which may stop it (status ``pruned``).
"""

import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from vitsweep.errors import ConfigError, Pruned, first_line, require, require_each
from vitsweep.fields import check_fields
from vitsweep.files import write_atomic
from vitsweep.record import free_on_resume
from vitsweep.sweep import override_key

log = logging.getLogger(__name__)
SWEEP_STARTED = "VITSWEEP_SWEEP_STARTED"  # when this run of the sweep began (a resume's cut)
PRUNERS = ("median", "asha", "hyperband", "none")
SAMPLERS = ("tpe", "random")
SCHEMES = (
    "sqlite:///",
    "postgresql://",
    "postgresql+psycopg://",
    "postgresql+psycopg2://",
    "journal:",
)
KINDS = {"float": ("low", "high"), "int": ("low", "high"), "categorical": ("choices",)}


@dataclass
class SearchSettings:
    """The ``search:`` block (conf/search/*.yaml): the space and how it is searched."""

    space: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> its distribution
    trials: int = free_on_resume(20)  # in total, over every worker (a resume may raise it)
    workers: int = free_on_resume(1)  # jobs the launcher runs, each an Optuna worker
    pruner: str = "median"  # median | asha | hyperband | none
    startup_epochs: int = 1  # the first epochs of a trial are never pruned
    sampler: str = "tpe"  # tpe | random
    sampler_seed: int = 0
    storage: str | None = None  # null: sqlite:///<sweep dir>/study.db; journal:PATH; postgresql://
    heartbeat_s: int = 60  # RDB storages: a worker silent this long has its trial retried
    worker: int = free_on_resume(0)  # this job's number among the workers (the grid sets it)

    def __post_init__(self) -> None:
        s = self
        require_each("search", [
            ("space", s.space, bool(s.space), "a mapping of settings to distributions"),
            ("trials", s.trials, s.trials >= max(1, s.workers), f"at least search.workers "
             f"({s.workers}): every worker runs trials"),
            ("workers", s.workers, s.workers >= 1, "a positive integer"),
            ("pruner", s.pruner, s.pruner in PRUNERS, ", ".join(PRUNERS)),
            ("startup_epochs", s.startup_epochs, s.startup_epochs >= 0, "an integer >= 0"),
            ("sampler", s.sampler, s.sampler in SAMPLERS, ", ".join(SAMPLERS)),
            ("storage", s.storage, s.storage is None or s.storage.startswith(SCHEMES),
             "null, sqlite:///PATH, journal:PATH or postgresql://USER@HOST/DB"),
            ("heartbeat_s", s.heartbeat_s, s.heartbeat_s >= 1, "a positive integer"),
        ])  # fmt: skip
        for key, spec in s.space.items():
            kind = spec.get("type") if isinstance(spec, dict) else None
            require(kind in KINDS and all(k in spec for k in KINDS[kind]), f"search.space.{key}",
                    spec, "{type: float|int, low, high[, log, step]} or {type: categorical, "
                    "choices: [...]}")  # fmt: skip


def settings_of(config: DictConfig) -> SearchSettings:
    search = OmegaConf.to_container(config.search, resolve=True)
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
                study_name=name, storage=storage, direction="maximize", load_if_exists=True,
                sampler=sampler(settings), pruner=pruner(settings),
            )  # fmt: skip
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
    return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_s,
                                      grace_period=2 * heartbeat_s,
                                      heartbeat_stale_trial_callback=retry)  # fmt: skip


def sampler(settings: SearchSettings) -> Any:
    import optuna

    seed = settings.sampler_seed + settings.worker  # workers must not all draw the same points
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def pruner(settings: SearchSettings) -> Any:
    import optuna

    first = max(settings.startup_epochs, 1)
    return {
        "median": lambda: optuna.pruners.MedianPruner(n_warmup_steps=settings.startup_epochs),
        "asha": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=first),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=first),
        "none": lambda: optuna.pruners.NopPruner(),
    }[settings.pruner]()


def suggest(trial: Any, space: dict[str, dict[str, Any]]) -> list[str]:
    """The trial's overrides, one per setting of the space."""
    chosen = []
    for key, spec in space.items():
        if spec["type"] == "categorical":
            value = trial.suggest_categorical(key, list(spec["choices"]))
        elif spec["type"] == "int":
            value = trial.suggest_int(key, spec["low"], spec["high"], step=spec.get("step", 1),
                                      log=spec.get("log", False))  # fmt: skip
        else:
            value = trial.suggest_float(key, spec["low"], spec["high"], step=spec.get("step"),
                                        log=spec.get("log", False))  # fmt: skip
        chosen.append(f"{key}={value}")
    return chosen


def retried_numbers(trials: list[Any]) -> set[int]:
    """The trials that another trial retries: by a heartbeat (Optuna's retry history) or by
    a resume (``retry_of``)."""
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return retried | {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}


def counted(study: Any) -> int:
    """Trials that count against the budget: finished ones, and those running now (not those
    waiting to run). A failed trial that was retried (by a heartbeat or a resume) is not
    counted: its retry is."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return sum(1 for t in trials if t.state in live
               or (t.state == TrialState.FAIL and t.number not in retried))  # fmt: skip


def retry_stale(study: Any, started: float, sweep_dir: Path) -> None:
    """On resume: a trial cut short by the last run of the sweep (still marked running, or
    failed with a record that says interrupted) is tried again by a new trial that carries on
    in its run directory (``run_trial``), counted once."""
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


def base_overrides(overrides: list[str], space: dict[str, Any]) -> list[str]:
    """The sweep's own overrides, less the worker's number and what the space sets."""
    keys = {k.lstrip("+~") for k in space} | {"search.worker"}
    return [o for o in overrides if override_key(o) not in keys]


def run_worker(cfg: DictConfig, job: Any) -> None:
    """One worker: trials of the sweep's study, until the budget is spent."""
    from vitsweep.job import run_job

    settings = settings_of(cfg)
    sweep_dir, name = Path(job.run_dir).parent, str(job.sweep_name)
    study = open_study(settings, sweep_dir, name)
    if OmegaConf.select(cfg, "trainer.resume") and settings.worker == 0:
        retry_stale(study, float(os.environ.get(SWEEP_STARTED, time.time())), sweep_dir)
    base = base_overrides(list(job.overrides), settings.space)

    def objective(trial: Any) -> float:
        return run_trial(trial, settings, base, sweep_dir, job, run_job)

    while counted(study) < settings.trials:
        study.optimize(objective, n_trials=1, catch=(TrialFailed,))


class TrialFailed(RuntimeError):
    """The trial's run failed or diverged: Optuna records it as failed, the search goes on."""


def retried_from(trial: Any) -> int | None:
    """The trial this one retries (after a resume, or a worker's lost heartbeat), if any."""
    frozen = trial.study.get_trials(deepcopy=False)[trial.number]  # its attributes, as stored
    found = frozen.user_attrs.get("retry_of", frozen.system_attrs.get("failed_trial"))
    return None if found is None else int(found)


def run_trial(trial, settings, base, sweep_dir, job, run_job) -> float:  # noqa: ANN001
    """One trial: an ordinary run of the base config with the trial's overrides, its
    validation top-1 reported to the pruner after every evaluated epoch but the last. A retry
    carries on in the run directory of the trial it retries, from its last checkpoint."""
    import optuna

    from vitsweep.config import compose_job

    overrides = [*base, *suggest(trial, settings.space)]
    run_dir = Path(sweep_dir) / f"trial_{trial.number}"
    source = retried_from(trial)
    if source is not None and (Path(sweep_dir) / f"trial_{source}").is_dir():
        (Path(sweep_dir) / f"trial_{source}").rename(run_dir)  # its record goes on, not twice
        overrides.append("trainer.resume=true")
    cfg, choices = compose_job(overrides)
    epochs = int(cfg.trainer.epochs)

    def report(row: dict[str, Any]) -> None:
        if row.get("val_acc") is None:
            return
        trial.report(row["val_acc"], int(row["epoch"]))
        if settings.startup_epochs < row["epoch"] < epochs and trial.should_prune():
            raise Pruned(int(row["epoch"]))

    trial_job = type(job)(run_dir=run_dir, multirun=True, choices=choices, overrides=overrides,
                          name=f"trial {trial.number}", sweep_name=job.sweep_name, num=job.num,
                          on_epoch=report)  # fmt: skip
    run_job(cfg, trial_job)
    trial.set_user_attr("run_dir", os.path.relpath(run_dir))  # as the sweep's own paths read
    trial.set_user_attr("worker", settings.worker)
    summary = read_summary(run_dir)
    if summary.get("status") == "pruned":
        raise optuna.TrialPruned()
    if summary.get("status") != "completed" or summary.get("best_val_acc") is None:
        raise TrialFailed(f"trial {trial.number}: {summary.get('status', 'no record')}: "
                          f"{summary.get('error', 'no validation top-1')}")  # fmt: skip
    return float(summary["best_val_acc"])


def read_summary(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


class CheckSearch(Callback):
    """Before a search starts (and before its directory is claimed): every setting checked,
    a trial's config composed and checked with each choice of the space, the storage opened
    (the study made), and a validation split to tune on. Bad input is one line and exit 2,
    before any trial."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from vitsweep.callbacks import refuse

        if not config.get("search"):
            return
        try:
            check_search(config)
        except ConfigError as err:
            refuse(err)
        except ImportError as err:
            refuse(ConfigError(f"search= needs {err.name}: pip install -e '.[search]'"))
        except Exception as err:  # Hydra would make it a warning and start the workers
            refuse(ConfigError(f"the search cannot start: {type(err).__name__}: {err}"))
        os.environ[SWEEP_STARTED] = str(time.time())


def check_search(config: DictConfig) -> None:
    """Everything a search can be refused for, before any trial."""
    from vitsweep.config import compose_job
    from vitsweep.job import check

    settings = settings_of(config)
    require(not config.get("dry_run"), "dry_run", True, "false in a search: its trials are "
            "drawn as it goes, there is no grid to list")  # fmt: skip
    fraction = OmegaConf.select(config, "data.val_fraction", default=0)
    require(bool(fraction) and fraction > 0, "data.val_fraction", fraction,
            "a fraction > 0 in a search: tuning on the test set is no search")  # fmt: skip
    base = base_overrides(list(config.hydra.overrides.task), settings.space)
    for trial_overrides in sample_points(settings.space):  # a misspelt choice fails here
        try:
            cfg, choices = compose_job([*base, *trial_overrides])
        except Exception as err:
            raise ConfigError(f"search.space: {' '.join(trial_overrides)} cannot be composed "
                              f"({first_line(err)})") from None  # fmt: skip
        check(OmegaConf.to_container(cfg, resolve=True) | {"choices": choices})
    sweep_dir = Path(config.hydra.sweep.dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    open_study(settings, sweep_dir, str(config.sweep_name))


def sample_points(space: dict[str, dict[str, Any]]) -> list[list[str]]:
    """A few points of the space that together touch every choice and both ends of every
    range: enough to find a setting that cannot be composed or built."""
    ends = {k: (list(v["choices"]) if v["type"] == "categorical" else [v["low"], v["high"]])
            for k, v in space.items()}  # fmt: skip
    widest = max(len(values) for values in ends.values())
    return [[f"{k}={values[i % len(values)]}" for k, values in ends.items()] for i in range(widest)]


class SearchReport(Callback):
    """After a search: Optuna's own plots (history, intermediate values, importances) and
    search.md (the best trial, what was pruned, the epochs spent, the command that reruns the
    best trial over seeds) in results/<sweep_name>/, beside the table of its trials."""

    def __init__(self, results_dir: str = "results") -> None:
        self.results_dir = Path(results_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not config.get("search"):
            return
        settings = settings_of(config)
        study = open_study(settings, Path(config.hydra.sweep.dir), str(config.sweep_name))
        out_dir = self.results_dir / str(config.sweep_name)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_plots(study, out_dir)
        overrides = base_overrides(list(config.hydra.overrides.task), settings.space)
        fraction = OmegaConf.select(config, "data.val_fraction")
        experiment = config.hydra.runtime.choices.get("experiment")
        if experiment and not any(o.startswith("experiment=") for o in overrides):
            overrides = [f"experiment={experiment}", *overrides]  # set by the search's file
        text = search_summary(study, settings, overrides, str(config.sweep_name), fraction)
        write_atomic(out_dir / "search.md", text)
        print(text)


def write_plots(study: Any, out_dir: Path) -> None:
    """Optuna's own matplotlib plots; one that cannot be drawn yet (too few trials) is left
    out with a log line."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    for name, draw in (("optimization_history", plots.plot_optimization_history),
                       ("intermediate_values", plots.plot_intermediate_values),
                       ("param_importances", plots.plot_param_importances)):  # fmt: skip
        try:
            with warnings.catch_warnings():  # "experimental", "too few trials": said below
                warnings.simplefilter("ignore")
                axes = draw(study)
            axes.figure.tight_layout()
            write_atomic(
                out_dir / f"{name}.png",
                lambda tmp, fig=axes.figure: fig.savefig(tmp, format="png", dpi=120),
            )
        except Exception as err:  # e.g. importances need two finished trials
            log.info("%s not drawn: %s", name, err)
        finally:
            plt.close("all")


def search_summary(
    study: Any, settings: SearchSettings, overrides: list[str], name: str, fraction: float
) -> str:
    """search.md: what the search did, its best trial, and the command that reruns it."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    states = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    epochs = sum(len(t.intermediate_values) for t in trials)
    lines = [f"# Search {name}", "",
             f"{len(trials)} trials: {states['complete']} completed, {states['pruned']} pruned, "
             f"{states['fail']} failed; {epochs} epochs trained and validated in all "
             f"(pruner: {settings.pruner}, sampler: {settings.sampler}, seed "
             f"{settings.sampler_seed})."]  # fmt: skip
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    if finished:
        best = max(finished, key=lambda t: t.value)
        chosen = [f"{k}={v}" for k, v in best.params.items()]
        skip = ("search", "sweep_name", "trainer.resume", "data.val_fraction")
        kept = [o for o in overrides if not override_key(o).startswith(skip)]
        command = " ".join(["python src/run.py -m", *kept, *chosen, f"data.val_fraction={fraction}",
                            "seed=0,1,2", f"sweep_name={name}-best"])  # fmt: skip
        lines += ["", f"Best trial: {best.number}, validation top-1 {100 * best.value:.2f}% "
                  f"({', '.join(chosen)}; record: {best.user_attrs.get('run_dir')}).", "",
                  "Rerun it over seeds for a table to cite:", "", f"    {command}"]  # fmt: skip
    return "\n".join(lines) + "\n"
