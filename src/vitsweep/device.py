"""Turning ``device=...`` into a torch.device, with one clear error when it is not there, and
spreading a sweep's jobs over every GPU of the machine."""

import re

import torch

from vitsweep.errors import ConfigError, require

DEVICES = ("auto", "cpu", "cuda", "mps")  # and cuda:N, one GPU by its index


def _mps_available() -> bool:
    return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()


def resolve_device(name: str, job_num: int | None = None) -> torch.device:
    """``auto`` is cuda if available, else mps, else cpu; an explicit choice must exist.

    ``cuda`` (or ``auto`` on a CUDA machine) in job ``job_num`` of a multirun is GPU
    ``job_num mod G`` of the machine's G: a parallel launcher running K jobs at once keeps every
    GPU busy (K = 2G packs two small jobs on each). ``cuda:N`` is GPU N, whatever the job."""
    one_gpu = re.fullmatch(r"cuda:(\d+)", name)
    require(name in DEVICES or one_gpu is not None, "device.name", name,
            "auto, cpu, cuda, cuda:N or mps")  # fmt: skip
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available here; use device=cpu or auto")
    if name == "mps" and not _mps_available():
        raise ConfigError("device=mps but MPS is not available here; use device=cpu or auto")
    if one_gpu is not None:
        index, count = int(one_gpu.group(1)), torch.cuda.device_count()
        require(index < count, "device.name", name, f"cuda:0 to cuda:{count - 1} on this machine")
        return torch.device("cuda", index)
    if name == "cuda" and job_num is not None:
        return torch.device("cuda", job_num % torch.cuda.device_count())
    return torch.device(name)


def device_label(device: torch.device) -> str:
    """A human name for the hardware, for records and benchmark tables."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"{torch.cuda.get_device_name(index)} (cuda:{index})"
    if device.type == "mps":
        return "Apple MPS"
    return f"CPU ({torch.get_num_threads()} threads)"
