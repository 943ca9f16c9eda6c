"""Whether a run directory is started, carried on or left alone: a pure function of the run
found there, this run's config, ``trainer.resume``, and whether the scheduler restarted this
very job (a requeue, a preemption, a self-requeue before the time limit).

A directory with nothing worth keeping (none, or a run that failed before training) is started
afresh either way. Without ``resume``, one that holds a run is refused. With it, the run must
have the same config (the settings a resume may change left out); it carries on from its
checkpoint, or is left alone if it is done. A job its scheduler restarted is resumed as if
``resume`` were given: it is the same task, in its own directory, so it carries on from its
last whole epoch instead of being refused.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vitsweep.errors import ConfigError, a_few
from vitsweep.record.summary import DONE
from vitsweep.settings import compared_on_resume


@dataclass(frozen=True)
class Earlier:
    """The run a directory already holds, as read from its files."""

    config: dict[str, Any]
    summary: dict[str, Any]
    epochs: int  # rows of its history
    checkpoint: bool  # whether checkpoint.pt is there

    @property
    def started(self) -> bool:
        return bool(self.epochs) or self.checkpoint


Action = Literal["start", "carry_on", "leave"]


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested configs."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = list(dict.fromkeys([*a, *b]))
        return [d for k in keys for d in differences(a.get(k), b.get(k), f"{path}{k}.")]
    return [] if a == b else [f"{path.rstrip('.')} ({a!r} -> {b!r})"]


# Parts that moved to another module keep their records resumable: old path -> new path.
MOVED_TARGETS = {
    "vitsweep.datasets.load_image_folder": "vitsweep.data.folder.load_image_folder",
    **{
        f"vitsweep.datasets.load_{name}": f"vitsweep.data.sets.load_{name}"
        for name in ("digits", "cifar10", "cifar100", "svhn", "fashion_mnist")
    },
}


def with_moved_targets(node: Any) -> Any:
    """A recorded config with every ``_target_`` that names a moved part renamed."""
    if isinstance(node, dict):
        renamed = {k: with_moved_targets(v) for k, v in node.items()}
        if renamed.get("_target_") in MOVED_TARGETS:
            renamed["_target_"] = MOVED_TARGETS[renamed["_target_"]]
        return renamed
    return node


def decide_resume(
    run_dir: Path,
    earlier: Earlier | None,
    config: dict[str, Any],
    resume: bool,
    restarted: bool = False,
) -> Action:
    """``start`` afresh, ``carry_on`` (the earlier summary kept, from the checkpoint where there
    is one), or ``leave`` a finished run as it is; a refusal is one ConfigError naming both
    ways on. ``restarted``: the scheduler started this same job again (SLURM_RESTART_COUNT)."""
    resume = resume or restarted
    if earlier is None or (
        not earlier.started and earlier.summary.get("status") in (None, "failed", "running")
    ):
        return "start"  # it never trained: nothing to keep
    status = earlier.summary.get("status")
    held = f"{run_dir} already holds a run ({status}, {earlier.epochs} epochs)"
    if not resume:
        raise ConfigError(
            f"{held}; add trainer.resume=true to continue it with the same "
            "config, or choose a new directory"
        )
    before = compared_on_resume(with_moved_targets(earlier.config))
    changed = differences(before, compared_on_resume(config))
    if changed:
        shown = a_few(changed, sep="; ")
        raise ConfigError(
            f"{held} with another config ({shown}); resume it with the "
            "same overrides, or choose a new directory"
        )
    if status in DONE:
        return "leave"
    if earlier.epochs and not earlier.checkpoint:
        raise ConfigError(
            f"{held} but no checkpoint.pt to resume from; restore it from a copy, or start "
            "a new run directory"
        )
    return "carry_on"
