"""Damaged records, data that cannot be learned from honestly, and tables that would leave
things out: damage to one record changes only its row and is said; nothing is dropped from a
table without a word; what cannot succeed is refused before anything trains."""

import errno
import json
import logging
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import TINY, write_job
from vitsweep.record import RunRecord
from vitsweep.report import comparison_table, load_sweep, row_from_run
from vitsweep.report.render import per_class_text

pytestmark = pytest.mark.usefixtures("no_plots")  # figures: tests of their own

SMALL = [*TINY, "model.dim=32", "trainer.epochs=1", "trainer.progress=false"]


def test_a_number_damaged_in_one_record_changes_only_its_row_and_says_so(cli, tmp_path):
    result = cli("-m", "attention=softmax,linear", "seed=0,1", *SMALL, "sweep_name=dmg")
    assert result.returncode == 0, result.stderr
    before = pd.read_csv(tmp_path / "results" / "dmg" / "comparison.csv")
    damaged = tmp_path / "multirun" / "dmg" / "0" / "summary.json"
    summary = json.loads(damaged.read_text())
    summary |= {"best_test_acc": "0.9 (about)", "confusion": [[1, 2], "three"]}
    damaged.write_text(json.dumps(summary))

    runs, _ = load_sweep(tmp_path / "multirun" / "dmg")
    assert list(runs["status"]) == ["unreadable", "completed", "completed", "completed"]
    assert "best_top1='0.9 (about)'" in runs["error"][0] and "confusion=" in runs["error"][0]
    table = comparison_table(runs)
    assert list(table["n"]) == [1, 2]  # the damaged run left its row only
    assert table["best_top1"][1] == before["best_top1"][1]  # the other row is untouched
    assert any("0 (unreadable)" in note for note in table.attrs["notes"])


def test_a_validation_split_that_would_take_every_image_of_a_class_is_refused(cli, tmp_path):
    result = cli(*SMALL, "data.subset=24", "data.val_fraction=0.7", "hydra.run.dir=run")
    assert result.returncode == 2
    line = result.stderr.strip()
    assert line.startswith("error: data.val_fraction=0.7 holds out every training image of")
    assert "class 2, 6" in line and "data.subset=24" in line and "Traceback" not in line


def _runs_with_classes(classes: list[str], per_class: dict) -> pd.DataFrame:
    summary = {"status": "completed", "best_test_acc": 0.5, "classes": classes}
    rows = [
        row_from_run(
            {"seed": seed, "choices": {"attention": "softmax"}},
            summary | {"per_class_top1": per_class},
            ["attention=softmax", f"seed={seed}"],
            str(seed),
        )
        for seed in (0, 1)
    ]
    return pd.DataFrame(rows)


