"""Experiment trackers: Weights & Biases, or nothing. Both have the same methods.

A tracker is built from its config when the run is built (so its settings are checked before
anything starts) and ``start``-ed only once training begins. It never stops training: any W&B
failure becomes one warning and the run carries on without it (the local run record in the run
directory is written regardless).
"""

import logging
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitsweep.errors import require
from vitsweep.hooks import Hook

log = logging.getLogger(__name__)


@dataclass
class Report:
    """What a sweep's report run logs: its tables (name -> frame) and plots (name -> PNG)."""

    group: str
    tables: dict[str, Any]
    images: dict[str, Path] = field(default_factory=dict)


class NullTracker(Hook):
    """Logs nothing; for ``logger=none`` and for tests that don't test W&B. Every tracker is a
    training hook (``vitsweep.hooks.Hook``): what it is handed, it logs."""

    def start(
        self,
        run_config: dict[str, Any],
        run_dir: Path,
        name: str,
        group: str | None,
        tags: Iterable[str],
    ) -> None:
        pass

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass

    def log_report(self, report: Report, run_dir: Path) -> None:
        """Log a sweep's table and plots as one run of its group (``job_type="report"``)."""

    def on_step(self, metrics: dict[str, float], step: int) -> None:
        self.log(metrics, step=step)

    def on_epoch(self, row: dict[str, Any], step: int, training: Any) -> None:
        self.log({k: v for k, v in row.items() if k != "confusion"}, step=step)


class WandbTracker(NullTracker):
    """One W&B run per job; ``reinit="finish_previous"`` keeps multirun jobs apart. The run's
    W&B id is kept in its directory (``wandb_run_id``), so a resumed run continues it."""

    # Online without an account must fail fast, not wait for a login prompt or the network.
    INIT_TIMEOUT_S = 30
    MAX_TAG = 64  # W&B refuses longer tags (a long override such as a path would be one)

    def __init__(
        self,
        project: str = "vitsweep",
        entity: str | None = None,
        group: str | None = None,
        tags: Sequence[str] = (),
        mode: str = "offline",
    ) -> None:
        modes = ("offline", "online", "disabled")
        require(mode in modes, "logger.mode", mode, ", ".join(modes))
        self.settings = {"project": project, "entity": entity, "mode": mode}
        self.group, self.tags = group, list(tags)
        self.run = None

    def start(
        self,
        run_config: dict[str, Any],
        run_dir: Path,
        name: str,
        group: str | None,
        tags: Iterable[str],
    ) -> None:
        try:
            import wandb

            id_file = Path(run_dir) / "wandb_run_id"
            run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
            id_file.write_text(run_id)
            self.run = wandb.init(
                **self.settings,
                id=run_id,
                resume="allow",
                group=self.group or group,
                tags=[tag[: self.MAX_TAG] for tag in [*self.tags, *tags]],
                name=name or None,
                config=run_config,
                dir=str(run_dir),
                reinit="finish_previous",
                settings=wandb.Settings(silent=True, init_timeout=self.INIT_TIMEOUT_S),
            )
        except Exception as err:  # no account, no network, bad settings: train without W&B
            self._give_up(err)

    def _give_up(self, err: Exception) -> None:
        log.warning("W&B disabled for this run (the local record goes on): %s", err)
        self.run = None

    def _call(self, method: Callable[[], Any]) -> None:
        if self.run is None:
            return
        try:
            method()
        except Exception as err:
            self._give_up(err)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._call(lambda: self.run.log(metrics, step=step))

    def summary(self, values: dict[str, Any]) -> None:
        self._call(lambda: self.run.summary.update(values))

    def finish(self, exit_code: int = 0) -> None:
        self._call(lambda: self.run.finish(exit_code=exit_code))
        self.run = None

    def log_report(self, report: Report, run_dir: Path) -> None:
        """The sweep's table (``wandb.Table``) and plots (``wandb.Image``) in one run of the
        sweep's group, so that the W&B project shows what comparison.md shows; a W&B failure
        is one warning (the results folder is written regardless)."""
        try:
            import wandb

            with wandb.init(
                **self.settings,
                group=self.group or report.group,
                job_type="report",
                name=f"{report.group}: comparison",
                tags=["report"],
                dir=str(run_dir),
                reinit="finish_previous",
                settings=wandb.Settings(silent=True, init_timeout=self.INIT_TIMEOUT_S),
            ) as run:
                logged = {name: wandb.Table(dataframe=t) for name, t in report.tables.items()}
                logged |= {name: wandb.Image(str(p)) for name, p in report.images.items()}
                run.log(logged)
        except Exception as err:
            log.warning("the table was not logged to W&B (results folder written): %s", err)
