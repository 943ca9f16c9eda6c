"""Hydra callbacks: what happens around a run or a multirun without anyone asking.

    DryRun            dry_run=true: the jobs listed and sized, nothing run
    CheckSearch       search=...: every setting checked, the study opened, before any trial
    ClaimDirectories  a run's directory writable, a sweep's directory claimed by its grid
    ComparisonReport  after every multirun: results/<sweep_name>/ (table, plots, manifest)
    SearchReport      after a search: Optuna's plots and search.md

Each takes Hydra's config here and hands plain settings on; every refusal is one line and its
exit code, through ``vitsweep.errors``.
"""

import atexit
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vitsweep.config import (
    command_line,
    compose_sweep_job,
    override_key,
    parse_overrides,
    plain,
    sweep_jobs,
    sweeper_of,
    sweeper_params,
    uses_basic_sweeper,
    without_hydra,
)
from vitsweep.errors import (
    ConfigError,
    Listed,
    ReportError,
    Unfinished,
    end_with,
    find_stop,
    first_line,
)
from vitsweep.fields import check_fields
from vitsweep.job import build
from vitsweep.measure import describe_model
from vitsweep.record import FINISHED
from vitsweep.report import label_runs, load_sweep, pick_baseline, write_report
from vitsweep.report.aggregate import varying_overrides
from vitsweep.report.pipeline import tracker_report
from vitsweep.search import SWEEP_STARTED, check_search, write_search_report
from vitsweep.settings import ReportSettings, check_sweep_name, may_differ_on_resume
from vitsweep.signals import SWEEP_PID, interrupt_on_sigterm, restore_sigterm
from vitsweep.slurm import check_array_size, max_array_size, submitted_here
from vitsweep.sweep import (
    check_results_folder,
    claim_sweep,
    git_commit,
    harness_state,
    holds_jobs,
)

ROOT = Path(__file__).resolve().parents[2]


def sweep_grid(config: DictConfig) -> dict[str, Any]:
    """What makes a sweep this sweep: its command line and the sweeper's own parameters (an
    experiment's grid), a search's space, less the settings a resume may change
    (``trainer.resume``, ``trainer.progress``, ``report.*``, ...)."""
    overrides = [o for o in command_line(config) if not may_differ_on_resume(override_key(o))]
    params = sweeper_params(config)
    grid = {  # sorted: the same grid typed in another order is the same sweep
        "overrides": sorted(overrides),
        "params": {k: v for k, v in sorted(params.items()) if not may_differ_on_resume(k)},
    }
    if config.get("search"):  # its settings, wherever they were set, make another search
        search = plain(config.search)
        kept = {k: v for k, v in search.items() if not may_differ_on_resume(f"search.{k}")}
        grid["search"] = {k: str(v) for k, v in sorted(kept.items())}
    return grid


def report_settings(config: DictConfig) -> ReportSettings:
    report = plain(config.get("report") or {})
    check_fields("report", ReportSettings, report)
    return ReportSettings(**report)


def check_baseline(config: DictConfig, baseline: int | str | None) -> None:
    """The baseline must name one row of the table the grid will make: checked against the
    jobs the basic sweeper will launch. A search's rows are its trials, known only at the end
    (as are another sweeper's), where a baseline that names none is said in the notes."""
    if baseline is None or config.get("search") or not uses_basic_sweeper(config):
        return
    import pandas as pd  # deferred, as everywhere: a run that makes no table stays light

    jobs = pd.DataFrame(
        [
            {f"override:{k}": v for k, v in parse_overrides(job).items()}
            for job in sweep_jobs(config)
        ]
    )
    keys = varying_overrides(jobs, sweep_grid(config))
    pick_baseline(list(dict.fromkeys(label_runs(jobs, keys))), baseline)


def check_no_repeated_job(config: DictConfig) -> None:
    """A grid that lists one job twice (``optim.lr=1e-3,1e-3``) would train the same run twice
    and count it as two samples: refused (the basic sweeper's grid; another's is its own)."""
    if not uses_basic_sweeper(config):
        return
    seen: set[frozenset[str]] = set()
    for job in sweep_jobs(config):
        if (key := frozenset(job)) in seen:
            raise ConfigError(
                f"the grid lists the job {' '.join(job)} twice: a value repeats "
                "in a list of choices"
            )
        seen.add(key)


def check_cluster_limits(config: DictConfig) -> None:
    """A grid for SLURM larger than the cluster's job arrays may be: refused before anything
    is claimed, and before Hydra composes each job to check it (a quarter second a job)."""
    launcher = str(OmegaConf.select(config, "hydra.launcher._target_", default="") or "")
    if "slurm" in launcher.lower() and uses_basic_sweeper(config):
        check_array_size(len(sweep_jobs(config)), max_array_size())


