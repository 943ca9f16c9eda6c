"""What a search leaves beside the table of its trials: Optuna's own plots (history,
intermediate values, importances) and search.md (the best trial, what was pruned, the epochs
spent, the command that reruns the best trial over seeds)."""

import logging
import warnings
from pathlib import Path
from typing import Any

from vitsweep.config import override_key
from vitsweep.files import write_atomic
from vitsweep.report.plots import pyplot, save_figure
from vitsweep.search.study import open_study, search_settings
from vitsweep.search.worker import base_overrides
from vitsweep.settings import SearchSettings

log = logging.getLogger(__name__)


def write_search_report(
    config: dict[str, Any],
    command: list[str],
    experiment: str | None,
    sweep_dir: Path,
    out_dir: Path,
) -> str:
    """search.md and the plots into ``out_dir``; returns search.md's text. ``config``: the
    sweep's (plain), ``command``: its command line, ``experiment``: the experiment its search
    file selected, if any (the rerun command names it)."""
    settings = search_settings(config["search"])
    name = str(config["sweep_name"])
    study = open_study(settings, sweep_dir, name)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_plots(study, out_dir)
    overrides = base_overrides(command, settings.space)
    if experiment and not any(o.startswith("experiment=") for o in overrides):
        overrides = [f"experiment={experiment}", *overrides]  # set by the search's file
    fraction = (config.get("data") or {}).get("val_fraction")
    text = search_summary(study, settings, overrides, name, fraction)
    write_atomic(out_dir / "search.md", text)
    return text


def write_plots(study: Any, out_dir: Path) -> None:
    """Optuna's own matplotlib plots; one that cannot be drawn yet (too few trials) is left
    out with a log line."""
    from optuna.visualization import matplotlib as plots

    drawn = {
        "optimization_history": plots.plot_optimization_history,
        "intermediate_values": plots.plot_intermediate_values,
        "param_importances": plots.plot_param_importances,
    }
    for name, draw in drawn.items():
        try:
            with warnings.catch_warnings():  # "experimental", "too few trials": said below
                warnings.simplefilter("ignore")
                axes = draw(study)
            axes.figure.tight_layout()
            save_figure(axes.figure, out_dir / f"{name}.png")
        except Exception as err:  # e.g. importances need two finished trials
            log.info("%s not drawn: %s", name, err)
        finally:
            pyplot().close("all")


def search_summary(
    study: Any, settings: SearchSettings, overrides: list[str], name: str, fraction: float
) -> str:
    """search.md: what the search did, its best trial, and the command that reruns it."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    states = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    epochs = sum(len(t.intermediate_values) for t in trials)
    lines = [
        f"# Search {name}",
        "",
        f"{len(trials)} trials: {states['complete']} completed, {states['pruned']} pruned, "
        f"{states['fail']} failed; {epochs} epochs trained and validated in all "
        f"(pruner: {settings.pruner}, sampler: {settings.sampler}, seed "
        f"{settings.sampler_seed}).",
    ]
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    if finished:
        best = max(finished, key=lambda t: t.value)
        chosen = [f"{k}={v}" for k, v in best.params.items()]
        skip = ("search", "sweep_name", "trainer.resume", "data.val_fraction")
        kept = [o for o in overrides if not override_key(o).startswith(skip)]
        command = " ".join(
            [
                "python src/run.py -m",
                *kept,
                *chosen,
                f"data.val_fraction={fraction}",
                "seed=0,1,2",
                f"sweep_name={name}-best",
            ]
        )
        lines += [
            "",
            f"Best trial: {best.number}, validation top-1 {100 * best.value:.2f}% "
            f"({', '.join(chosen)}; record: {best.user_attrs.get('run_dir')}).",
            "",
            "Rerun it over seeds for a table to cite:",
            "",
            f"    {command}",
        ]
    return "\n".join(lines) + "\n"
