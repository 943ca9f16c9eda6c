"""vitsweep's entry point: compose a config, build the model, train it, record it.

    python src/run.py model=vitx device=cuda
    python src/run.py -m attention=softmax,linear embedding=patch,cnn

Each run writes config.yaml, history.csv and summary.json into its Hydra output directory.
"""

from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vitsweep.data import DeviceLoader
from vitsweep.device import device_label, resolve_device
from vitsweep.errors import reported_failures
from vitsweep.measure import describe_model
from vitsweep.record import RunRecord
from vitsweep.report import sweep_name
from vitsweep.train import TrainerSettings, fit


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    choices = {k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra")}
    config = OmegaConf.to_container(cfg, resolve=True) | {"choices": choices}
    record = RunRecord(run_dir, config)

    with reported_failures(record, multirun):
        # Build: everything a bad config can break comes before data loads or W&B starts.
        settings = TrainerSettings(**cfg.trainer)
        torch.manual_seed(cfg.seed)
        device = resolve_device(cfg.device.name)
        model = instantiate(cfg.model).to(device)
        image_shape = (cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
        record.update(device=device_label(device), **describe_model(model, image_shape))
        if settings.epochs == 0:
            record.update(status="sized")
            return None

        train_set, test_set = (s.head(cfg.data.subset) for s in instantiate(cfg.data.source))
        norm = {"mean": cfg.data.mean, "std": cfg.data.std, "device": device}
        train_loader = DeviceLoader(
            train_set,
            settings.batch_size,
            **norm,
            train=True,
            augment=cfg.data.augment,
            seed=cfg.seed,
        )
        test_loader = DeviceLoader(test_set, settings.eval_batch_size, **norm)
        optimizer = instantiate(cfg.optim)(model.parameters())

        # Train and record; the tracker is finished whatever happens.
        # The run's config goes in as plain data: handing it to instantiate would build it.
        # A multirun's jobs share a W&B group (the sweep's name) and carry their overrides
        # as tags, so W&B groups them as the comparison table does.
        group = sweep_name(cfg.sweep_name, hydra_cfg.sweep.dir) if multirun else None
        tracker = instantiate(cfg.logger, _partial_=True)(
            run_config=config,
            run_dir=run_dir,
            name=hydra_cfg.job.override_dirname,
            group=cfg.logger.get("group") or group,
            tags=[*cfg.logger.get("tags", []), *hydra_cfg.overrides.task],
        )
        exit_code = 1
        try:
            fit(model, train_loader, test_loader, optimizer, settings, record, tracker)
            record.update(status="completed")
            exit_code = 0
        finally:
            tracker.summary(record.summary)
            tracker.finish(exit_code)
    return record.summary.get("best_test_acc")


if __name__ == "__main__":
    main()
