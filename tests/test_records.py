"""Records that are never lost, mixed or silently wrong: each fault a careless (or unlucky)
user meets, and what must survive it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.helpers import QUICK, TINY, spawn
from vitsweep.callbacks import ComparisonReport
from vitsweep.checkpoint import read_checkpoint
from vitsweep.errors import ConfigError
from vitsweep.files import DirectoryLock
from vitsweep.record import RunRecord
from vitsweep.sweep import claim_sweep

pytestmark = pytest.mark.usefixtures("no_plots")  # figures: tests of their own

END_EPOCH = RunRecord.end_epoch
# Long enough to be caught mid-run: 30 short epochs of a small model (about 0.15 s each).
EPOCHS = 30
SLOW = [
    *TINY,
    "data.subset=256",
    "model.dim=32",
    "model.heads=4",
    "model.embedding.patch_size=8",
    f"trainer.epochs={EPOCHS}",
]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def _one_error_line(result, *needles: str) -> None:
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def _wait_for_epoch(history: Path, epoch: int, process, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if len(pd.read_csv(history)) >= epoch:
                return
        except (FileNotFoundError, pd.errors.EmptyDataError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"epoch {epoch} never finished: {process.communicate()}")


def test_a_directory_holding_a_run_is_refused_and_left_untouched(cli, tmp_path, finished_run):
    before = snapshot(tmp_path / "run")
    result = cli(*QUICK, "model.dim=64", "hydra.run.dir=run")
    assert result.returncode == 2
    _one_error_line(
        result, "already holds a run (completed, 2 epochs)", "trainer.resume=true", "new directory"
    )
    assert snapshot(tmp_path / "run") == before


def test_resume_refuses_a_run_with_another_config_and_says_what_differs(
    cli, tmp_path, finished_run
):
    before = snapshot(tmp_path / "run")
    result = cli(*QUICK, "model.dim=64", "trainer.resume=true", "hydra.run.dir=run")
    assert result.returncode == 2
    _one_error_line(result, "with another config", "model.dim (128 -> 64)")
    assert snapshot(tmp_path / "run") == before


def test_resuming_a_completed_run_skips_it_and_rewrites_nothing(cli, tmp_path, finished_run):
    before = snapshot(tmp_path / "run")
    result = cli(
        *reversed(QUICK), "trainer.resume=true", "trainer.progress=false", "hydra.run.dir=run"
    )
    assert result.returncode == 0 and "already completed; skipped" in result.stdout
    assert snapshot(tmp_path / "run") == before


def test_sigterm_stops_a_run_in_step_and_resume_ends_as_if_uninterrupted(
    cli, tmp_path, signal_after_epoch, monkeypatch
):
    run = [*TINY, "trainer.epochs=4"]
    assert cli(*run, "hydra.run.dir=straight").returncode == 0
    signal_after_epoch(2)
    stopped = cli(*run, "hydra.run.dir=run")
    assert stopped.returncode == 130
    assert "interrupted" in stopped.stderr and "trainer.resume=true" in stopped.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "SIGTERM" in summary["error"]
    assert len(pd.read_csv(tmp_path / "run" / "history.csv")) == 2
    assert read_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 2

    monkeypatch.setattr(RunRecord, "end_epoch", END_EPOCH)  # no more signals
    resumed = cli(*run, "trainer.resume=true", "hydra.run.dir=run")
    assert resumed.returncode == 0, resumed.stderr
    metrics = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr"]
    straight, after = (
        pd.read_csv(tmp_path / d / "history.csv")[metrics] for d in ("straight", "run")
    )
    pd.testing.assert_frame_equal(after, straight, check_exact=True)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and "error" not in summary


def test_a_resumed_run_continues_its_wandb_run(tmp_path):
    from vitsweep.tracking import WandbTracker

    for _ in range(2):  # the first attempt, then the resumed one, in the same directory
        tracker = WandbTracker(mode="offline")
        tracker.start({"a": 1}, tmp_path, "job", None, [])
        assert tracker.run is not None
        tracker.finish()
    run_id = (tmp_path / "wandb_run_id").read_text()
    # Each attempt is a directory of its own (named by its start time, with a suffix when two
    # start in the same second), and both hold the one run: run-<id>.wandb.
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 2
    assert len(list((tmp_path / "wandb").glob(f"offline-run-*/run-{run_id}.wandb"))) == 2


def test_a_signal_during_an_epochs_write_lands_after_history_and_checkpoint_agree(
    cli, tmp_path, monkeypatch
):
    import vitsweep.record.directory

    save = vitsweep.record.directory.save_checkpoint

    def signal_mid_write(path, epoch, *args):
        if epoch == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # between the history row and the checkpoint
        save(path, epoch, *args)

    monkeypatch.setattr(vitsweep.record.directory, "save_checkpoint", signal_mid_write)
    result = cli(*TINY, "trainer.epochs=4", "hydra.run.dir=run")
    assert result.returncode == 130
    assert len(pd.read_csv(tmp_path / "run" / "history.csv")) == 2
    assert read_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 2


HOLD_LOCK = """
import fcntl, sys, time
lock = open(sys.argv[1], "a+")
fcntl.flock(lock, fcntl.LOCK_EX)
lock.truncate(0); lock.write("4242\\n"); lock.flush()
print("locked", flush=True)
time.sleep(600)
"""


def test_a_live_runs_directory_is_refused_and_a_killed_ones_is_not(cli, tmp_path):
    (tmp_path / "run").mkdir()
    lock = str(tmp_path / "run" / "run.lock")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, lock], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"  # another process owns the run
        for extra in ([], ["trainer.resume=true"]):
            result = cli(*QUICK, *extra, "hydra.run.dir=run")
            assert result.returncode == 2
            _one_error_line(result, "in use by a live run (pid 4242)")
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["run.lock"]
    finally:
        holder.kill()  # kill -9: the lock file stays, with the dead process's pid
        holder.wait()
    result = cli(*QUICK, "hydra.run.dir=run")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "run.lock").read_text().strip() == str(os.getpid())


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_ends_as_an_uninterrupted_run(cli, tmp_path):
    assert cli(*SLOW, "hydra.run.dir=straight").returncode == 0
    killed = spawn([*SLOW, "hydra.run.dir=run"], tmp_path)
    _wait_for_epoch(tmp_path / "run" / "history.csv", 2, killed)
    killed.kill()  # SIGKILL: no handler runs, the lock is left behind with its pid
    killed.communicate(timeout=60)
    assert (tmp_path / "run" / "run.lock").read_text().strip() == str(killed.pid)

    result = cli(*SLOW, "trainer.resume=true", "hydra.run.dir=run")
    assert result.returncode == 0, result.stderr  # a dead process's lock blocks nothing
    metrics = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr"]
    straight, resumed = (
        pd.read_csv(tmp_path / d / "history.csv")[metrics] for d in ("straight", "run")
    )
    pd.testing.assert_frame_equal(resumed, straight, check_exact=True)


def _interrupted(run: Path) -> Path:
    """A finished run made to look as Ctrl-C would leave it."""
    summary = json.loads((run / "summary.json").read_text())
    summary |= {"status": "interrupted", "error": "interrupted (SIGINT)"}
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_resume_from_a_corrupt_checkpoint_is_one_line_before_anything_starts(cli, finished_run):
    run = _interrupted(finished_run)
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    before = snapshot(run)
    result = cli(*QUICK, "trainer.resume=true", "hydra.run.dir=run")
    assert result.returncode == 2
    _one_error_line(result, "checkpoint.pt cannot be read", "restore it")
    assert snapshot(run) == before


def test_resume_without_a_checkpoint_but_with_history_is_refused(cli, finished_run):
    run = _interrupted(finished_run)
    (run / "checkpoint.pt").unlink()
    before = snapshot(run)
    result = cli(*QUICK, "trainer.resume=true", "hydra.run.dir=run")
    assert result.returncode == 2
    _one_error_line(result, "no checkpoint.pt to resume from")
    assert snapshot(run) == before


def test_a_checkpoint_is_data_not_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > pwned.txt",))

    torch.save({"epoch": 1, "model": Payload()}, tmp_path / "checkpoint.pt")
    with pytest.raises(ConfigError, match="cannot be read"):
        read_checkpoint(tmp_path / "checkpoint.pt")
    assert not (tmp_path / "pwned.txt").exists() and not Path("pwned.txt").exists()


def test_a_checkpoint_is_read_onto_the_cpu(cli, tmp_path, finished_run):
    state = read_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["torch_rng"].device.type == "cpu" and state["torch_rng"].dtype == torch.uint8
    assert all(t.device.type == "cpu" for t in state["model"].values())


def test_a_stale_lock_is_taken_and_a_live_one_is_not(tmp_path):
    (tmp_path / "run.lock").write_text("99999999\n")  # left by a process that is gone
    lock = DirectoryLock(tmp_path)
    lock.acquire()
    lock.mark_owner()
    try:
        assert (tmp_path / "run.lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(ConfigError, match=f"in use by a live run \\(pid {os.getpid()}\\)"):
            DirectoryLock(tmp_path).acquire()
    finally:
        lock.release()


def test_a_refused_claim_leaves_no_lock_file_behind(cli, tmp_path, finished_run):
    (tmp_path / "run" / "run.lock").unlink()  # a record from before run.lock existed
    before = snapshot(tmp_path / "run")
    assert cli(*QUICK, "model.dim=64", "hydra.run.dir=run").returncode == 2
    assert snapshot(tmp_path / "run") == before


def test_an_unwritable_run_directory_is_one_line(cli, tmp_path):
    (tmp_path / "a_file").write_text("")
    result = cli(*QUICK, "hydra.run.dir=a_file/run")
    assert result.returncode == 2
    _one_error_line(result, "cannot write the run directory a_file/run")


# Sweeps.


def test_a_named_sweep_rerun_with_another_grid_is_refused_before_any_job(cli, tmp_path):
    quick = [*TINY, "trainer.epochs=1", "data.subset=32"]
    assert cli("-m", "attention=softmax,linear", *quick, "sweep_name=s").returncode == 0
    before = snapshot(tmp_path / "multirun" / "s")
    table = (tmp_path / "results" / "s" / "comparison.csv").read_bytes()
    other = cli("-m", "attention=performer,nystrom,linear", *quick, "sweep_name=s")
    assert other.returncode == 2
    _one_error_line(
        other, "holds another sweep", "attention=softmax,linear", "choose another sweep_name"
    )
    same = cli("-m", "attention=softmax,linear", *quick, "sweep_name=s")
    assert same.returncode == 2
    _one_error_line(same, "holds this sweep already", "trainer.resume=true")
    assert snapshot(tmp_path / "multirun" / "s") == before
    assert (tmp_path / "results" / "s" / "comparison.csv").read_bytes() == table
    resumed = cli("-m", "attention=softmax,linear", *quick, "sweep_name=s", "trainer.resume=true")
    assert resumed.returncode == 0 and resumed.stdout.count("skipped") == 2


def test_two_sweeps_of_one_name_cannot_both_claim_it(tmp_path):
    grid = {"overrides": ["attention=softmax,linear"], "params": {}}
    claim_sweep(tmp_path / "s", grid, resume=False, about={})
    with pytest.raises(ConfigError, match="holds this sweep already"):
        claim_sweep(tmp_path / "s", grid, resume=False, about={})


def test_sigint_in_a_sweep_writes_the_partial_table_and_a_resumed_rerun_finishes(
    cli, tmp_path, signal_after_epoch, monkeypatch
):
    registered = []  # what is left for the interpreter's exit: the sweep's table, run here
    monkeypatch.setattr("atexit.register", registered.append)
    sweep = ["-m", "attention=softmax,linear", *TINY, "trainer.epochs=2", "sweep_name=s"]
    signal_after_epoch(1, signal.SIGINT)  # in job 0: Ctrl-C stops the whole sweep there
    job0, job1 = (tmp_path / "multirun" / "s" / str(i) for i in (0, 1))
    stopped = cli(*sweep)
    assert stopped.returncode == 130
    assert not (tmp_path / "results" / "s").exists() and not job1.exists()
    on_exit = [f for f in registered if isinstance(getattr(f, "__self__", None), ComparisonReport)]
    assert len(on_exit) == 1  # (tqdm and others register their own; only ours is run)
    on_exit[0]()  # the interpreter exits: the table of what the sweep has
    partial = pd.read_csv(tmp_path / "results" / "s" / "comparison.csv")
    assert list(partial["status"]) == ["interrupted"] and partial["epochs_done"][0] == 1

    monkeypatch.setattr(RunRecord, "end_epoch", END_EPOCH)  # no more signals
    again = cli(*sweep, "trainer.resume=true")
    assert again.returncode == 0, again.stderr
    assert len(pd.read_csv(job0 / "history.csv")) == len(pd.read_csv(job1 / "history.csv")) == 2
    table = pd.read_csv(tmp_path / "results" / "s" / "comparison.csv")
    assert list(table["status"]) == ["completed", "completed"] and table["error"].isna().all()


@pytest.mark.slow
def test_sigint_to_a_real_sweep_writes_the_partial_table_on_the_way_out(cli, tmp_path):
    sweep = ["-m", "attention=softmax,linear", *SLOW, "sweep_name=s"]
    first = spawn(sweep, tmp_path)
    job0, job1 = (tmp_path / "multirun" / "s" / str(i) for i in (0, 1))
    _wait_for_epoch(job1 / "history.csv", 1, first)
    first.send_signal(signal.SIGINT)
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 130, stderr
    partial = pd.read_csv(tmp_path / "results" / "s" / "comparison.csv")
    assert list(partial["status"]) == ["completed", "interrupted"]  # written on the way out
    assert "stopped early" in stderr and "softmax" in stdout
    finished_at = (job0 / "checkpoint.pt").stat().st_mtime_ns

    again = cli(*sweep, "trainer.resume=true")
    assert again.returncode == 0, again.stderr
    assert (job0 / "checkpoint.pt").stat().st_mtime_ns == finished_at  # skipped, not redone
    assert len(pd.read_csv(job1 / "history.csv")) == EPOCHS


def test_a_diverged_job_is_a_row_and_the_sweep_goes_on(cli, tmp_path):
    result = cli("-m", "optim.lr=1e-3,1e30", *TINY, "trainer.epochs=1", "sweep_name=d")
    assert result.returncode == 1  # something did not complete
    assert "diverged: non-finite loss at step" in result.stderr
    table = pd.read_csv(tmp_path / "results" / "d" / "comparison.csv")
    assert list(table["status"]) == ["completed", "diverged"]


def test_a_diverged_single_run_exits_1_with_its_step(cli, tmp_path):
    result = cli(
        *TINY, "trainer.epochs=2", "optim.lr=1e30", "trainer.log_every=1", "hydra.run.dir=run"
    )
    assert result.returncode == 1
    # Step 1's loss is computed before the huge update; step 2's is the first non-finite one.
    assert result.stderr.strip() == "diverged: non-finite loss at step 2"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_step"] == 2


def test_an_explicit_sweep_dir_still_names_the_results_after_sweep_name(cli, tmp_path):
    result = cli(
        "-m",
        "attention=softmax,linear",
        *TINY,
        "trainer.epochs=0",
        "sweep_name=named",
        "hydra.sweep.dir=elsewhere/dir",
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "results" / "named" / "comparison.csv").exists()
    assert len(list((tmp_path / "elsewhere" / "dir").glob("*/summary.json"))) == 2
