"""A stop described once: each way a run stops maps to one status, one line and one exit code
(``vitsweep.errors``), and whether a run directory is started, carried on or left alone is a
pure decision (``vitsweep.record.resume``)."""

from pathlib import Path

import pytest

from vitsweep.errors import (
    INTERRUPTED,
    ConfigError,
    Diverged,
    Listed,
    Pruned,
    ReportError,
    Unfinished,
    WriteError,
    end_with,
    stop_of,
)
from vitsweep.record.resume import Earlier, decide_resume

WHERE = Path("runs/one")


@pytest.mark.parametrize(
    ("err", "status", "record", "line", "code"),
    [
        (ConfigError("data.root is required"), "failed", {"error": "data.root is required"},
         "error: data.root is required", 2),
        (Diverged(7), "diverged", {"error": "non-finite loss at step 7", "diverged_step": 7},
         "diverged: non-finite loss at step 7", 1),
        (Pruned(3), "pruned", {"pruned_epoch": 3}, None, None),
        (WriteError(WHERE / "summary.json", OSError(28, "No space left on device")), "failed",
         {"error": "cannot write runs/one/summary.json: No space left on device"},
         "error: cannot write runs/one/summary.json: No space left on device (recorded up to "
         "epoch 4; make room, then rerun with trainer.resume=true: it carries on from the last "
         "whole checkpoint)", 1),
        (KeyboardInterrupt("SIGTERM"), "interrupted", {"error": "interrupted (SIGTERM)"},
         "interrupted: the last finished epoch is saved in runs/one; rerun the same command "
         "with trainer.resume=true to carry on", INTERRUPTED),
        (ReportError("the table could not be built"), "failed",
         {"error": "the table could not be built"}, "error: the table could not be built", 1),
        (Unfinished("2 jobs did not finish"), "unfinished", {"error": "2 jobs did not finish"},
         None, 1),
        (Listed(0), "listed", {"error": "0 jobs would fail"}, None, 0),
        (Listed(3), "listed", {"error": "3 jobs would fail"}, None, 2),
    ],
    ids=["config", "diverged", "pruned", "write", "interrupt", "report", "unfinished",
         "listed", "listed-failing"],
)  # fmt: skip
def test_each_stop_has_one_status_line_and_exit_code(err, status, record, line, code):
    stop = stop_of(err, where=WHERE, epochs=4)
    assert (stop.status, stop.record, stop.line, stop.exit_code) == (status, record, line, code)


def test_a_stop_wrapped_by_a_library_is_still_that_stop():
    try:
        try:
            raise ConfigError("model.dim=0: expected a positive integer")
        except ConfigError as inner:
            raise RuntimeError("Error in call to target 'VisionTransformer'") from inner
    except RuntimeError as wrapped:
        assert stop_of(wrapped).line == "error: model.dim=0: expected a positive integer"


def test_a_bug_is_a_traceback_in_a_run_and_a_logged_failure_in_a_sweep(caplog):
    bug = ZeroDivisionError("division by zero")
    assert stop_of(bug).record == {"error": "ZeroDivisionError: division by zero"}
    with pytest.raises(ZeroDivisionError):
        end_with(bug, multirun=False)
    end_with(bug, multirun=True)  # the sweep goes on
    assert "job failed; the sweep goes on" in caplog.text


def test_a_sweeps_job_goes_on_after_bad_input_but_an_interrupt_stops_the_sweep(capsys):
    end_with(ConfigError("optim.lr=0: expected a positive number"), multirun=True)
    assert capsys.readouterr().err == "error: optim.lr=0: expected a positive number\n"
    with pytest.raises(SystemExit) as stopped:
        end_with(KeyboardInterrupt(), multirun=True, where=WHERE)
    assert stopped.value.code == INTERRUPTED
    with pytest.raises(SystemExit) as stopped:
        end_with(ConfigError("bad"), multirun=False)
    assert stopped.value.code == 2


def earlier(status: str | None, epochs: int = 0, checkpoint: bool = False) -> Earlier:
    return Earlier({"seed": 0, "trainer": {"epochs": 3}}, {"status": status}, epochs, checkpoint)


SAME = {"seed": 0, "trainer": {"epochs": 3, "progress": False}}  # progress may differ


@pytest.mark.parametrize(
    ("found", "resume", "action"),
    [
        (None, False, "start"),
        (earlier("failed"), False, "start"),  # never trained: nothing to keep
        (earlier("running"), True, "start"),
        (earlier("completed", 3, True), True, "leave"),
        (earlier("sized"), True, "leave"),
        (earlier("interrupted", 2, True), True, "carry_on"),
        (earlier("interrupted"), True, "carry_on"),  # its summary kept, nothing to restore
    ],
)
def test_resuming_is_a_pure_decision(found, resume, action):
    assert decide_resume(WHERE, found, SAME, resume) == action


@pytest.mark.parametrize(
    ("found", "config", "message"),
    [
        (earlier("interrupted", 2, True), SAME | {"seed": 1}, "without resume"),
        (earlier("interrupted", 2, True), SAME | {"seed": 1}, "another config (seed (0 -> 1))"),
        (earlier("interrupted", 2), SAME, "no checkpoint.pt to resume from"),
    ],
)
def test_a_directory_that_cannot_be_resumed_is_one_line(found, config, message):
    resume = message != "without resume"
    expected = "add trainer.resume=true" if not resume else message
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        decide_resume(WHERE, found, config, resume)


def test_a_run_recorded_before_its_data_loader_moved_can_still_be_resumed():
    source = {"_target_": "vitsweep.datasets.load_digits", "image_size": 32}
    moved = {"_target_": "vitsweep.data.sets.load_digits", "image_size": 32}
    found = Earlier({"seed": 0, "data": {"source": source}}, {"status": "interrupted"}, 2, True)
    assert decide_resume(WHERE, found, {"seed": 0, "data": {"source": moved}}, True) == "carry_on"
