"""Sweeps through a real SLURM scheduler (the one-node cluster .ci/slurm starts; skipped, with
the reason, where none answers), and the pure parts of what a cluster does to a job: a restart
carries on, a time-limit warning stops at an epoch boundary, a lost job is a row with SLURM's
reason, a job trains on the CPUs it was given.

The end-to-end cases wait on SLURM (a requeued job starts again about 40 s later) and are
marked slow, but for one short grid; their measured times are in docs/cluster.md."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tests.helpers import QUICK, ROOT, SLURM, TINY, sacct, spawn
from vitsweep.device import cpus_given
from vitsweep.errors import ConfigError
from vitsweep.record.resume import Earlier, decide_resume
from vitsweep.search.checks import check_storage_place, file_system_of
from vitsweep.slurm import check_array_size, merge_fate, parse_sacct, refusal, restarts

WHERE = Path("multirun/x/0")
SAME = {"seed": 0}
TIMES = ("train_s", "train_img_per_s", "test_s", "test_img_per_s", "peak_mem_mb")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def rows(history: Path) -> list[dict[str, str]]:
    """history.csv's rows, less the seconds (which no two runs share)."""
    lines = history.read_text().splitlines()
    header = lines[0].split(",")
    return [{k: v for k, v in zip(header, line.split(",")) if k not in TIMES} for line in lines[1:]]