def test_a_class_with_no_test_image_stays_in_the_per_class_table_and_is_named():
    runs = _runs_with_classes(["cat", "dog", "eel"], {"cat": 0.5, "dog": None, "eel": 1.0})
    table = comparison_table(runs)
    text = per_class_text(runs, table)
    header = next(line for line in text.splitlines() if line.startswith("| row"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["row", "cat", "dog", "eel"]
    assert "Classes with no test image, so no top-1: dog." in text


def test_more_classes_than_the_page_holds_are_in_per_class_csv_and_said(tmp_path):
    from vitsweep.report import write_report

    names = [f"c{i}" for i in range(25)]
    runs = _runs_with_classes(names, {name: 0.04 * i for i, name in enumerate(names)})
    write_report(runs, pd.DataFrame(), tmp_path, tmp_path)
    markdown = (tmp_path / "comparison.md").read_text()
    assert "25 classes, too many to show here; every row's are in per_class.csv" in markdown
    assert list(pd.read_csv(tmp_path / "per_class.csv").columns) == ["row", *names]


def test_a_results_folder_that_is_a_file_is_refused_before_any_job(cli, tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "taken").write_text("not a folder")
    result = cli("-m", "seed=0,1", *SMALL, "sweep_name=taken")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: results/taken is a file")
    assert not (tmp_path / "multirun" / "taken").exists()  # nothing trained


class FullDisk:
    """A log file whose every write, flush and close fails as on a full disk."""

    def write(self, text: str) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    flush = close = lambda self: FullDisk.write(self, "")


def test_a_run_log_on_a_full_disk_is_given_up_without_a_traceback(tmp_path: Path):
    record = RunRecord.claim(tmp_path, {}, resume=False)
    record.log_handler.stream.close()
    record.log_handler.stream = FullDisk()
    logging.getLogger("vitsweep.test").warning("a line that cannot be written")
    record.release()  # closing the log again must not raise
    assert record.log_handler is None and not (tmp_path / ".summary.json.tmp").exists()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("status", 5),
        ("best_test_acc", "0.9"),
        ("epochs_done", "two"),
        ("params", True),
        ("per_class_top1", [1, 2]),
        ("classes", {"a": 1}),
        ("confusion", [[1, 2], [3]]),
        ("device", ["cpu"]),
        ("data_fingerprint", 7),
    ],
)
def test_any_damaged_value_makes_its_run_unreadable_and_is_named(key, value):
    summary = {"status": "completed", "best_test_acc": 0.5, "params": 10, key: value}
    row = row_from_run({"seed": 0}, summary, ["seed=0"], "0")
    assert row["status"] == "unreadable"
    assert f"={value!r}" in row["error"]
    whole = row_from_run({"seed": 0}, {"status": "completed", "best_test_acc": 0.5}, [], "1")
    assert whole["status"] == "completed" and whole["error"] is None


def test_a_subset_that_leaves_classes_out_of_training_says_so(caplog):
    from vitsweep.config import compose_config
    from vitsweep.data import load_splits
    from vitsweep.settings import DataSettings

    data = DataSettings(**compose_config(["data=digits", "data.subset=5"]).data)
    with caplog.at_level(logging.WARNING):
        load_splits(data)
    assert "data.subset=5 keeps no training image of class 1, 2, 6" in caplog.text


def test_a_top1_outside_0_to_100_percent_is_damage_not_a_number():
    row = row_from_run({"seed": 0}, {"status": "completed", "best_test_acc": 1.7}, [], "0")
    assert row["status"] == "unreadable" and "best_top1=170.0" in row["error"]
    per_class = {"status": "completed", "best_test_acc": 0.5, "per_class_top1": {"a": 2.0}}
    assert row_from_run({"seed": 0}, per_class, [], "1")["status"] == "unreadable"


def _two_jobs(tmp_path: Path) -> Path:
    sweep = tmp_path / "s"
    for i, (attention, acc) in enumerate([("softmax", 0.5), ("linear", 0.6)]):
        config = {"seed": 0, "choices": {"attention": attention}}
        config["overrides"] = [f"attention={attention}"]
        summary = {"status": "completed", "best_test_acc": acc, "train_s_per_epoch": 1.25 + i}
        write_job(sweep / str(i), config, summary)
    return sweep


def test_a_job_without_its_config_is_unreadable_not_an_unnamed_row(tmp_path):
    sweep = _two_jobs(tmp_path)
    (sweep / "0" / "config.yaml").unlink()
    runs, _ = load_sweep(sweep)
    assert list(runs["status"]) == ["unreadable", "completed"]
    assert runs["error"][0] == "config.yaml is missing"


def test_a_copied_job_is_one_run_not_a_second_seed(tmp_path):
    sweep = _two_jobs(tmp_path)
    shutil.copytree(sweep / "0", sweep / "2")
    runs, _ = load_sweep(sweep)
    assert list(runs["run"]) == ["0", "1"]
    assert "2 is a copy of 0 (the same record): counted once" in runs.attrs["notes"]


def test_a_search_with_a_trial_record_gone_says_so(tmp_path):
    sweep = tmp_path / "s"
    for n in (0, 2):
        summary = {"status": "completed", "best_test_acc": n}
        write_job(sweep / f"trial_{n}", {"seed": 0, "overrides": []}, summary)
    runs, _ = load_sweep(sweep)
    assert "1 of the search's trials have no record here (trial_1)" in runs.attrs["notes"][0]
