"""A search that stops hopeless trials early: trials are ordinary runs, the budget is shared by
every worker, bad input stops it before any trial, a resume never counts a trial twice, and a
PostgreSQL study serves several workers."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from tests.helpers import RUN, TINY

SEARCH = [
    "-m",
    "search=optuna",
    *TINY,
    "data.subset=120",
    "model.dim=16",
    "model.heads=4",
    "trainer.epochs=3",
    "trainer.progress=false",
    "sweep_name=s",
]
SHORT = [*SEARCH, "trainer.epochs=1", "search.pruner=none"]  # where pruning is not the point


def _study(where: Path, name: str = "s") -> optuna.Study:
    storage = f"sqlite:///{where / 'multirun' / name / 'study.db'}"
    return optuna.load_study(study_name=name, storage=storage)


def _one_error_line(result, *needles):
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_a_search_runs_its_trials_as_runs_prunes_and_ends_in_its_table(cli, tmp_path):
    result = cli(*SEARCH, "search.trials=5", "search.pruner=asha")
    assert result.returncode == 0, result.stderr
    study = _study(tmp_path)
    states = [t.state.name for t in study.trials]
    assert len(states) == 5 and "PRUNED" in states and "COMPLETE" in states
    table = pd.read_csv(tmp_path / "results" / "s" / "comparison.csv")
    assert len(table) == 5 and set(table["status"]) == {"completed", "pruned"}
    for trial in study.trials:  # each an ordinary run, its record where the trial says
        run = Path(trial.user_attrs["run_dir"])
        summary = json.loads((run / "summary.json").read_text())
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert summary["status"] == {"COMPLETE": "completed", "PRUNED": "pruned"}[trial.state.name]
        assert config["optim"]["lr"] == pytest.approx(trial.params["optim.lr"])
        assert config["choices"]["attention"] == trial.params["attention"]
        assert config["model"]["attention"]["_target_"].endswith(
            {"softmax": "SoftmaxAttention", "linear": "LinearAttention"}[trial.params["attention"]]
        )
        assert config["data"]["val_fraction"] == 0.1
        if trial.state.name == "COMPLETE":
            assert trial.value == summary["best_val_acc"]
        else:
            assert summary["epochs_done"] < 3 and summary["pruned_epoch"] == summary["epochs_done"]
    out = tmp_path / "results" / "s"
    for plot in ("optimization_history.png", "intermediate_values.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"
    text = (out / "search.md").read_text()
    assert "5 trials:" in text and "python src/run.py -m" in text and "seed=0,1,2" in text
    assert "search" not in text.split("python src/run.py -m")[1].split("sweep_name")[0]


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["search.pruner=quick"], "search.pruner='quick': expected median, asha, hyperband, none"),
        (["search.sampler=grid"], "search.sampler='grid': expected tpe, random"),
        (["search.storage=redis://x"], "search.storage='redis://x'"),
        (["~search.space"], "search.space={}"),
        (["search.trials=1", "search.workers=2"], "expected at least search.workers (2)"),
        (["data.val_fraction=0"], "tuning on the test set is no search"),
        (["search.storage=sqlite:////no/such/folder/x.db"], "cannot be opened"),
        (["~search.space.attention.choices"], "search.space.attention={'type': 'categorical'}"),
    ],
)
def test_bad_search_input_is_one_line_before_any_trial(cli, tmp_path, overrides, needle):
    result = cli(*SEARCH, *overrides)
    assert result.returncode == 2, result.stdout + result.stderr
    _one_error_line(result, needle)
    assert not list(tmp_path.glob("multirun/s/trial_*"))


def test_a_resumed_search_keeps_its_trials_and_retries_one_cut_short(cli, tmp_path):
    assert cli(*SHORT, "search.trials=2").returncode == 0
    cut = _study(tmp_path).ask()  # as if a worker had been killed mid-trial: still "running"
    cut.suggest_float("optim.lr", 1e-4, 3e-3, log=True)
    cut.suggest_float("optim.weight_decay", 1e-5, 1e-1, log=True)
    cut.suggest_categorical("attention", ["softmax", "linear"])
    other = cli(*SHORT, "search.trials=3", "search.pruner=asha", "trainer.resume=true")
    assert other.returncode == 2  # another pruner is another search
    _one_error_line(other, "holds another sweep", "search.pruner=asha")
    again = cli(*SHORT, "search.trials=3", "trainer.resume=true")
    assert again.returncode == 0, again.stderr  # a larger budget continues the study
    trials = _study(tmp_path).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]
    assert trials[3].user_attrs["retry_of"] == cut.number  # the one cut short, tried again
    assert trials[3].params == trials[2].params
    done = cli(*SHORT, "search.trials=3", "trainer.resume=true")
    assert done.returncode == 0 and len(_study(tmp_path).trials) == 4  # nothing counted twice


def test_a_journal_file_serves_as_the_storage(cli, tmp_path):
    journal = tmp_path / "shared" / "study.log"
    journal.parent.mkdir()
    result = cli(*SHORT, "search.trials=2", f"search.storage=journal:{journal}")
    assert result.returncode == 0, result.stderr
    backend = optuna.storages.journal.JournalFileBackend(str(journal))
    study = optuna.load_study(study_name="s", storage=optuna.storages.JournalStorage(backend))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]


POSTGRES = os.environ.get("VITSWEEP_TEST_POSTGRES")  # set by .ci/run, which starts a server


@pytest.mark.skipif(
    not POSTGRES,
    reason="no PostgreSQL server: .ci/run starts one and sets "
    "VITSWEEP_TEST_POSTGRES=postgresql://USER@HOST/DB",
)
def test_several_workers_share_one_postgresql_study_and_its_budget(tmp_path):
    name = f"s{os.getpid()}"
    args = [
        sys.executable,
        str(RUN),
        *SHORT,
        f"sweep_name={name}",
        "search.trials=4",
        "search.workers=2",
        f"search.storage={POSTGRES}",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
    ]
    env = {**os.environ, "WANDB_SILENT": "true"}
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name=name, storage=POSTGRES)
    finished = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert 4 <= len(finished) <= 5  # the budget; two workers may both start the last one
    assert {t.user_attrs["worker"] for t in finished} == {0, 1}  # neither waited for the other
    for trial in finished:
        run = tmp_path / trial.user_attrs["run_dir"]  # as the sweep read it, from its folder
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "completed" and trial.value == summary["best_val_acc"]


def test_a_trial_interrupted_mid_run_carries_on_from_its_checkpoint_on_resume(
    cli, tmp_path, signal_after_epoch, monkeypatch
):
    from vitsweep.record import RunRecord

    end_epoch = RunRecord.end_epoch
    monkeypatch.setattr("atexit.register", lambda f: None)  # no table on the way out here
    search = [*SEARCH, "search.trials=1", "search.pruner=none"]
    signal_after_epoch(1, signal.SIGTERM)  # SLURM preempts the worker in its first trial
    assert cli(*search).returncode == 130
    first = tmp_path / "multirun" / "s" / "trial_0"
    assert json.loads((first / "summary.json").read_text())["status"] == "interrupted"
    monkeypatch.setattr(RunRecord, "end_epoch", end_epoch)
    again = cli(*search, "trainer.resume=true")
    assert again.returncode == 0, again.stderr
    trials = _study(tmp_path).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[1].user_attrs["retry_of"] == 0 and trials[1].params == trials[0].params
    moved = tmp_path / "multirun" / "s" / "trial_1"
    assert not first.exists()  # one record per trial: the retry carried the first one on
    history = pd.read_csv(moved / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3]
    assert "resumed after epoch 1" in (moved / "run.log").read_text()
    table = pd.read_csv(tmp_path / "results" / "s" / "comparison.csv")
    assert list(table["status"]) == ["completed"]