def wait_for(what, seconds: float, sweep: subprocess.Popen | None = None):
    """``what()`` once it is true (polled), within ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if found := what():
            return found
        assert sweep is None or sweep.poll() is None, sweep.communicate()
        time.sleep(0.3)
    raise AssertionError(f"not within {seconds} s")


def epochs_in(job: Path) -> int:
    history = job / "history.csv"
    return len(history.read_text().splitlines()) - 1 if history.exists() else 0


def ended(sweep: subprocess.Popen, seconds: float) -> tuple[int, str, str]:
    out, err = sweep.communicate(timeout=seconds)
    return sweep.returncode, out, err


# --- the pure parts, no cluster needed --------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "resume", "restarted", "action"),
    [
        ("interrupted", False, True, "carry_on"),  # requeued: the same task, carried on
        ("running", False, True, "carry_on"),  # killed without a word (KillWait, a lost node)
        ("completed", False, True, "leave"),  # finished before the restart: nothing to redo
        ("interrupted", True, False, "carry_on"),
    ],
)
def test_a_job_its_scheduler_restarted_carries_on_without_resume(status, resume, restarted, action):
    found = Earlier(SAME, {"status": status}, epochs=3, checkpoint=True)
    assert decide_resume(WHERE, found, SAME, resume, restarted) == action


def test_a_restarted_job_is_still_refused_another_config_and_a_fresh_one_any():
    found = Earlier(SAME, {"status": "interrupted"}, epochs=3, checkpoint=True)
    with pytest.raises(ConfigError, match="with another config"):
        decide_resume(WHERE, found, {"seed": 1}, False, restarted=True)
    with pytest.raises(ConfigError, match="add trainer.resume=true"):
        decide_resume(WHERE, found, SAME, False, restarted=False)


def test_slurm_says_how_often_a_job_was_started_before():
    assert restarts({}) == 0
    assert restarts({"SLURM_RESTART_COUNT": "2"}) == 2
    assert restarts({"SLURM_RESTART_COUNT": "junk"}) == 0


@pytest.mark.parametrize(
    ("environ", "affinity", "given"),
    [({}, 8, 8), ({"SLURM_CPUS_PER_TASK": "2"}, 8, 2), ({"SLURM_CPUS_PER_TASK": "16"}, 4, 4)],
)
def test_a_job_uses_the_cpus_it_was_given(environ, affinity, given):
    assert cpus_given(environ, affinity) == given


def test_sacct_says_a_lost_jobs_state_reason_and_exit_code():
    listed = (
        "7_0|COMPLETED|None|0:0\n7_1|CANCELLED by 0|None|0:15\n7_[2-3%1]|CANCELLED by 0|X|0:0\n"
    )
    fate = parse_sacct("7_1", listed)
    assert (fate.state, fate.status, fate.exit_code) == ("CANCELLED by 0", "cancelled", "0:15")
    assert parse_sacct("7_3", listed).reason == "X"  # cancelled before it started
    assert parse_sacct("7_4", listed) is None
    assert parse_sacct("7_1", "") is None


@pytest.mark.parametrize(
    ("summary", "status", "said"),
    [
        ({"status": "interrupted", "epochs_done": 2}, "cancelled", "interrupted after 2 epochs"),
        ({"status": "stopped"}, "out_of_memory", "OUT_OF_MEMORY"),  # killed: no word of its own
        ({}, "cancelled", "it never started"),  # cancelled while pending
        ({"status": "diverged", "error": "non-finite loss"}, "diverged", "non-finite loss ("),
        ({"status": "completed"}, "completed", None),
        ({}, "pending", "not started yet"),  # a table made while the sweep runs
        ({"status": "interrupted", "epochs_done": 3}, "requeued", "interrupted after 3 epochs"),
        ({"status": "running"}, "running", None),
    ],
)
def test_a_lost_job_takes_slurms_status_unless_its_record_says_more(summary, status, said):
    states = {"cancelled": "CANCELLED by 0", "out_of_memory": "OUT_OF_MEMORY"}
    states |= {"pending": "PENDING", "requeued": "REQUEUED", "running": "RUNNING"}
    state = states.get(status, "FAILED")
    fate = {"job_id": "7_1", "state": state, "reason": "None", "status": state.split()[0].lower()}
    merged = merge_fate(summary, fate)
    assert merged.get("status") == status
    assert said is None or said in merged["error"]


def test_a_grid_larger_than_the_clusters_array_limit_is_refused_in_one_line():
    check_array_size(1001, 1001)
    check_array_size(5000, None)  # a cluster that does not say: sbatch decides
    with pytest.raises(ConfigError, match="the grid has 1002 jobs but this cluster's MaxArr"):
        check_array_size(1002, 1001)


def test_sbatchs_own_line_is_what_a_refused_submission_says():
    text = "Job failed:\nsbatch: error: Batch job submission failed: Requested node configuration"
    assert refusal(RuntimeError(text)).startswith("Batch job submission failed: Requested node")


MOUNTS = """/dev/vda / ext4 rw 0 0
fs:/home /home nfs4 rw,vers=4.2 0 0
/dev/sdb /home/me/local\\040disk xfs rw 0 0
mds@tcp:/scratch /scratch lustre rw 0 0
"""


def test_the_file_system_a_path_is_on_is_its_deepest_mount_point():
    assert file_system_of(Path("/home/me/study.db"), MOUNTS) == "nfs4"
    assert file_system_of(Path("/home/me/local disk/study.db"), MOUNTS) == "xfs"
    assert file_system_of(Path("/tmp/study.db"), MOUNTS) == "ext4"


@pytest.mark.parametrize("place", ["/home/me/multirun/s/study.db", "/scratch/s/study.db"])
def test_an_sqlite_study_on_a_network_file_system_is_refused(place):
    with pytest.raises(ConfigError, match="a network file system, where SQLite's locks fail"):
        check_storage_place(f"sqlite:///{place}", MOUNTS)
    check_storage_place("sqlite:////tmp/s/study.db", MOUNTS)
    check_storage_place("journal:/scratch/s/journal.log", MOUNTS)  # a journal may go there
    check_storage_place("postgresql://u@db/s", MOUNTS)


def test_a_time_limit_warning_stops_at_an_epoch_boundary_then_the_launcher_requeues(
    cli, tmp_path, signal_after_epoch
):
    """USR2 (what submitit asks SLURM to send before the limit) interrupts the run as SIGTERM
    does, and only once its record says so is the launcher's handler (here standing in for
    submitit's requeue) handed the signal."""
    seen = []

    def launchers_handler(signum, frame):
        seen.append(read_json(tmp_path / "run" / "summary.json"))

    previous = signal.signal(signal.SIGUSR2, launchers_handler)
    try:
        signal_after_epoch(1, signal.SIGUSR2)
        result = cli(*QUICK, "hydra.run.dir=run")
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert result.returncode == 130, result.stderr
    assert [(s["status"], s["epochs_done"]) for s in seen] == [("interrupted", 1)]
    assert "SIGUSR2" in seen[0]["error"]
    assert [row["epoch"] for row in rows(tmp_path / "run" / "history.csv")] == ["1"]


