"""checkpoint.pt: everything a run needs to carry on exactly where an epoch ended.

Model, optimizer and schedule, every RNG that training draws from (torch's, CUDA's and the
loader's own generator), the history and the summary. Written after every epoch, atomically
(a temporary file, then a rename), so a crash mid-write leaves the previous checkpoint whole.
(bf16 autocast needs no grad scaler, so there is none to save.)
"""

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitsweep.record import RunRecord


class Checkpoint:
    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / "checkpoint.pt"

    def exists(self) -> bool:
        return self.path.exists()

    def save(
        self,
        epoch: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        loader: Any,
        record: RunRecord,
    ) -> None:
        state = {
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "loader": loader.state_dict() if hasattr(loader, "state_dict") else None,
            "history": record.history,
        }
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def load(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        loader: Any,
        record: RunRecord,
    ) -> int:
        """Restore every state; returns the epoch the checkpoint was taken after."""
        device = next(model.parameters()).device
        state = torch.load(self.path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if state["loader"] is not None:
            loader.load_state_dict(state["loader"])
        record.history = list(state["history"])
        return int(state["epoch"])
