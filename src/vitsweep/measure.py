"""Model size and cost: parameters, FLOPs per image, peak memory."""

import contextlib
import resource
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

# torch's counter knows the CUDA attention kernels but not SDPA's CPU kernel; count it alike.
_CPU_SDPA = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: (
        lambda q, k, v, *args, **kwargs: sdpa_flop_count(q, k, v)
    )
}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_image(model: nn.Module, image_shape: tuple[int, int, int]) -> int:
    """Forward FLOPs for one image, as torch's flop counter sees them (a training step is ~3x)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_CPU_SDPA) as counter:
            model(torch.zeros(1, *image_shape, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops()


def _proc_status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (Linux) in MB, or None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: CUDA's allocator statistics, or on Linux the process's peak resident
    set (writing 5 to /proc/self/clear_refs sets VmHWM back to the current VmRSS)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def memory_in_use_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    return _proc_status_mb("VmRSS") or 0.0


def peak_memory_mb(device: torch.device) -> float:
    """Peak since the last reset: CUDA's allocator, else the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = _proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes vs KiB


def describe_model(model: nn.Module, image_shape: tuple[int, int, int]) -> dict[str, int]:
    """The size columns of a run's summary."""
    return {
        "params": count_parameters(model),
        "tokens": int(getattr(model, "num_tokens", 0)),
        "flops_per_image": flops_per_image(model, image_shape),
    }