# --- through the real scheduler ---------------------------------------------------------------


def test_a_grid_on_slurm_trains_on_its_cpus_and_a_failed_job_is_failed_in_sacct(
    cli, tmp_path, slurm_cluster, no_plots
):
    result = cli("-m", *SLURM, *TINY, "trainer.epochs=1", "optim.lr=1e-3,1e30", "sweep_name=s")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    done, diverged = (read_json(tmp_path / f"multirun/s/{n}/summary.json") for n in (0, 1))
    assert (done["status"], done["device"]) == ("completed", "CPU (1 threads)")
    assert sacct(done["slurm_job_id"]) == "COMPLETED"
    assert sacct(diverged["slurm_job_id"]) == "FAILED"  # hydra #1928: it would say COMPLETED
    manifest = read_json(tmp_path / "results/s/manifest.json")
    assert [r["status"] for r in manifest["rows"]] == [{"0": "completed"}, {"0": "diverged"}]
    assert "1 (diverged): non-finite loss" in result.stderr
    assert "SLURM job" in result.stderr and "FAILED" in result.stderr


@pytest.mark.slow
def test_a_requeued_job_carries_on_and_its_history_is_the_uninterrupted_runs(
    tmp_path, slurm_cluster
):
    """Two jobs of one config (log_every differs, nothing else): job 0 is requeued mid-run
    (``scontrol requeue``: SIGTERM, then SLURM starts the same task again); it carries on from
    its last whole epoch, in its own directory, its W&B run continued, and its history is job
    1's, epoch for epoch, number for number."""
    grid = [*SLURM, *TINY, "data.subset=128", "trainer.epochs=8", "trainer.log_every=10,11"]
    wandb = ["logger=wandb", "logger.mode=offline"]
    sweep = spawn(["-m", *grid, *wandb, "sweep_name=r"], tmp_path)
    job = tmp_path / "multirun/r/0"
    wait_for(lambda: epochs_in(job) >= 3, 120, sweep)
    before = rows(job / "history.csv")
    run_id = (job / "wandb_run_id").read_text()
    subprocess.run(["scontrol", "requeue", read_json(job / "summary.json")["slurm_job_id"]])
    code, out, err = ended(sweep, 300)
    assert code == 0, err
    summary = read_json(job / "summary.json")
    assert (summary["status"], summary["slurm_restarts"]) == ("completed", 1)
    history = rows(job / "history.csv")
    assert [row["epoch"] for row in history] == [str(n) for n in range(1, 9)]  # each once
    assert history[: len(before)] == before  # the earlier epochs untouched
    assert history == rows(tmp_path / "multirun/r/1/history.csv")
    assert "resumed after epoch" in (job / "run.log").read_text()
    assert (job / "wandb_run_id").read_text() == run_id
    assert len(list(job.glob(f"wandb/offline-run-*-{run_id}"))) == 2  # one run, two starts
    assert "Comparison of 2 jobs (0 not completed)" in out


@pytest.mark.slow
def test_a_job_warned_of_its_time_limit_saves_requeues_itself_and_matches_its_twin(
    tmp_path, slurm_cluster
):
    """The warning SLURM sends before the time limit (USR2, ``signal_delay_s`` before it),
    sent now (as submitit's own tests do: a one-minute limit's warning can come at the job's
    first second, slurmctld checking limits every 30 s): the job stops at an epoch boundary,
    submitit requeues it (one of ``max_num_timeout``), and it carries on; its history is its
    uninterrupted twin's."""
    grid = [*SLURM, *TINY, "data.subset=128", "trainer.epochs=8", "trainer.log_every=10,11"]
    sweep = spawn(["-m", *grid, "sweep_name=t"], tmp_path)
    job = tmp_path / "multirun/t/0"
    wait_for(lambda: epochs_in(job) >= 3, 120, sweep)
    before = rows(job / "history.csv")
    warned = read_json(job / "summary.json")["slurm_job_id"]
    subprocess.run(["scancel", "--signal=USR2", warned])
    code, out, err = ended(sweep, 300)
    assert code == 0, err
    summary = read_json(job / "summary.json")
    assert (summary["status"], summary["slurm_restarts"]) == ("completed", 1)
    history = rows(job / "history.csv")
    assert [r["epoch"] for r in history] == [str(e) for e in range(1, 9)]
    assert history[: len(before)] == before
    assert history == rows(tmp_path / "multirun/t/1/history.csv")
    logs = "".join(p.read_text() for p in tmp_path.glob(f"multirun/t/.submitit/{warned}/*.err"))
    assert "Caught signal SIGUSR2" in logs and "timed-out" in logs
    assert sacct(warned) == "COMPLETED"


