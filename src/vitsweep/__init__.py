"""vitsweep: a Hydra-configured ablation sweep harness for small Vision Transformers."""

__version__ = "0.1.0"
