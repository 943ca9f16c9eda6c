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


# A reproduction compares like with like and never overwrites an earlier one.


@pytest.fixture
def quick(swept, monkeypatch) -> Path:
    """``swept``, its reproductions' tables written without plots (the seconds are training)."""
    import vitsweep.report.pipeline as pipeline

    monkeypatch.setattr(pipeline, "draw", lambda *args: None)
    return swept


def _git_repo(where: Path) -> Path:
    """A small harness checkout: src/ and conf/ committed, *.pyc ignored."""
    (where / "src").mkdir(parents=True)
    (where / "conf" / "experiment").mkdir(parents=True)
    (where / "src" / "a.py").write_text("x = 1\n")
    (where / "conf" / "config.yaml").write_text("a: 1\n")
    (where / ".gitignore").write_text("*.pyc\n")
    git = ["git", "-C", str(where), "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "harness"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    return where


def _tree(where: Path) -> dict[str, bytes]:
    """Every file under the working directory's multirun/ and results/, with its bytes."""
    return {
        str(p.relative_to(where)): p.read_bytes()
        for part in ("multirun", "results")
        for p in sorted((where / part).rglob("*"))
        if p.is_file()
    }


def _verdicts(text: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip(" |").split("|")]
        for line in text.splitlines()
        if line.startswith("| ") and not line.startswith("| row")
    ]


def test_untracked_files_under_src_and_conf_are_part_of_the_harness_state(tmp_path):
    from vitsweep.sweep import harness_state

    repo = _git_repo(tmp_path / "repo")
    clean = harness_state(repo)
    assert clean["dirty"] is False and clean["diff_sha256"] is None and clean["untracked"] == []
    new = repo / "conf" / "experiment" / "mine.yaml"
    new.write_text("model:\n  dim: 32\n")
    added = harness_state(repo)
    assert added["dirty"] is True and added["untracked"] == ["conf/experiment/mine.yaml"]
    new.write_text("model:\n  dim: 48\n")
    edited = harness_state(repo)
    assert edited["dirty"] and edited["diff_sha256"] not in (None, added["diff_sha256"])
    (repo / "src" / "b.pyc").write_bytes(b"ignored")  # ignored, and outside src/ and conf/:
    (repo / "notes.txt").write_text("not the harness")  # neither changes the state
    assert harness_state(repo) == edited


def test_an_untracked_experiment_edited_since_the_sweep_is_a_harness_that_differs(
    quick, monkeypatch
):
    import vitsweep.report.reproduce as reproduce_module
    from vitsweep.sweep import harness_state

    repo = _git_repo(quick / "repo")
    experiment = repo / "conf" / "experiment" / "mine.yaml"
    experiment.write_text("model:\n  dim: 32\n")
    path = quick / "results" / "s" / "manifest.json"
    found = json.loads(path.read_text())
    found["harness"] = harness_state(repo)  # the sweep ran from the untracked file...
    path.write_text(json.dumps(found))
    experiment.write_text("model:\n  dim: 48\n")  # ...which was edited since
    monkeypatch.setattr(reproduce_module, "ROOT", repo)
    out = reproduce(Path("results/s"), rows=[1], seeds=[0])
    text = (out / "reproduction.md").read_text()
    said = text.split("What differs from the original sweep: ")[1].split("\n")[0]
    assert said.startswith("diff (") and "nothing" not in said
    assert _manifest(quick, "s-reproduced")["harness"]["untracked"] == ["conf/experiment/mine.yaml"]


