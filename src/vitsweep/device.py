"""Turning ``device=...`` into a torch.device, with one clear error when it is not there, and
spreading a sweep's jobs over every GPU of the machine; choosing the precision that suits it."""

import os
import re
import statistics
import time
from collections.abc import Mapping

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
    require(
        name in DEVICES or one_gpu is not None,
        "device.name",
        name,
        "auto, cpu, cuda, cuda:N or mps",
    )
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


def cpus_given(environ: Mapping[str, str], affinity: int) -> int:
    """The CPUs this process may use: its CPU affinity, cut to SLURM's ``cpus_per_task`` where
    set (a cluster that binds no CPUs leaves the affinity at the whole node, and jobs packed on
    it would each take every core)."""
    given = environ.get("SLURM_CPUS_PER_TASK", "")
    return min(affinity, int(given)) if given.isdigit() and int(given) > 0 else affinity


def use_given_cpus() -> int:
    """torch's threads cut to the CPUs given (never raised: whoever chose fewer keeps them);
    returns how many it uses."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    given = cpus_given(os.environ, affinity or 1)
    if torch.get_num_threads() > given:
        torch.set_num_threads(given)
    return torch.get_num_threads()


def device_label(device: torch.device) -> str:
    """A human name for the hardware, for records and benchmark tables."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"{torch.cuda.get_device_name(index)} (cuda:{index})"
    if device.type == "mps":
        return "Apple MPS"
    return f"CPU ({torch.get_num_threads()} threads)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def matmul_seconds(
    n: int, dtype: torch.dtype, device: torch.device, repeats: int = 3, warmup: int = 1
) -> float:
    """The median wall time of an n x n x n matrix product in ``dtype`` on ``device``, after
    ``warmup`` untimed products (kernel selection, the thread pool's start)."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    times = []
    for i in range(warmup + repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` is bf16 autocast (fp32 master weights) on a CUDA GPU that multiplies bf16
    natively (compute capability 8, Ampere, and later), and fp32 everywhere else. The rule
    looks only at what the device is, never at a timing: every job of a sweep on one kind of
    device resolves the same way. A CPU runs bf16 only when asked (``bf16``): a bf16 matrix
    product can be several times faster there, yet a measured training step was not (the
    elementwise work and the casts around the products eat the gain). ``fp32`` and ``bf16``
    are kept as asked."""
    if precision != "auto":
        return precision
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
        return "bf16"
    return "fp32"
