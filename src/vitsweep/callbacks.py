"""Hydra callbacks: what happens around a run or a multirun without anyone asking."""

import atexit
import signal
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from vitsweep.errors import ConfigError
from vitsweep.sweep import claim_sweep, git_commit, without_resume

ROOT = Path(__file__).resolve().parents[2]


def _refuse(err: Exception) -> None:
    print(f"error: {err}", file=sys.stderr)
    raise SystemExit(2)


def sweep_grid(config: DictConfig) -> dict[str, Any]:
    """What makes a sweep this sweep: its command line (less ``trainer.resume``) and the
    sweeper's own parameters (an experiment's grid, an Optuna search space)."""
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    return {
        "overrides": without_resume(list(config.hydra.overrides.task)),
        "params": {str(k): str(v) for k, v in params.items()},
    }


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
            _refuse(ConfigError(f"cannot write the run directory {run_dir}: {err.strerror}"))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        resume = OmegaConf.select(config, "trainer.resume", default=False) is True
        overrides = " ".join(config.hydra.overrides.task)
        about = {
            "name": config.sweep_name,
            "command": f"python src/run.py -m {overrides}",
            "commit": git_commit(ROOT),
        }
        try:
            claim_sweep(Path(config.hydra.sweep.dir), sweep_grid(config), resume, about)
        except ConfigError as err:
            _refuse(err)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


class ComparisonReport(Callback):
    """At the end of every multirun, collect its jobs' records into results/<sweep_name>/:
    comparison.md, comparison.csv and the plots, and print the table. A sweep in which any job
    did not complete exits with status 1, after the table; one whose table cannot be built
    exits 1 with one line. A sweep stopped by Ctrl-C or SIGTERM writes the table of what it
    has on the way out (and exits 130)."""

    def __init__(self, results_dir: str = "results") -> None:
        self.results_dir = Path(results_dir)
        self.config: DictConfig | None = None
        self.previous_sigterm: Any = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.config = config
        atexit.register(self._report_on_exit)
        try:  # between jobs too, SIGTERM stops the sweep as Ctrl-C does
            self.previous_sigterm = signal.signal(signal.SIGTERM, _interrupt)
        except ValueError:  # not the main thread
            self.previous_sigterm = None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._stop_watching()
        not_completed = self.report(config)
        if not_completed:  # the table is written; the exit code still says something failed
            raise SystemExit(1)

    def _stop_watching(self) -> None:
        atexit.unregister(self._report_on_exit)
        if self.previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self.previous_sigterm)
            self.previous_sigterm = None

    def _report_on_exit(self) -> None:
        if self.config is not None:
            print("\nThe sweep stopped early; the table of what it has:", file=sys.stderr)
            self.report(self.config)

    def report(self, config: DictConfig) -> int:
        """Write and print the table; returns how many jobs did not complete."""
        from vitsweep.report import load_sweep, write_report  # pandas: only when reporting

        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            runs, curves = load_sweep(sweep_dir)
            if runs.empty:
                print(f"no jobs found under {sweep_dir}; no comparison written", file=sys.stderr)
                return 0
            out_dir = self.results_dir / str(config.sweep_name)
            table = write_report(runs, curves, out_dir, sweep_dir)
        except Exception as err:
            print(
                f"error: the comparison table of {sweep_dir} could not be built: "
                f"{type(err).__name__}: {err}",
                file=sys.stderr,
            )
            raise SystemExit(1) from None
        not_completed = int((~runs["status"].isin(["completed", "sized"])).sum())
        print(
            f"\n{table}\nComparison of {len(runs)} jobs ({not_completed} not completed) "
            f"in {out_dir}/"
        )
        return not_completed
