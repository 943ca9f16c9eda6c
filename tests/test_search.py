"""A search that stops hopeless trials early: trials are ordinary runs, the budget is shared by
every worker, bad input stops it before any trial, a resume never counts a trial twice, and a
PostgreSQL study serves several workers."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from tests.helpers import RUN, TINY, invoke

pytestmark = pytest.mark.usefixtures("no_plots")  # figures: tests of their own

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


@pytest.mark.plots
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


@pytest.mark.slow  # about 16 s; the retry path is in the default run by the interrupted-trial test
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


# A search's numbers are only ever those of runs that trained with the trial's parameters.

TINY_SEARCH = [*SHORT, "data.subset=64", "model.depth=1", "data.val_fraction=0.2"]


@pytest.fixture(scope="session")
def two_trials_once(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("searched")
    done = invoke([*TINY_SEARCH, "search.trials=2"], where)
    assert done.returncode == 0, done.stderr
    return where


@pytest.fixture
def two_trials(two_trials_once, tmp_path, cli) -> Path:
    """A finished search of two trials (``TINY_SEARCH``) in ``tmp_path``, run once a session."""
    for part in ("multirun", "results"):
        shutil.copytree(two_trials_once / part, tmp_path / part)
    return tmp_path


def test_a_resumed_search_draws_on_instead_of_repeating_its_first_trial(cli, two_trials):
    resumed = cli(*TINY_SEARCH, "search.trials=3", "trainer.resume=true")
    assert resumed.returncode == 0, resumed.stderr
    trials = _study(two_trials).trials
    assert len(trials) == 3 and trials[2].params != trials[0].params
    table = pd.read_csv(two_trials / "results" / "s" / "comparison.csv")
    assert len(table) == 3 and set(table["n"]) == {1}  # a trial is a row, never a seed of one


def test_two_trials_that_draw_one_point_are_two_rows(cli, tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(RUN.parents[1] / "conf", conf)
    optuna_yaml = conf / "search" / "optuna.yaml"  # only the attention, one choice: one point
    kept = [line for line in optuna_yaml.read_text().splitlines() if "optim." not in line]
    optuna_yaml.write_text("\n".join(kept).replace("[softmax, linear]", "[softmax]") + "\n")
    result = cli(f"--config-path={conf}", *TINY_SEARCH, "search.trials=2")
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(tmp_path / "results" / "s" / "comparison.csv")
    assert list(table["n"]) == [1, 1] and list(table["override:search.trial"]) == [0, 1]


def test_a_search_whose_study_was_deleted_is_refused_not_scored_by_old_records(cli, two_trials):
    (two_trials / "multirun" / "s" / "study.db").unlink()
    resumed = cli(*TINY_SEARCH, "search.trials=3", "trainer.resume=true")
    assert resumed.returncode == 2
    _one_error_line(resumed, "trial_0", "its study does not know", "restore it")


def test_a_study_reused_without_its_records_is_refused(cli, two_trials):
    kept = two_trials / "elsewhere.db"
    shutil.move(two_trials / "multirun" / "s" / "study.db", kept)
    shutil.rmtree(two_trials / "multirun")  # the records gone, the study kept
    shutil.rmtree(two_trials / "results")
    again = cli(*TINY_SEARCH, "search.trials=2", f"search.storage=sqlite:///{kept}")
    assert again.returncode == 2
    _one_error_line(again, "the study s holds 2 finished trials", "not in multirun/s")
    assert not (two_trials / "multirun").exists()  # refused before anything was made


def test_a_sampler_changed_in_the_searchs_file_is_another_search(cli, two_trials):
    conf = two_trials / "conf"
    shutil.copytree(RUN.parents[1] / "conf", conf)
    optuna_yaml = conf / "search" / "optuna.yaml"
    optuna_yaml.write_text(optuna_yaml.read_text().replace("sampler: tpe", "sampler: random"))
    resumed = cli(f"--config-path={conf}", *TINY_SEARCH, "search.trials=3", "trainer.resume=true")
    assert resumed.returncode == 2
    _one_error_line(resumed, "holds another sweep", "search.sampler=random (was tpe)")


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("trainer.epochs=0", "trainer.epochs=0: expected at least 1 in a search"),
        ("dry_run=true", "dry_run=True: expected false in a search"),
        ("search.sampler_seed=-5", "search.sampler_seed=-5: expected an integer from 0"),
    ],
)
def test_a_search_that_cannot_train_is_refused_leaving_nothing(cli, tmp_path, override, needle):
    result = cli(*TINY_SEARCH, "search.trials=1", override)
    assert result.returncode == 2
    _one_error_line(result, needle)
    assert not (tmp_path / "multirun").exists()  # no study.db, no empty sweep directory


def test_a_failed_trial_is_one_line_not_a_traceback(cli, tmp_path, monkeypatch):
    import vitsweep.job

    def broken(*args, **kwargs):
        raise vitsweep.errors.Diverged(3)

    monkeypatch.setattr(vitsweep.job, "fit", broken)
    result = cli(*TINY_SEARCH, "search.trials=1")
    assert "Traceback" not in result.stdout + result.stderr
    assert "diverged: non-finite loss at step 3" in result.stderr
    assert [t.state.name for t in _study(tmp_path).trials] == ["FAIL"]


def test_rule_a_trials_value_is_the_run_that_trained_with_its_parameters(two_trials):
    study = _study(two_trials)
    for trial in study.trials:
        run = two_trials / trial.user_attrs["run_dir"]
        summary = json.loads((run / "summary.json").read_text())
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert trial.value == summary["best_val_acc"]  # never another record's number
        assert config["optim"]["lr"] == pytest.approx(trial.params["optim.lr"])
        assert config["choices"]["attention"] == trial.params["attention"]
        assert config["search"]["trial"] == trial.number
