"""checkpoint.pt: everything a run needs to carry on exactly where an epoch ended.

Model, optimizer and schedule, every RNG that training draws from (torch's, CUDA's and the
loader's own generator), and the history. A checkpoint is data: it is read with
``weights_only=True`` (no pickled code runs) and onto the CPU, and each state then goes where it
belongs (the model's tensors to its device; RNG states stay CPU byte tensors, as torch wants).
bf16 autocast needs no grad scaler, so there is none to save.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitsweep.errors import ConfigError, first_line
from vitsweep.files import write_atomic

Schedule = torch.optim.lr_scheduler.LRScheduler


@dataclass
class Training:
    """The model and every state that moves with it as it trains: what a checkpoint holds."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Schedule
    loader: Any  # the training loader: its shuffling and augmentation RNG


def save_checkpoint(
    path: Path, epoch: int, training: Training, history: list[dict[str, float]]
) -> None:
    loader = training.loader
    state = {
        "epoch": epoch,
        "model": training.model.state_dict(),
        "optimizer": training.optimizer.state_dict(),
        "scheduler": training.scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "loader": loader.state_dict() if hasattr(loader, "state_dict") else None,
        "history": history,
    }
    write_atomic(path, lambda tmp: torch.save(state, tmp))


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's state on the CPU, or one clear error saying what to do."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConfigError(
            f"{path} cannot be read ({type(err).__name__}: {first_line(err)}); restore it from a "
            "copy, or start a new run directory"
        ) from None
    missing = {"epoch", "model", "optimizer", "scheduler", "torch_rng", "history"} - set(state)
    if missing:
        raise ConfigError(f"{path} is not a vitsweep checkpoint (no {', '.join(sorted(missing))})")
    return state


def restore_checkpoint(state: dict[str, Any], training: Training) -> int:
    """Put every state back; returns the epoch the checkpoint was taken after."""
    training.model.load_state_dict(state["model"])  # copied onto the model's device
    training.optimizer.load_state_dict(state["optimizer"])  # moved to the parameters' device
    training.scheduler.load_state_dict(state["scheduler"])
    loader = training.loader
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    if state.get("loader") is not None:
        loader.load_state_dict(state["loader"])
    return int(state["epoch"])