@pytest.mark.slow
def test_a_time_limit_with_no_requeue_left_is_a_timeout_row(tmp_path, slurm_cluster):
    grid = [*SLURM, "hydra.launcher.max_num_timeout=0", *TINY, "data.subset=128"]
    sweep = spawn(["-m", *grid, "trainer.epochs=8", "seed=0,1", "sweep_name=n"], tmp_path)
    job = tmp_path / "multirun/n/0"
    wait_for(lambda: epochs_in(job) >= 2, 120, sweep)
    warned = read_json(job / "summary.json")["slurm_job_id"]
    subprocess.run(["scancel", "--signal=USR2", warned])
    code, out, err = ended(sweep, 200)
    assert code == 1, err
    assert "0 (timeout): its time limit came with no requeue left" in err
    assert "Traceback" not in out + err
    manifest = read_json(tmp_path / "results/n/manifest.json")
    assert manifest["rows"][0]["status"] == {"0": "timeout", "1": "completed"}
    assert sacct(warned) == "FAILED"


@pytest.mark.slow
def test_a_requeued_search_worker_carries_its_trial_on_counted_once(tmp_path, slurm_cluster):
    """Two workers of one study (SQLite in the sweep directory), started together by SLURM;
    one is requeued in its first trial, which a new trial carries on from its checkpoint."""
    search = ["search=optuna", "search.workers=2", "search.trials=3", "search.pruner=none"]
    small = [*TINY, "data.subset=128", "model.dim=16", "trainer.epochs=6"]
    sweep = spawn(["-m", *search, *SLURM, *small, "sweep_name=w"], tmp_path)
    first = wait_for(
        lambda: [j for j in tmp_path.glob("multirun/w/trial_*") if epochs_in(j) >= 2], 150, sweep
    )[0]
    subprocess.run(["scontrol", "requeue", read_json(first / "summary.json")["slurm_job_id"]])
    code, out, err = ended(sweep, 300)
    assert code == 0, err
    storage = f"sqlite:///{tmp_path / 'multirun/w/study.db'}"
    trials = optuna.load_study(study_name="w", storage=storage).trials
    cut = int(first.name.removeprefix("trial_"))
    retries = [t for t in trials if t.user_attrs.get("retry_of") == cut]
    assert trials[cut].state.name == "FAIL" and [t.state.name for t in retries] == ["COMPLETE"]
    assert sum(t.state.name == "COMPLETE" for t in trials) == 3  # the budget, the retry once
    carried = tmp_path / f"multirun/w/trial_{retries[0].number}"
    assert not first.exists() and "resumed after epoch" in (carried / "run.log").read_text()
    assert [r["epoch"] for r in rows(carried / "history.csv")] == [str(e) for e in range(1, 7)]


