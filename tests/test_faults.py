"""Never silently wrong: ordinary sweeps that must give the right table, and damaged or
hostile input that must be one line. Each test is a case a demanding user met; the rule behind
it is in its name."""

import errno
import json
import os
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from tests.helpers import QUICK, TINY, spawn, write_job
from vitsweep.errors import ConfigError
from vitsweep.record import RunRecord
from vitsweep.report import comparison_table, load_sweep, row_from_run, to_markdown
from vitsweep.settings import ReportSettings

pytestmark = pytest.mark.usefixtures("no_plots")  # figures: tests of their own

END_EPOCH = RunRecord.end_epoch
SMALL = [*TINY, "model.dim=32", "trainer.epochs=1", "trainer.progress=false"]


def _one_error_line(result, *needles: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def _table(tmp_path: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(tmp_path / "results" / name / "comparison.csv")


def _headers(markdown: str) -> list[list[str]]:
    lines = markdown.splitlines()
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for i, line in enumerate(lines)
        if line.startswith("| ") and (i == 0 or not lines[i - 1].startswith("|"))
    ]


# 1. Rows are configurations; seeds are what a row aggregates, even when nothing else varies.


def test_a_seed_only_sweep_is_one_row_with_its_interval(cli, tmp_path):
    result = cli("-m", "seed=0,1,2", *SMALL, "sweep_name=seeds")
    assert result.returncode == 0, result.stderr
    table = _table(tmp_path, "seeds")
    assert len(table) == 1 and table["n"][0] == 3
    assert table["best_top1_low"][0] < table["best_top1"][0] < table["best_top1_high"][0]
    assert table["baseline"][0]
    headline = (tmp_path / "results" / "seeds" / "comparison.md").read_text().split("\n\n")[2]
    assert "n=1" not in headline and "| 3 " in headline


# 2. Histories with gaps (eval_interval) or damage still give the table and every plot.


@pytest.mark.plots
def test_a_sweep_with_eval_interval_writes_its_table_and_plots(cli, tmp_path):
    result = cli(
        "-m",
        "attention=softmax,linear",
        *TINY,
        "model.dim=32",
        "trainer.epochs=3",
        "trainer.eval_interval=2",
        "sweep_name=gaps",
    )
    assert result.returncode == 0, result.stderr
    out = tmp_path / "results" / "gaps"
    assert {p.name for p in out.iterdir()} >= {"comparison.md", "accuracy.png", "pareto.png"}
    assert list(_table(tmp_path, "gaps")["status"]) == ["completed", "completed"]


@pytest.mark.plots
def test_a_truncated_history_is_a_note_and_the_table_is_built(tmp_path, monkeypatch, capsys):
    from report import main as report_main

    sweep = tmp_path / "multirun" / "s"
    for i, (attention, acc) in enumerate([("softmax", 0.7), ("linear", 0.6)]):
        config = {"seed": 0, "choices": {"attention": attention}, "sweep_name": "s"}
        config["overrides"] = [f"attention={attention}"]
        summary = {"status": "completed", "best_test_acc": acc}
        job = write_job(sweep / str(i), config, summary)
        pd.DataFrame({"epoch": [1, 2, 3], "test_acc": [acc] * 3, "train_s": [1.0] * 3}).to_csv(
            job / "history.csv", index=False
        )
    (sweep / "1" / "history.csv").write_bytes(b"epoch,test_acc,tra")  # cut mid-header
    monkeypatch.chdir(tmp_path)
    assert report_main([str(sweep)]) == 0
    assert "1: history.csv cannot be read" in capsys.readouterr().err
    assert (tmp_path / "results" / "s" / "accuracy.png").exists()
    assert (
        "history.csv cannot be read" in (tmp_path / "results" / "s" / "comparison.md").read_text()
    )


# 3. Precision: decided by what the device is, kept on resume, shown where rows differ.


def _record(attention, seed, acc, precision="fp32", status="completed", run=None):
    config = {"seed": seed, "choices": {"attention": attention}}
    summary = {"status": status, "best_test_acc": acc, "precision": precision}
    return row_from_run(
        config,
        summary,
        [f"attention={attention}", f"seed={seed}"],
        run_id=run or f"{attention}-{seed}",
    )


def test_a_table_whose_rows_differ_in_precision_shows_it_and_says_so():
    runs = pd.DataFrame([_record("softmax", 0, 0.7, "bf16"), _record("linear", 0, 0.6)])
    table = comparison_table(runs)
    assert "precision" in _headers(to_markdown(table, ["attention"]))[0]
    assert any("different precisions (bf16, fp32)" in note for note in table.attrs["notes"])
    same = comparison_table(pd.DataFrame([_record("softmax", 0, 0.7), _record("linear", 0, 0.6)]))
    assert "precision" not in _headers(to_markdown(same, ["attention"]))[0]
    assert not [note for note in same.attrs["notes"] if "precision" in note]


def test_a_resumed_run_keeps_the_precision_it_trained_in(
    cli, tmp_path, monkeypatch, signal_after_epoch
):
    args = [*TINY, "trainer.epochs=2", "hydra.run.dir=run"]
    signal_after_epoch(1, signal.SIGTERM)
    assert cli(*args).returncode == 130
    summary_path = tmp_path / "run" / "summary.json"
    summary = json.loads(summary_path.read_text())
    assert summary["precision"] == "fp32" and summary["status"] == "interrupted"
    # As if its first epoch had run where auto meant bf16 (a GPU): the resume goes on in bf16.
    summary_path.write_text(json.dumps(summary | {"precision": "bf16"}))
    monkeypatch.setattr(RunRecord, "end_epoch", END_EPOCH)  # no more signals
    resumed = cli(*args, "trainer.resume=true")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(summary_path.read_text())
    assert summary["precision"] == "bf16" and summary["status"] == "completed"


# 4. A record that says completed has its numbers.


def test_a_lost_summary_is_rebuilt_on_resume_from_history_and_checkpoint(cli, finished_run):
    history = pd.read_csv(finished_run / "history.csv")
    (finished_run / "summary.json").unlink()
    result = cli(*QUICK, "hydra.run.dir=run", "trainer.resume=true")
    assert result.returncode == 0, result.stderr
    summary = json.loads((finished_run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_done"] == 2
    assert summary["best_test_acc"] == history["test_acc"].max()
    assert len(pd.read_csv(finished_run / "history.csv")) == 2


def test_completed_is_never_written_without_the_numbers(tmp_path):
    record = RunRecord.claim(tmp_path, {}, resume=False)
    try:
        with pytest.raises(RuntimeError, match="not marked completed"):
            record.complete(epochs=2)
        assert json.loads((tmp_path / "summary.json").read_text())["status"] == "running"
    finally:
        record.release()


def test_a_completed_run_without_numbers_is_a_note_not_a_silent_gap():
    runs = pd.DataFrame([_record("softmax", 0, 0.7), _record("softmax", 1, None)])
    table = comparison_table(runs)
    assert table["n"][0] == 1
    assert any(
        "softmax-1 says completed but holds no test accuracy" in note
        for note in table.attrs["notes"]
    )


def test_a_row_with_a_repeated_seed_says_so_and_is_compared_unpaired():
    runs = pd.DataFrame(
        [
            _record("softmax", 0, 0.7),
            _record("softmax", 0, 0.8, run="again"),
            _record("linear", 0, 0.6),
            _record("linear", 1, 0.65),
        ]
    )
    table = comparison_table(runs)
    assert list(table["n"]) == [2, 2] and table["test"][1] == "Welch"
    assert any("repeated seed" in note for note in table.attrs["notes"])


def test_a_record_still_running_with_no_live_process_is_stopped_in_the_table(tmp_path):
    summary = {"status": "running", "epochs_done": 1}
    job = write_job(tmp_path / "s" / "0", {"seed": 0, "overrides": []}, summary)
    runs, _ = load_sweep(tmp_path / "s")
    assert list(runs["status"]) == ["stopped"] and "no process holds it" in runs["error"][0]
    record = RunRecord(job, {})
    record.lock.acquire()  # a live run holds it: still running
    try:
        assert list(load_sweep(tmp_path / "s")[0]["status"]) == ["running"]
    finally:
        record.release()


# 7. Headings say the confidence the intervals have.


def test_the_headings_follow_report_confidence():
    runs = pd.DataFrame(
        [
            _record(a, s, 0.6 + 0.01 * s + (a == "softmax") * 0.1)
            for a in ("softmax", "linear")
            for s in range(3)
        ]
    )
    header = _headers(
        to_markdown(comparison_table(runs, ReportSettings(confidence=0.9)), ["attention"])
    )[0]
    assert "90% CI" in header and "Δ best top-1 vs baseline [90% CI]" in header
    assert not any("95%" in h for h in header)
    header = _headers(
        to_markdown(comparison_table(runs, ReportSettings(confidence=0.975)), ["attention"])
    )[0]
    assert "97.5% CI" in header


# 8. A baseline that names no row of the grid is refused before any job trains.


@pytest.mark.parametrize("baseline", ["performer", "3", "'softmax linear'"])
def test_a_baseline_naming_no_row_of_the_grid_is_refused_before_any_job(cli, tmp_path, baseline):
    result = cli(
        "-m", "attention=softmax,linear", *SMALL, "sweep_name=b", f"report.baseline={baseline}"
    )
    assert result.returncode == 2
    _one_error_line(result, "report.baseline=")
    assert not list((tmp_path / "multirun").rglob("history.csv"))


def test_a_baseline_of_the_grid_is_accepted(cli, tmp_path):
    result = cli(
        "-m",
        "attention=softmax,linear",
        *SMALL,
        "sweep_name=b",
        "trainer.epochs=0",
        "report.baseline=linear",
    )
    assert result.returncode == 0, result.stderr
    assert list(_table(tmp_path, "b")["baseline"]) == [False, True]


# 9. A full disk: one line naming the file, nothing half-written, the last whole epoch kept.


@pytest.fixture
def disk_full_at_checkpoint(monkeypatch):
    """From the ``n``-th checkpoint on (or, ``once``, at that one only), the disk is full: the
    checkpoint's write fails half way, and with ``everything`` so does every later write of
    the record's text files."""
    import vitsweep.checkpoint
    import vitsweep.files

    real_save, real_write_text = torch.save, Path.write_text

    def arm(n: int, everything: bool = False, once: bool = False) -> None:
        saves, full = [0], [False]

        def save(state, path):
            saves[0] += 1
            if saves[0] == n or (saves[0] > n and not once):
                Path(path).write_bytes(b"half a checkpoint")
                full[0] = True
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_save(state, path)

        def write_text(self, *args, **kwargs):
            if full[0] and everything:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write_text(self, *args, **kwargs)

        monkeypatch.setattr(vitsweep.checkpoint.torch, "save", save)
        monkeypatch.setattr(vitsweep.files.Path, "write_text", write_text)

    return arm


def _epochs_everywhere(run: Path) -> tuple[int, int, int]:
    history = len(pd.read_csv(run / "history.csv"))
    summary = json.loads((run / "summary.json").read_text()).get("epochs_done")
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)["epoch"]
    return history, summary, checkpoint


@pytest.mark.parametrize("everything", [False, True], ids=["checkpoint", "every-write"])
def test_a_full_disk_is_one_line_and_resume_carries_on_from_the_last_whole_epoch(
    cli, tmp_path, monkeypatch, disk_full_at_checkpoint, everything
):
    args = [*TINY, "trainer.epochs=3", "hydra.run.dir=run"]
    disk_full_at_checkpoint(2, everything)
    result = cli(*args)
    assert result.returncode == 1
    _one_error_line(result, "run/checkpoint.pt", "No space left on device", "up to epoch 1")
    run = tmp_path / "run"
    assert not list(run.glob(".*.tmp"))
    assert _epochs_everywhere(run) == (1, 1, 1)
    status = json.loads((run / "summary.json").read_text())["status"]
    assert status == ("running" if everything else "failed")  # the status could not be written

    monkeypatch.undo()  # room again
    resumed = cli(*args, "trainer.resume=true")
    assert resumed.returncode == 0, resumed.stderr
    assert _epochs_everywhere(run) == (3, 3, 3)


def test_a_full_disk_in_one_job_is_a_failed_row_and_the_sweep_goes_on(
    cli, tmp_path, disk_full_at_checkpoint
):
    disk_full_at_checkpoint(1, once=True)  # job 0's first checkpoint; job 1 has room again
    result = cli("-m", "attention=softmax,linear", *SMALL, "sweep_name=full")
    assert result.returncode == 1  # something did not complete
    assert "Traceback" not in result.stdout + result.stderr
    assert "error: cannot write" in result.stderr and "No space left" in result.stderr
    assert list(_table(tmp_path, "full")["status"]) == ["failed", "completed"]


# 10. A sweep's name is one folder name: nothing is written outside results/ or multirun/.


@pytest.mark.parametrize("name", ["../escaped", "/tmp/escaped", "a/b", ".."])
def test_a_sweep_name_that_is_a_path_is_refused(cli, tmp_path, name):
    result = cli(
        "-m",
        "attention=softmax,linear",
        *SMALL,
        f"sweep_name='{name}'",
        "hydra.sweep.dir=multirun/x",
    )
    assert result.returncode == 2
    _one_error_line(result, "sweep_name=", "a single folder name")


def test_report_refuses_a_record_whose_name_leaves_results(tmp_path, monkeypatch, capsys):
    from report import main as report_main

    sweep = tmp_path / "multirun" / "s"
    write_job(sweep / "0", {"seed": 0, "overrides": []}, {"status": "completed"})
    (sweep / "sweep.yaml").write_text(yaml.safe_dump({"name": "../../outside"}))
    monkeypatch.chdir(tmp_path)
    assert report_main([str(sweep)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: sweep_name='../../outside'") and err.count("\n") == 1
    assert not (tmp_path.parent / "outside").exists() and not (tmp_path / "results").exists()
    with pytest.raises(ConfigError):
        from vitsweep.settings import check_sweep_name

        check_sweep_name("/abs")


# 11. Resuming a sweep: only what changes the runs makes it another sweep.


def test_a_sweep_resumed_with_other_report_and_progress_settings_is_the_same_sweep(cli, tmp_path):
    grid = ["-m", "attention=softmax,linear", *SMALL, "sweep_name=r"]
    assert cli(*grid).returncode == 0
    again = cli(
        *grid,
        "trainer.resume=true",
        "report.confidence=0.9",
        "trainer.progress=true",
        "report.baseline=2",
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("skipped") == 2
    assert "90% CI" in (tmp_path / "results" / "r" / "comparison.md").read_text()


def test_a_sweep_resumed_with_another_grid_names_what_differs(cli, tmp_path):
    assert cli("-m", "attention=softmax,linear", *SMALL, "sweep_name=r").returncode == 0
    other = cli(
        "-m",
        "attention=softmax,linear",
        *SMALL,
        "sweep_name=r",
        "model.dim=64",
        "trainer.resume=true",
    )
    assert other.returncode == 2
    _one_error_line(other, "holds another sweep", "this one is with model.dim=64")


def test_a_read_only_sweep_directory_is_one_line_before_any_job(cli, tmp_path, monkeypatch):
    grid = ["-m", "attention=softmax,linear", *SMALL, "sweep_name=ro", "trainer.resume=true"]
    assert cli(*grid[:-1]).returncode == 0
    import vitsweep.sweep

    def refused(*args, **kwargs):  # as root, chmod cannot take write access away: say it
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(vitsweep.sweep.tempfile, "TemporaryFile", refused)
    result = cli(*grid)
    assert result.returncode == 2
    _one_error_line(result, "cannot write the sweep directory", "Permission denied")


def test_a_run_directory_that_cannot_be_locked_is_one_line(tmp_path, monkeypatch):
    import builtins

    real_open = builtins.open

    def refusing_open(path, *args, **kwargs):
        if str(path).endswith("run.lock"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    with pytest.raises(ConfigError, match="cannot write the run directory .*Permission denied"):
        RunRecord.claim(tmp_path / "run", {}, resume=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.slow  # about 20 s: two joblib workers in processes of their own, then a kill -9
def test_killing_a_joblib_sweeps_main_process_stops_its_workers(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = [
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "attention=softmax,linear",
        *TINY,
        "data.subset=256",
        "model.dim=32",
        "trainer.epochs=200",
        "sweep_name=j",
    ]
    main = spawn(sweep, tmp_path, start_new_session=True)
    jobs = [tmp_path / "multirun" / "j" / str(i) for i in (0, 1)]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all((j / "history.csv").exists() for j in jobs):
        assert main.poll() is None, main.communicate()
        time.sleep(0.2)
    workers = [int((j / "run.lock").read_text().strip()) for j in jobs]
    assert main.pid not in workers  # the jobs run in worker processes
    main.kill()
    main.communicate()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(map(_alive, workers)):
        time.sleep(0.2)
    assert not any(map(_alive, workers)), "a worker trained on after its sweep was killed"
    for job in jobs:
        assert json.loads((job / "summary.json").read_text())["status"] == "interrupted"


# More cases in the same spirit (found by trying the harness as a user would).


def test_a_sweep_named_wandb_still_gets_its_table(cli, tmp_path):
    result = cli("-m", "attention=softmax,linear", *SMALL, "trainer.epochs=0", "sweep_name=wandb")
    assert result.returncode == 0, result.stderr
    assert len(_table(tmp_path, "wandb")) == 2


def test_report_on_a_folder_of_sweeps_is_one_line(cli, tmp_path, monkeypatch, capsys):
    from report import main as report_main

    assert (
        cli("-m", "attention=softmax,linear", *SMALL, "trainer.epochs=0", "sweep_name=a").returncode
        == 0
    )
    monkeypatch.chdir(tmp_path)
    assert report_main(["multirun"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: multirun holds sweeps, not jobs") and "(a)" in err


def test_one_sweep_name_in_two_sweep_directories_is_refused_before_any_job(cli, tmp_path):
    grid = ["-m", "attention=softmax,linear", *SMALL, "trainer.epochs=0", "sweep_name=A"]
    assert cli(*grid).returncode == 0
    before = (tmp_path / "results" / "A" / "comparison.md").read_bytes()
    other = cli(*grid, "hydra.sweep.dir=elsewhere")
    assert other.returncode == 2
    _one_error_line(other, "results/A holds the table of another sweep (multirun/A)")
    assert (tmp_path / "results" / "A" / "comparison.md").read_bytes() == before
    assert not (tmp_path / "elsewhere").exists()


def test_a_number_that_is_both_a_row_and_a_value_is_refused_and_hash_means_row():
    from vitsweep.report import pick_baseline

    labels = ["model.depth=2", "model.depth=1"]
    with pytest.raises(ConfigError, match="both a row number and model.depth=1.*'#1'"):
        pick_baseline(labels, 1)
    assert pick_baseline(labels, "#1") == 0 and pick_baseline(labels, "model.depth=1") == 1
    assert pick_baseline(["attention=softmax", "attention=linear"], 2) == 1


def test_a_grid_that_repeats_a_job_is_refused_before_any_job(cli, tmp_path):
    result = cli("-m", "optim.lr=1e-3,1e-3", *SMALL, "sweep_name=dup")
    assert result.returncode == 2
    _one_error_line(result, "lists the job", "twice")
    assert not (tmp_path / "multirun" / "dup").exists()


def test_weights_that_explode_without_a_nan_training_loss_are_diverged(cli, tmp_path):
    result = cli(*SMALL, "optim=sgd", "optim.lr=1e6", "hydra.run.dir=run")
    assert result.returncode == 1
    assert result.stderr.strip().startswith("diverged: non-finite test loss at step")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "diverged"


@pytest.mark.parametrize("value", ["no", "off", "'false'", "maybe"])
def test_dry_run_takes_true_or_false_only(cli, tmp_path, value):
    for multirun in ([], ["-m"]):
        result = cli(*multirun, *SMALL, f"dry_run={value}", "sweep_name=dry")
        assert result.returncode == 2
        _one_error_line(result, "dry_run=", "expected true or false")


def test_only_the_folders_right_under_a_sweep_are_its_jobs(tmp_path):
    sweep = tmp_path / "s"
    for job in ("0", "10", "2", "extra"):
        write_job(sweep / job, {"seed": 0, "overrides": []}, {"status": "completed"})
    stray = sweep / "outputs" / "2026-12-01" / "10-00-00"  # an older run below the sweep
    stray.mkdir(parents=True)
    (stray / "summary.json").write_text(json.dumps({"status": "completed"}))
    runs, _ = load_sweep(sweep)
    assert list(runs["run"]) == ["0", "2", "10", "extra"]


def test_a_difference_with_no_spread_has_no_p_value():
    from vitsweep.stats import compare

    found = compare({0: 50.0, 1: 60.0}, {0: 51.5, 1: 61.5})
    assert found.diff == pytest.approx(1.5) and found.low == found.high == found.diff
    assert found.p != found.p  # nan: no test is possible, and nothing is marked significant
    runs = pd.DataFrame(
        [
            _record("softmax", 0, 0.50),
            _record("softmax", 1, 0.60),
            _record("linear", 0, 0.515),
            _record("linear", 1, 0.615),
        ]
    )
    markdown = to_markdown(comparison_table(runs), ["attention"])
    assert "(paired: no spread)" in markdown and "*" not in markdown


def test_jobs_of_the_grid_without_a_record_and_why_jobs_failed_are_notes(cli, tmp_path):
    from report import main as report_main

    result = cli("-m", "model.dim=32,30", *TINY, "trainer.epochs=1", "sweep_name=n")
    assert result.returncode == 1
    notes = (tmp_path / "results" / "n" / "comparison.md").read_text()
    assert "1 (failed): model.dim=30 is not divisible by model.heads=8" in notes
    import shutil

    shutil.rmtree(tmp_path / "multirun" / "n" / "1")
    assert report_main([str(tmp_path / "multirun" / "n"), "--results", str(tmp_path / "r")]) == 0
    notes = (tmp_path / "r" / "n" / "comparison.md").read_text()
    assert "1 of the grid's 2 jobs have no record" in notes