def size_job(config: DictConfig, overrides: list[str]) -> dict[str, Any]:
    """One job's model built (on the CPU) and sized, or the one line that stops it."""
    try:
        task = compose_sweep_job(config, overrides)
        task["device"] = {"name": "cpu"}  # sizes do not depend on the device
        parts = build(task)
        shape = (parts.data.channels, parts.data.image_size, parts.data.image_size)
        size = describe_model(parts.model, shape)
        return {
            "parameters": f"{size['params']:,}",
            "tokens": str(size["tokens"]),
            "GFLOPs/img": f"{size['flops_per_image'] / 1e9:.3g}",
            "epochs": str(parts.settings.epochs),
            "ok": "ok",
        }
    except Exception as err:
        return {"ok": f"error: {first_line(find_stop(err) or err)}"}


class DryRun(Callback):
    """``dry_run=true``: list the jobs the command would launch, each built and sized on the
    CPU (parameters, tokens, forward FLOPs), then stop: nothing is created or trained. Exit 0,
    or 2 if a job's config is bad (its line says why)."""

    @staticmethod
    def asked(config: DictConfig) -> bool:
        value = config.get("dry_run", False)
        if not isinstance(value, bool):  # dry_run=no would be a string, and true
            end_with(ConfigError(f"dry_run={value!r}: expected true or false"))
        return value

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self.asked(config):
            self.plan(config, [command_line(config)])

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.asked(config):
            return
        if not uses_basic_sweeper(config):
            end_with(
                ConfigError(
                    f"dry_run lists the grid of Hydra's basic sweeper; this sweep "
                    f"uses {sweeper_of(config)}"
                )
            )
        self.plan(config, sweep_jobs(config))

    def plan(self, config: DictConfig, jobs: list[list[str]]) -> None:
        import pandas as pd

        shown = [[o for o in job if not o.startswith("dry_run=")] for job in jobs]
        common = set.intersection(*map(set, shown)) if len(shown) > 1 else set()
        rows = [
            {
                "job": str(i),
                "overrides": " ".join(o for o in job if o not in common) or "—",
                **size_job(config, job),
            }
            for i, job in enumerate(shown)
        ]
        columns = ["job", "overrides", "parameters", "tokens", "GFLOPs/img", "epochs", "ok"]
        table = pd.DataFrame(rows).reindex(columns=columns).fillna("—")
        print(table.to_markdown(index=False, disable_numparse=True))
        failed = int((table["ok"] != "ok").sum())
        also = f"; all with: {' '.join(sorted(common))}" if common else ""
        print(
            f"\n{len(jobs)} jobs{also}. Dry run: nothing was created or trained"
            + (f"; {failed} would fail." if failed else ".")
        )
        end_with(Listed(failed))


class CheckSearch(Callback):
    """Before a search starts (and before its directory is claimed): every setting checked,
    a trial's config composed and checked with each choice of the space, the storage opened
    (the study made), and a validation split to tune on. Bad input is one line and exit 2,
    before any trial."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not config.get("search"):
            return
        try:
            sweep_dir = Path(config.hydra.sweep.dir)
            check_search(plain(without_hydra(config)), command_line(config), sweep_dir)
        except ConfigError as err:
            end_with(err)
        except ImportError as err:
            end_with(ConfigError(f"search= needs {err.name}: pip install -e '.[search]'"))
        except Exception as err:  # Hydra would make it a warning and start the workers
            end_with(ConfigError(f"the search cannot start: {type(err).__name__}: {err}"))
        os.environ[SWEEP_STARTED] = str(time.time())


class ClaimDirectories(Callback):
    """Before anything runs: a single run's directory must be writable, and a sweep's
    directory must be free or hold this same sweep (resumed). A refusal is one line, exit 2."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_dir = Path(config.hydra.run.dir)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            probe = run_dir / ".vitsweep-write-test"
            probe.touch()
            probe.unlink()
        except OSError as err:
            end_with(ConfigError(f"cannot write the run directory {run_dir}: {err.strerror}"))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        resume = OmegaConf.select(config, "trainer.resume", default=False) is True
        try:
            harness = harness_state(ROOT)
            about = {
                "name": check_sweep_name(config.sweep_name),
                "command": f"python src/run.py -m {' '.join(command_line(config))}",
                "commit": git_commit(harness),
                "harness": harness,
            }
            check_no_repeated_job(config)
            check_cluster_limits(config)
            check_baseline(config, report_settings(config).baseline)  # before any claim
            sweep_dir = Path(config.hydra.sweep.dir)
            out_dir = results_root(config) / about["name"]
            check_results_place(out_dir)
            check_results_folder(out_dir, sweep_dir)
            claim_sweep(sweep_dir, sweep_grid(config), resume, about)
        except ConfigError as err:
            end_with(err)
        except Exception as err:  # Hydra would make it a warning and run the sweep unclaimed
            end_with(ConfigError(f"the sweep cannot start: {type(err).__name__}: {err}"))
        # Jobs that a parallel launcher runs in worker processes stop when this one is gone.
        os.environ[SWEEP_PID] = f"{os.getpid()}@{platform.node()}"

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ.pop(SWEEP_PID, None)