@pytest.mark.slow
def test_jobs_outlive_their_submitter_and_report_py_shows_the_sweep_at_any_time(
    tmp_path, slurm_cluster
):
    """The submitting process killed outright (a login node lost): the jobs train on, and
    report.py on the sweep's directory shows them running and pending, then the table."""
    grid = [*SLURM, "hydra.launcher.array_parallelism=1", *TINY, "data.subset=128"]
    sweep = spawn(["-m", *grid, "trainer.epochs=4", "seed=0,1,2", "sweep_name=g"], tmp_path)
    wait_for(lambda: epochs_in(tmp_path / "multirun/g/0") >= 1, 120, sweep)
    report = [sys.executable, str(ROOT / "src/report.py"), "multirun/g"]
    meanwhile = subprocess.run(report, cwd=tmp_path, capture_output=True, text=True)
    assert "1 (pending): SLURM job" in meanwhile.stderr and "not started yet" in meanwhile.stderr
    sweep.kill()
    summaries = [tmp_path / f"multirun/g/{n}/summary.json" for n in range(3)]
    done = lambda: all(s.exists() and read_json(s)["status"] == "completed" for s in summaries)  # noqa: E731
    wait_for(done, 240)
    time.sleep(3)  # the last job's process ends after its record
    after = subprocess.run(report, cwd=tmp_path, capture_output=True, text=True)
    assert after.returncode == 0, after.stderr
    assert "Comparison of 3 runs" in after.stdout


@pytest.mark.slow
def test_submit_and_go_returns_at_once_and_a_job_of_its_own_writes_the_table(
    tmp_path, slurm_cluster
):
    """hydra.launcher.wait=false: the sweep's process returns while its jobs are still with
    SLURM; the table's job, which waits on the array, writes results/<sweep> once they end."""
    grid = [*SLURM, "hydra.launcher.wait=false", *TINY, "trainer.epochs=2", "seed=0,1"]
    sweep = spawn(["-m", *grid, "report.correction=bonferroni", "sweep_name=go"], tmp_path)
    code, out, err = ended(sweep, 60)
    assert code == 0, err
    job = read_json(tmp_path / "multirun/go/slurm_report.json")["job_id"]
    assert f"Submitted; SLURM job {job} writes the table" in out
    assert not (tmp_path / "results/go").exists()  # nothing has ended yet: no table
    table = tmp_path / "results/go/comparison.csv"
    wait_for(lambda: table.exists() and "COMPLETED" in sacct(job), 180)
    assert "bonferroni" in (tmp_path / "results/go/comparison.md").read_text().lower()
    assert "completed" in table.read_text()


@pytest.mark.slow
def test_cancelled_jobs_running_or_pending_are_rows_with_slurms_reason(tmp_path, slurm_cluster):
    """One job at a time: job 0 finishes, job 1 is cancelled at epoch 2, job 2 while it
    waits. The table of all three is written, each lost job's row says CANCELLED, and the
    sweep ends in exit 1 without a traceback."""
    grid = [*SLURM, "hydra.launcher.array_parallelism=1", *TINY, "data.subset=128"]
    sweep = spawn(["-m", *grid, "trainer.epochs=6", "seed=0,1,2", "sweep_name=c"], tmp_path)
    job = tmp_path / "multirun/c/1"
    wait_for(lambda: epochs_in(job) >= 2, 150, sweep)
    running = read_json(job / "summary.json")["slurm_job_id"]
    subprocess.run(["scancel", running, running.replace("_1", "_2")])
    code, out, err = ended(sweep, 200)
    assert code == 1, err
    assert "Traceback" not in out + err
    assert "1 (cancelled): SLURM job" in err and "interrupted after 2 epochs" in err
    assert "2 (cancelled): SLURM job" in err and "it never started" in err
    manifest = read_json(tmp_path / "results/c/manifest.json")
    assert manifest["rows"][0]["status"] == {"0": "completed", "1": "cancelled", "2": "cancelled"}
    assert sacct(running).startswith("CANCELLED")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("asked", "said"),
    [
        (["seed=range(0,1002)"], "the grid has 1002 jobs but this cluster's MaxArraySize is"),
        (["seed=0,1", "hydra.launcher.cpus_per_task=64"], "SLURM refused the sweep's jobs: "),
    ],
    ids=["larger-than-MaxArraySize", "more-cpus-than-the-partition-has"],
)
def test_a_sweep_slurm_cannot_take_is_one_line_before_any_job_runs(
    cli, tmp_path, slurm_cluster, asked, said
):
    result = cli("-m", *SLURM, *TINY, *asked, "sweep_name=no")
    assert result.returncode == 2, result.stderr
    assert said in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not list(tmp_path.glob("multirun/no/*/summary.json"))
