"""What watches training: ``fit`` calls every hook it is given at three moments. The run
record keeps each epoch, a tracker logs it, a search's pruner may stop the run after it (by
raising ``vitsweep.errors.Pruned``). Each method does nothing unless a hook says otherwise."""

from typing import Any

from vitsweep.checkpoint import Training


class Hook:
    """A training hook; subclasses override the moments they watch."""

    def on_resume(self, history: list[dict[str, Any]]) -> None:
        """Training carries on from a checkpoint holding this history."""

    def on_step(self, metrics: dict[str, float], step: int) -> None:
        """Every ``log_every`` optimizer steps: the step's loss and learning rate."""

    def on_epoch(self, row: dict[str, Any], step: int, training: Training) -> None:
        """After each epoch: its row (what history.csv keeps) and every state that trains."""