def test_seeds_a_row_never_had_and_rows_or_seeds_given_twice_are_refused(quick, capsys):
    from report import main as report_main

    for args, said in (
        (["--seeds", "7"], "--seeds 7: row 1 (attention=softmax) has seeds 0, 1 only"),
        (["--rows", "1,1"], "--rows 1,1: 1 is given twice"),
        (["--rows", "2", "--seeds", "0,0"], "--seeds 0,0: 0 is given twice"),
    ):
        assert report_main(["--reproduce", "results/s", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {said}") and err.count("\n") == 1, err
    assert not (quick / "multirun" / "s-reproduced").exists()
    assert not (quick / "results" / "s-reproduced").exists()


def test_a_row_whose_runs_did_not_all_complete_is_refused(quick, capsys):
    from report import main as report_main
    from vitsweep.report.reproduce import plan, read_manifest

    run = _manifest(quick)["rows"][0]["runs"][_manifest(quick)["rows"][0]["seeds"].index(0)]
    summary = quick / "multirun" / "s" / run / "summary.json"
    summary.write_text(json.dumps(json.loads(summary.read_text()) | {"status": "pruned"}))
    assert report_main(["multirun/s", "--name", "p"]) == 0  # a search's table, say
    capsys.readouterr()
    row = _manifest(quick, "p")["rows"][0]
    assert row["status"] == {"0": "pruned", "1": "completed"} and row["epochs"] == {"0": 1, "1": 1}
    with pytest.raises(ConfigError, match=r"row 1 .*seed 0's original run ended pruned.*--seeds 1"):
        reproduce(Path("results/p"))
    assert plan(read_manifest(Path("results/p")), [1], [1], Path("results/p"))  # seed 1 did
    # A manifest written before it recorded each seed's end: its table's status decides.
    path = quick / "results" / "p" / "manifest.json"
    found = json.loads(path.read_text())
    for kept in found["rows"]:
        del kept["status"], kept["epochs"]
    path.write_text(json.dumps(found))
    with pytest.raises(ConfigError, match="comparison.csv says 1/2 completed, not completed"):
        reproduce(Path("results/p"), rows=[1], seeds=[1])
    assert plan(read_manifest(Path("results/p")), [2], None, Path("results/p"))
    assert not (quick / "multirun" / "p-reproduced").exists()


def test_a_verdict_compares_only_reruns_that_trained_the_epochs_their_original_did():
    from vitsweep.report.reproduce import judge

    row = {
        "best_top1": {"0": 50.0, "1": 60.0},
        "epochs": {"0": 3, "1": 3},
        "run_seeds": [0, 1],
        "n": 2,
        "low": 0.0,
        "high": 100.0,
    }
    assert judge(row, {"0": (50.0, 3), "1": (60.0, 3)}) == "identical"
    assert judge(row, {"0": (50.0, 1), "1": (60.0, 3)}).startswith(
        "not comparable: seed 0 trained 1 epochs, its original 3"
    )
    assert judge(row, {"0": (50.0, 3)}) == "inside (seeds 1 did not complete again)"
    assert judge(row, {}).startswith("no result")


def test_a_second_reproduction_is_refused_in_report_py_words_never_overwritten(quick, capsys):
    from report import main as report_main

    one = ["--reproduce", "results/s", "--rows", "2", "--seeds", "1"]
    assert report_main(one) == 0
    capsys.readouterr()
    before = _tree(quick)
    assert report_main(one) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--name NAME" in err and err.count("\n") == 1
    assert "trainer.resume" not in err and "sweep_name" not in err
    assert report_main([*one[:2], "--rows", "1", "--resume"]) == 2  # resumed with other rows
    assert "resume it with those --rows and --seeds" in capsys.readouterr().err
    shutil.move(quick / "multirun" / "s-reproduced", quick / "moved")
    assert report_main(one) == 2
    assert "results/s-reproduced holds an earlier reproduction" in capsys.readouterr().err
    assert report_main([*one, "--resume"]) == 2
    assert "holds no reproduction to finish" in capsys.readouterr().err
    after = _tree(quick)
    moved = {k.replace("multirun/s-reproduced", "moved"): v for k, v in before.items()}
    assert after == {k: v for k, v in moved.items() if not k.startswith("moved")}
    assert (quick / "results" / "s-reproduced" / "reproduction.md").read_bytes() == before[
        "results/s-reproduced/reproduction.md"
    ]
    assert report_main([*one, "--name", "s-again"]) == 0
    assert (quick / "results" / "s-again" / "reproduction.md").exists()


def test_a_row_that_no_longer_composes_or_builds_is_refused_before_anything_is_claimed(
    quick, capsys
):
    from report import main as report_main

    path = quick / "results" / "s" / "manifest.json"
    original = path.read_text()
    for edit, said in (
        (["attention=gone"], "error: row 2: its overrides no longer compose ("),
        (["attention=linear", "+model.bogus=1"], "error: row 2: it no longer builds here ("),
    ):
        found = json.loads(original)
        row = found["rows"][1]
        row["overrides"] = [o for o in row["overrides"] if o != "attention=linear"] + edit
        row["data_fingerprint"] = []  # no data check composes it first
        path.write_text(json.dumps(found))
        assert report_main(["--reproduce", "results/s"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(said) and err.count("\n") == 1, err
    assert not (quick / "multirun" / "s-reproduced").exists()
    assert not (quick / "results" / "s-reproduced").exists()


def test_a_manifest_with_a_field_missing_or_mistyped_is_one_line(quick, capsys):
    from report import main as report_main

    path = quick / "results" / "s" / "manifest.json"
    original = path.read_text()
    for edit, said in (
        (lambda row: row.pop("low"), "row 2 has no valid 'low' (missing)"),
        (lambda row: row.update(n="2"), "row 2 has no valid 'n' ('2')"),
        (lambda row: row.update(seeds=["0"]), "row 2's seeds are not whole numbers"),
    ):
        found = json.loads(original)
        edit(found["rows"][1])
        path.write_text(json.dumps(found))
        assert report_main(["--reproduce", "results/s"]) == 2
        err = capsys.readouterr().err
        assert said in err and "python src/report.py multirun/s" in err and err.count("\n") == 1
    assert not (quick / "multirun" / "s-reproduced").exists()


def test_the_data_compared_are_those_of_the_rows_reproduced():
    from vitsweep.report.reproduce import what_differs

    before = {"data": ["aaaa", "bbbb"], "device": ["CPU"], "harness": {"commit": "c" * 40}}
    after = {"data": ["aaaa"], "device": ["CPU"], "harness": {"commit": "c" * 40}}
    assert what_differs(before, after, [{"data_fingerprint": ["aaaa"]}]) == []
    assert what_differs(before, after, [{"data_fingerprint": ["bbbb"]}]) == [
        "data (['bbbb'] → ['aaaa'])"
    ]


def test_rule_a_verdict_compares_like_with_like_and_never_overwrites_an_earlier_one(quick):
    """Whatever is asked, a reproduction either runs each of a row's own seeds once, whose
    original completed, and judges those alone; or it is refused before anything is made.
    An earlier reproduction's files stay as they were."""
    first = reproduce(Path("results/s"), rows=[2], seeds=[1])
    earlier = _tree(quick)
    asks = [
        {"seeds": [7]},
        {"rows": [1, 1]},
        {"seeds": [1, 1]},
        {"rows": [2], "seeds": [1]},  # the same again
        {"rows": [1], "resume": True},  # resumed with other rows
        {"rows": [2], "seeds": [1], "name": "s"},  # onto the original's own folders
    ]
    for ask in asks:
        with pytest.raises(ConfigError):
            reproduce(Path("results/s"), **ask)
        assert _tree(quick) == earlier, ask
    shutil.move(quick / "multirun" / "s-reproduced", quick / "moved")
    for ask in ({"rows": [2], "seeds": [1]}, {"rows": [2], "seeds": [1], "resume": True}):
        with pytest.raises(ConfigError):
            reproduce(Path("results/s"), **ask)
    assert (first / "reproduction.md").read_bytes() == earlier[
        "results/s-reproduced/reproduction.md"
    ]
    # A copy of the folder is reproduced under its own name, not into the original's.
    shutil.copytree(quick / "results" / "s", quick / "results" / "s2")
    second = reproduce(Path("results/s2"), rows=[1], seeds=[0])
    assert second.name == "s2-reproduced" and (quick / "multirun" / "s2-reproduced").is_dir()
    assert not (quick / "multirun" / "s-reproduced").exists()
    assert (first / "reproduction.md").read_bytes() == earlier[
        "results/s-reproduced/reproduction.md"
    ]
    found = _manifest(quick)
    for out in (first, second):
        for number, label, _, _, per_seed, verdict in _verdicts(
            (out / "reproduction.md").read_text()
        ):
            row = found["rows"][int(number) - 1]
            seeds = [pair.split(":")[0].strip() for pair in per_seed.split(",")]
            assert label == row["label"] and "nan" not in per_seed
            assert len(seeds) == len(set(seeds)) and {int(s) for s in seeds} <= set(row["seeds"])
            assert all(row["status"][s] == "completed" for s in seeds)
            assert verdict == "identical"
