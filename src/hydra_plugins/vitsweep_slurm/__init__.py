"""vitsweep's SLURM launcher, as a Hydra plugin (Hydra takes plugins from ``hydra_plugins``
only): ``conf/hydra/launcher/slurm.yaml`` names it."""