def check_results_place(out_dir: Path) -> None:
    """The sweep's table can go where it goes: refused before any job trains when the results
    folder, or a folder above it, is a file."""
    existing = next(place for place in (out_dir, *out_dir.parents) if place.exists())
    if not existing.is_dir():
        raise ConfigError(
            f"{existing} is a file, where the sweep's table would go ({out_dir}/): move it, "
            "or choose another sweep_name"
        )


def results_root(config: DictConfig) -> Path:
    """Where a sweep's results folder goes (the comparison callback's ``results_dir``)."""
    return Path(OmegaConf.select(config, "hydra.callbacks.comparison.results_dir") or "results")


class ComparisonReport(Callback):
    """At the end of every multirun, collect its jobs' records into results/<sweep_name>/:
    comparison.md, comparison.csv and the plots, and print the table (its settings were
    checked by ``ClaimDirectories``, before the sweep's directory was claimed). A sweep in
    which any job did not finish exits with status 1, after the table; one whose table cannot
    be built exits 1 with one line. A sweep stopped by Ctrl-C or SIGTERM writes the table of
    what it has on the way out (and exits 130)."""

    def __init__(self, results_dir: str = "results") -> None:
        self.results_dir = Path(results_dir)
        self.config: DictConfig | None = None
        self.settings = ReportSettings()
        self.previous_sigterm: Any = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.settings = report_settings(config)  # checked before the sweep was claimed
        self.config = config
        atexit.register(self._report_on_exit)
        self.previous_sigterm = interrupt_on_sigterm()  # between jobs too

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._stop_watching()
        sweep_dir = Path(config.hydra.sweep.dir)
        if job := submitted_here(sweep_dir):  # hydra.launcher.wait=false: nothing ended yet
            print(
                f"Submitted; SLURM job {job} writes the table once every job has ended. "
                f"Meanwhile: python src/report.py {sweep_dir}"
            )
            return
        not_completed = self.report(config)
        if not_completed:  # the table is written; the exit code still says something failed
            end_with(Unfinished(f"{not_completed} jobs did not finish"))

    def _stop_watching(self) -> None:
        atexit.unregister(self._report_on_exit)
        restore_sigterm(self.previous_sigterm)
        self.previous_sigterm = None

    def _report_on_exit(self) -> None:
        # A sweep refused before any job (SLURM would not take its jobs) has no table to show.
        if self.config is not None and holds_jobs(Path(self.config.hydra.sweep.dir)):
            print("\nThe sweep stopped early; the table of what it has:", file=sys.stderr)
            self.report(self.config)

    def report(self, config: DictConfig) -> int:
        """Write and print the table; returns how many jobs did not complete."""
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            runs, curves = load_sweep(sweep_dir)
            if runs.empty:
                print(f"no jobs found under {sweep_dir}; no comparison written", file=sys.stderr)
                return 0
            out_dir = self.results_dir / str(config.sweep_name)
            table = write_report(runs, curves, out_dir, sweep_dir, self.settings)
            tracker = instantiate(config.logger)  # W&B: the table as one run of the group
            tracker.log_report(tracker_report(table, out_dir, str(config.sweep_name)), sweep_dir)
        except Exception as err:
            end_with(
                ReportError(
                    f"the comparison table of {sweep_dir} could not be built: "
                    f"{type(err).__name__}: {err}"
                )
            )
        not_completed = int((~runs["status"].isin(FINISHED)).sum())
        print(
            f"\n{table.attrs['headline']}\nComparison of {len(runs)} jobs ({not_completed} not "
            f"completed) in {out_dir}/"
        )
        for note in table.attrs["notes"]:
            print(f"note: {note}", file=sys.stderr)
        return not_completed


class SearchReport(Callback):
    """After a search: Optuna's own plots (history, intermediate values, importances) and
    search.md (the best trial, what was pruned, the epochs spent, the command that reruns the
    best trial over seeds) in results/<sweep_name>/, beside the table of its trials."""

    def __init__(self, results_dir: str = "results") -> None:
        self.results_dir = Path(results_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not config.get("search"):
            return
        experiment = config.hydra.runtime.choices.get("experiment")
        sweep_dir, out_dir = Path(config.hydra.sweep.dir), self.results_dir / config.sweep_name
        text = write_search_report(
            plain(without_hydra(config)), command_line(config), experiment, sweep_dir, out_dir
        )
        print(text)
