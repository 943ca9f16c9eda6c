"""Hydra callbacks: what happens around a multirun without anyone asking."""

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from vitsweep.report import load_sweep, sweep_name, write_report

log = logging.getLogger(__name__)


class ComparisonReport(Callback):
    """At the end of every multirun, collect its jobs' records into results/<sweep name>/:
    comparison.md, comparison.csv, accuracy.png and latency.png, and print the table.
    A sweep in which any job did not complete exits with status 1, after the table."""

    def __init__(self, results_dir: str = "results") -> None:
        self.results_dir = Path(results_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        name = sweep_name(sweep_dir)
        runs, curves = load_sweep(sweep_dir)
        if runs.empty:
            log.warning("no jobs found under %s; no comparison written", sweep_dir)
            return
        out_dir = self.results_dir / name
        overrides = " ".join(config.hydra.overrides.task)
        title = f"Sweep {name}\n\n`python src/run.py -m {overrides}` ({len(runs)} jobs)"
        table = write_report(runs, curves, out_dir, title)
        failed = int((~runs["status"].isin(["completed", "sized"])).sum())
        print(f"\n{table}\nComparison of {len(runs)} jobs ({failed} not completed) in {out_dir}/")
        if failed:  # the table is written; the exit code still tells scripts something failed
            raise SystemExit(1)
