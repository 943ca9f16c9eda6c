"""vitsweep's entry point: compose a config, build the model, train it, record it.

    python src/run.py model=vitx device=cuda
    python src/run.py -m attention=softmax,linear embedding=patch,cnn

Each run writes config.yaml, history.csv, summary.json and checkpoint.pt into its Hydra
output directory; a multirun ends in results/<sweep>/ (see vitsweep.callbacks).
"""

import logging
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vitsweep.checkpoint import Checkpoint
from vitsweep.data import build_loaders
from vitsweep.device import device_label, resolve_device
from vitsweep.errors import reported_failures, sigterm_interrupts
from vitsweep.measure import describe_model
from vitsweep.record import RunRecord
from vitsweep.report import sweep_name
from vitsweep.train import TrainerSettings, build_optimizer, fit

log = logging.getLogger("vitsweep.run")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    choices = {k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra")}
    # The sweep's name as its directory fixed it (a job resolving ${now:} would get its own).
    name = sweep_name(hydra_cfg.sweep.dir) if multirun else None
    config = OmegaConf.to_container(cfg, resolve=True) | {"choices": choices, "sweep_name": name}
    record = RunRecord(run_dir, config, resume=bool(cfg.trainer.resume))

    with reported_failures(record, multirun), sigterm_interrupts():
        # Build: everything a bad config can break comes before data loads or W&B starts.
        record.check_not_foreign()
        settings = TrainerSettings(**cfg.trainer)
        if settings.resume and record.summary.get("status") == "completed":
            log.info("%s already completed; skipped", run_dir)
            return record.summary.get("best_test_acc")
        torch.manual_seed(cfg.seed)
        device = resolve_device(cfg.device.name)
        model = instantiate(cfg.model).to(device)
        optimizer = build_optimizer(instantiate(cfg.optim), model, device)
        image_shape = (cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
        record.update(device=device_label(device), **describe_model(model, image_shape))
        if settings.epochs == 0:
            record.update(status="sized")
            return None
        loaders = build_loaders(
            cfg.data, settings.batch_size, settings.eval_batch_size, device, cfg.seed
        )

        # Train and record. A multirun's jobs share a W&B group (the sweep's name) and carry
        # their overrides as tags, so W&B groups them as the comparison table does.
        tracker = instantiate(cfg.logger, _partial_=True)(
            run_config=config,  # plain data: handed to instantiate, it would be built
            run_dir=run_dir,
            name=hydra_cfg.job.override_dirname,
            group=cfg.logger.get("group") or name,
            tags=[*cfg.logger.get("tags", []), *hydra_cfg.overrides.task],
        )
        exit_code = 1
        try:
            record.update(status="running")
            fit(model, *loaders, optimizer, settings, record, tracker, Checkpoint(run_dir))
            record.update(status="completed")
            exit_code = 0
        finally:
            tracker.summary(record.summary)
            tracker.finish(exit_code)
    return record.summary.get("best_test_acc")


if __name__ == "__main__":
    main()
