"""The launcher's settings: submitit's SLURM ones, and whether the sweep's process waits for
its jobs (``conf/hydra/launcher/slurm.yaml`` starts from them)."""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore

try:
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
except ImportError:  # no launchers extra: nothing to register
    SlurmQueueConf = None

if SlurmQueueConf is not None:

    @dataclass
    class VitsweepSlurmConf(SlurmQueueConf):
        _target_: str = "hydra_plugins.vitsweep_slurm.launcher.SlurmLauncher"
        # false: submit the jobs and a job that builds the table once they have all ended,
        # then return at once (submit and go)
        wait: bool = True

    # As every Hydra plugin registers its config: when Hydra discovers its plugins.
    ConfigStore.instance().store(
        group="hydra/launcher", name="vitsweep_slurm", node=VitsweepSlurmConf, provider="vitsweep"
    )
