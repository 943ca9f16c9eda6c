"""vitsweep's entry point: compose a config, build the model, train it, record it.

    python src/run.py model=vitx device=cuda
    python src/run.py -m attention=softmax,linear embedding=patch,cnn
    python src/run.py -m search=optuna search.trials=40 search.workers=4 search.pruner=asha

Each run writes config.yaml, history.csv, summary.json and checkpoint.pt into its own
directory; a multirun ends in results/<sweep_name>/ (vitsweep.callbacks).
"""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from vitsweep.config import choices_of, plain
from vitsweep.job import JobInfo, run_job, stops_told
from vitsweep.search import run_worker


def this_job(cfg: DictConfig) -> JobInfo:
    """The job as Hydra launched it: its directory, choices and overrides."""
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    return JobInfo(
        run_dir=Path(hydra_cfg.runtime.output_dir),
        multirun=multirun,
        choices=choices_of(hydra_cfg.runtime.choices),
        overrides=list(hydra_cfg.overrides.task),
        name=hydra_cfg.job.override_dirname,
        sweep_name=str(cfg.sweep_name) if multirun else None,
        num=int(hydra_cfg.job.num) if multirun else None,
    )


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """One run, or one job of a multirun: claimed, built, trained and recorded by
    ``vitsweep.job.run_job``; in a search (``search=...``), an Optuna worker whose trials are
    such runs (``vitsweep.search.run_worker``)."""
    job = this_job(cfg)
    if cfg.get("search"):  # a worker that cannot work stops the search, with its exit code
        with stops_told(multirun=False, where=job.run_dir):
            run_worker(plain(cfg), job)
        return None
    with stops_told(job.multirun, where=job.run_dir):  # a config that cannot be resolved
        return run_job(plain(cfg), job).best_accuracy


if __name__ == "__main__":
    main()
