"""A sweep's comparison table and plots, in three steps, each a module:

runs, curves = load_sweep(sweep_dir)                  # read: the jobs' local run records
runs, curves = load_wandb("entity/project", group)    #   or the W&B public API
table = comparison_table(runs, baseline)              # aggregate: a row per configuration
write_report(runs, curves, out_dir, sweep_dir)        # pipeline: render it all, and plot

columns.py   every column, declared once     render.py    comparison.md's parts
plots.py     the figures                     manifest.py  manifest.json
reproduce.py trains a table's rows again (above the rest: it runs jobs)
"""

from vitsweep.report.aggregate import comparison_table, label_runs, pick_baseline
from vitsweep.report.pipeline import write_report
from vitsweep.report.read import (
    frame_from_wandb_runs,
    load_sweep,
    load_wandb,
    row_from_run,
    sweep_name,
)
from vitsweep.report.render import to_markdown

__all__ = [
    "comparison_table",
    "frame_from_wandb_runs",
    "label_runs",
    "load_sweep",
    "load_wandb",
    "pick_baseline",
    "row_from_run",
    "sweep_name",
    "to_markdown",
    "write_report",
]
