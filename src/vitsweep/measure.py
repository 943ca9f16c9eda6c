"""Model size and cost: parameters, FLOPs per image, tensor memory."""

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
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


def peak_rise_mb(device: torch.device, run: Callable[[], object]) -> float:
    """The most tensor memory allocated while ``run()`` runs, above what was allocated before
    it, in MB: CUDA's allocator statistics, or on the CPU the profiler's allocation events
    (their running total). The same measure on every device; memory the allocator merely keeps
    cached does not count."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        run()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _profiler_lines_dropped(), tempfile.TemporaryDirectory() as tmp:
        prof.start()
        try:
            run()
        finally:
            prof.stop()
        trace = Path(tmp) / "trace.json"  # the running total is in the exported trace
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    cpu = [
        e["args"]
        for e in events
        if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0
    ]
    if not cpu:
        return 0.0
    # "Total Allocated" counts what was allocated before too: the first event tells how much.
    before = cpu[0]["Total Allocated"] - cpu[0]["Bytes"]
    return max(0, max(e["Total Allocated"] for e in cpu) - before) / 2**20


def held_tensor_mb(*holders: object) -> float:
    """Tensor memory held by modules (parameters, gradients, buffers), optimizers (their
    state), loaders (their images and labels) and plain tensors, each counted once."""
    tensors: dict[int, int] = {}

    def add(t: object) -> None:
        if isinstance(t, torch.Tensor) and t.numel():
            tensors[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()

    for holder in holders:
        if isinstance(holder, torch.Tensor):
            add(holder)
        elif isinstance(holder, nn.Module):
            for p in holder.parameters():
                add(p)
                add(p.grad)
            for b in holder.buffers():
                add(b)
        elif isinstance(holder, torch.optim.Optimizer):
            for state in holder.state.values():
                for value in state.values():
                    add(value)
        else:
            for name in ("images", "labels"):
                add(getattr(holder, name, None))
    return sum(tensors.values()) / 2**20


def training_step_peak_mb(step: Callable[[], object], *holders: object) -> float:
    """Tensor memory at a training step's peak on the CPU, in MB: what the run holds (model,
    gradients, optimizer state, data; ``holders``) plus the most one ``step()`` allocates on
    top of it, watched through the profiler. Run it once the optimizer holds its state (after
    a first step), so that its moments are counted as held, not again in the rise; gradients,
    which each step frees and makes again, are still in both: an overcount of their size.
    For the benchmarks: training itself measures only what CUDA's allocator gives for free."""
    return held_tensor_mb(*holders) + peak_rise_mb(torch.device("cpu"), step)


# What torch's profiler logs from C++ straight to file descriptor 2 (a line at each start and
# stop, a note about blocks allocated before it started): its own bookkeeping, every epoch.
_PROFILER_LINES = ("SyncActivityProfilerHandler", "CPUAllocator.cpp", "DeviceProperties.cpp")


@contextlib.contextmanager
def _profiler_lines_dropped() -> Iterator[None]:
    """Capture file descriptor 2 while the profiler runs, then pass on every line that is not
    the profiler's own (a warning from the step it watched still reaches the terminal)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [
                line
                for line in captured.read().decode(errors="replace").splitlines(True)
                if not any(mark in line for mark in _PROFILER_LINES)
            ]
            sys.stderr.write("".join(kept))


def describe_model(model: nn.Module, image_shape: tuple[int, int, int]) -> dict[str, int]:
    """The size columns of a run's summary."""
    return {
        "params": count_parameters(model),
        "tokens": int(getattr(model, "num_tokens", 0)),
        "flops_per_image": flops_per_image(model, image_shape),
    }
