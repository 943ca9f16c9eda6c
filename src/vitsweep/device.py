"""Turning `device=...` into a torch.device, with one clear error when it is not there."""

import torch

from vitsweep.errors import ConfigError, require

DEVICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()


def resolve_device(name: str) -> torch.device:
    """``auto`` is cuda if available, else mps, else cpu; an explicit choice must exist."""
    require(name in DEVICES, "device.name", name, "auto, cpu, cuda or mps")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but CUDA is not available here; use device=cpu or auto")
    if name == "mps" and not _mps_available():
        raise ConfigError("device=mps but MPS is not available here; use device=cpu or auto")
    return torch.device(name)


def device_label(device: torch.device) -> str:
    """A human name for the hardware, for records and benchmark tables."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return f"CPU ({torch.get_num_threads()} threads)"
