"""Tables you can re-run and see inside: the manifest, reproductions and their verdicts, the
refusals, per-class numbers and confusion matrices, and the plots."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.helpers import ROOT, TINY, invoke
from vitsweep.errors import ConfigError
from vitsweep.record import per_class_top1
from vitsweep.report import comparison_table, row_from_run
from vitsweep.report.reproduce import reproduce
from vitsweep.settings import TrainerSettings
from vitsweep.train import evaluate

SWEEP = [
    "-m",
    "attention=softmax,linear",
    "seed=0,1",
    *TINY,
    "model.dim=32",
    "trainer.epochs=1",
    "trainer.progress=false",
    "sweep_name=s",
]


@pytest.fixture(scope="module")
def swept_once(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("swept")
    result = invoke(SWEEP, where)
    assert result.returncode == 0, result.stderr
    return where


@pytest.fixture
def swept(swept_once, tmp_path, monkeypatch) -> Path:
    """A finished 2-row, 2-seed sweep (multirun/s, results/s), copied into the test's own
    directory, which is also the working one."""
    for part in ("multirun", "results"):
        shutil.copytree(swept_once / part, tmp_path / part)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _manifest(where: Path, name: str = "s") -> dict:
    return json.loads((where / "results" / name / "manifest.json").read_text())


def test_the_manifest_says_what_made_each_row(swept):
    found = _manifest(swept)
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert found["harness"]["commit"] == head and isinstance(found["harness"]["dirty"], bool)
    assert found["versions"]["torch"] == [torch.__version__] and found["versions"]["python"]
    assert len(found["device"]) == 1 and found["device"][0].startswith("CPU (")
    assert len(found["data"]) == 1 and len(found["data"][0]) == 16
    assert [r["label"] for r in found["rows"]] == ["attention=softmax", "attention=linear"]
    for row, attention in zip(found["rows"], ("softmax", "linear")):
        assert f"attention={attention}" in row["overrides"]
        assert not any(o.startswith("seed=") for o in row["overrides"])
        assert row["seeds"] == [0, 1] and len(row["runs"]) == 2 and row["n"] == 2
        for run in row["runs"]:
            summary = json.loads((swept / "multirun" / "s" / run / "summary.json").read_text())
            assert row["best_top1"][str(_seed_of(swept, run))] == 100 * summary["best_test_acc"]


def _seed_of(where: Path, run: str) -> int:
    import yaml

    return yaml.safe_load((where / "multirun" / "s" / run / "config.yaml").read_text())["seed"]


def test_a_reproduction_on_the_same_commit_device_and_data_is_identical(swept):
    out = reproduce(Path("results/s"))
    text = (out / "reproduction.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "row" not in line]
    assert len(rows) == 2 and all(row.rstrip(" |").endswith("identical") for row in rows)
    assert (out / "comparison.md").exists() and out.name == "s-reproduced"
    again = _manifest(swept, "s-reproduced")
    assert again["rows"][0]["best_top1"] == _manifest(swept)["rows"][0]["best_top1"]


def test_a_reproduction_that_differs_says_inside_or_outside(swept):
    path = swept / "results" / "s" / "manifest.json"
    found = json.loads(path.read_text())
    first, second = found["rows"]
    # An edited record: row 1's numbers moved 30 points up, its interval with them (outside);
    # row 2's seeds nudged, its interval wide enough to hold the truth (inside).
    first["best_top1"] = {s: v + 30 for s, v in first["best_top1"].items()}
    first |= {"mean": first["mean"] + 30, "low": first["mean"] + 29, "high": first["mean"] + 31}
    second["best_top1"] = {s: v + 0.5 for s, v in second["best_top1"].items()}
    second |= {"low": second["mean"] - 50, "high": second["mean"] + 50}
    found["versions"]["torch"] = ["1.0"]
    path.write_text(json.dumps(found))
    text = (reproduce(Path("results/s"), seeds=[0]) / "reproduction.md").read_text()
    verdicts = [
        line.rstrip(" |").split("|")[-1].strip()
        for line in text.splitlines()
        if line.startswith("| ") and "row" not in line
    ]
    assert verdicts == ["outside", "inside"]
    assert "torch (['1.0'] →" in text


def test_a_reproduction_of_one_row_and_seed(swept):
    out = reproduce(Path("results/s"), rows=[2], seeds=[1])
    runs = list((swept / "multirun" / "s-reproduced").glob("*/summary.json"))
    assert len(runs) == 1
    assert "| 2 " in (out / "reproduction.md").read_text()


def test_a_commit_not_in_the_repository_is_refused_before_anything_trains(swept):
    path = swept / "results" / "s" / "manifest.json"
    found = json.loads(path.read_text())
    found["harness"]["commit"] = "0" * 40
    path.write_text(json.dumps(found))
    with pytest.raises(ConfigError, match="is not in this repository"):
        reproduce(Path("results/s"))
    assert not (swept / "multirun" / "s-reproduced").exists()


def test_data_that_no_longer_match_are_refused_before_anything_trains(swept, capsys):
    from report import main as report_main

    path = swept / "results" / "s" / "manifest.json"
    found = json.loads(path.read_text())
    found["rows"][1]["data_fingerprint"] = ["0123456789abcdef"]
    path.write_text(json.dumps(found))
    assert report_main(["--reproduce", "results/s"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: row 2: its data's fingerprint") and err.count("\n") == 1
    assert not (swept / "multirun" / "s-reproduced").exists()


def test_a_folder_without_a_manifest_is_one_line(tmp_path, capsys, monkeypatch):
    from report import main as report_main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "results" / "old").mkdir(parents=True)
    assert report_main(["--reproduce", "results/old"]) == 2
    assert "manifest.json cannot be read" in capsys.readouterr().err


# Inside a row: per-class top-1 and confusion matrices.


def test_per_class_top1_and_the_confusion_matrix_match_a_count_by_hand():
    torch.manual_seed(0)
    images, labels = torch.randn(50, 4), torch.randint(0, 3, (50,))
    model = torch.nn.Linear(4, 3)
    result = evaluate(model, [(images, labels)], TrainerSettings(progress=False), num_classes=3)
    predicted = model(images).argmax(1)
    by_hand = [[0] * 3 for _ in range(3)]
    for true, guess in zip(labels.tolist(), predicted.tolist()):
        by_hand[true][guess] += 1
    assert result["confusion"] == by_hand
    per_class = per_class_top1(by_hand, ["a", "b", "c"])
    for i, name in enumerate("abc"):
        members = labels == i
        assert per_class[name] == pytest.approx((predicted[members] == i).float().mean().item())
    assert sum(map(sum, by_hand)) == 50
    assert result["test_acc"] == pytest.approx(np.trace(np.array(by_hand)) / 50)


def test_every_run_records_its_classes_per_class_top1_and_confusion(swept):
    summary = json.loads((swept / "multirun" / "s" / "0" / "summary.json").read_text())
    assert summary["classes"] == [str(i) for i in range(10)]
    matrix = np.array(summary["confusion"])
    assert matrix.shape == (10, 10) and matrix.sum() == summary["test_images"]
    assert np.trace(matrix) / matrix.sum() == pytest.approx(summary["best_test_acc"])
    history = pd.read_csv(swept / "multirun" / "s" / "0" / "history.csv")
    assert "confusion" not in history.columns  # kept in the summary and the checkpoint


def _run(attention, seed, per_class, status="completed"):
    accuracy = sum(per_class.values()) / len(per_class)
    summary = {
        "status": status,
        "best_test_acc": accuracy,
        "per_class_top1": per_class,
        "classes": list(per_class),
        "confusion": [[1, 0], [0, 1]],
    }
    return row_from_run(
        {"seed": seed}, summary, [f"attention={attention}", f"seed={seed}"], f"{attention}-{seed}"
    )


def test_the_worst_class_is_named_with_its_mean_over_seeds():
    runs = pd.DataFrame(
        [
            _run("softmax", 0, {"cat": 0.4, "dog": 0.9}),
            _run("softmax", 1, {"cat": 0.6, "dog": 0.3}),
            _run("linear", 0, {"cat": 0.8, "dog": 0.7}),
        ]
    )
    table = comparison_table(runs)
    assert list(table["worst_class"]) == ["cat 50.00", "dog 70.00"]  # softmax: cat 50 < dog 60


def test_the_per_class_table_and_the_plots(swept, monkeypatch):
    import vitsweep.report.plots as plots
    from report import main as report_main

    figures = {}

    def keep(fig, path):
        figures[Path(path).name] = [
            (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes
        ]
        path.write_bytes(b"png")

    monkeypatch.setattr(plots, "save_figure", keep)
    assert report_main(["multirun/s", "--name", "again"]) == 0
    text = (swept / "results" / "again" / "comparison.md").read_text()
    assert "Top-1 % per class" in text and "| softmax " in text.split("Top-1 % per class")[1]
    assert "worst class (top-1 %)" in text
    table = pd.read_csv(swept / "results" / "again" / "comparison.csv")
    best = table["label"][table["best_top1"].idxmax()].split("=")[1]
    panels = [axes for axes in figures["confusion.png"] if axes[1] == "predicted class"]
    expected = ["baseline: softmax"] + ([f"best: {best}"] if best != "softmax" else [])
    assert [title for title, _, _ in panels] == expected
    assert all(ylabel == "true class" for _, _, ylabel in panels)
    assert "data_efficiency.png" not in figures  # the sweep does not vary data.subset


def test_a_data_efficiency_sweep_is_drawn(cli, tmp_path, monkeypatch):
    import vitsweep.report.plots as plots

    figures = {}

    def keep(fig, path):
        figures[Path(path).name] = [
            (
                ax.get_xlabel(),
                ax.get_ylabel(),
                [t.get_text() for t in ax.get_legend().get_texts()] if ax.get_legend() else [],
            )
            for ax in fig.axes
        ]
        path.write_bytes(b"png")

    monkeypatch.setattr(plots, "save_figure", keep)
    result = cli(
        "-m",
        "attention=softmax,linear",
        "data.subset=32,64",
        *TINY,
        "model.dim=32",
        "trainer.epochs=1",
        "trainer.progress=false",
        "sweep_name=eff",
    )
    assert result.returncode == 0, result.stderr
    xlabel, ylabel, legend = figures["data_efficiency.png"][0]
    assert (xlabel, ylabel) == ("training images", "best test top-1 (%)")
    assert legend == ["softmax", "linear"]
