"""A search that stops hopeless trials early, on one machine or many.

    python src/run.py -m search=optuna search.trials=40 search.workers=4 search.pruner=asha

Hydra launches ``search.workers`` jobs through whichever launcher is configured (joblib on one
machine, submitit on SLURM). Each job is an Optuna worker: it loads the sweep's one study from
``search.storage`` and runs trials until ``search.trials`` are finished in total, so no worker
waits for another. A trial is an ordinary run (``multirun/<sweep>/trial_<n>/``, its record,
its W&B run) built and trained by ``vitsweep.job.run_job`` like every run; after each evaluated
epoch its validation top-1 goes to the pruner, which may stop it (status ``pruned``).

    study.py    the study: storage, sampler, pruner, the budget's count, retries on resume
    worker.py   a worker's loop and one trial (``run_trial``), the pruning hook
    checks.py   everything a search is refused for, before any trial
    summary.py  search.md and Optuna's plots
"""

from vitsweep.search.checks import check_search
from vitsweep.search.summary import write_search_report
from vitsweep.search.worker import SWEEP_STARTED, run_worker

__all__ = ["SWEEP_STARTED", "check_search", "run_worker", "write_search_report"]
