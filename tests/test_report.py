import json
import subprocess
import sys
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from tests.helpers import TINY
from vitsweep.report import (
    comparison_table,
    frame_from_wandb_runs,
    load_sweep,
    row_from_run,
    sweep_name,
    to_markdown,
)

QUICK = [o for o in TINY if o != "logger=none"] + ["trainer.epochs=1", "data.subset=32"]
HOW_SURE = [
    "95% CI",
    "n",
    "Δ best top-1 vs baseline [95% CI]",
    "p (Holm)",
    "smallest Δ seen",
    "status",
]
HEADLINE = [
    "attention",
    "embedding",
    "parameters",
    "GFLOPs/img",
    "best top-1 %",
    "train s/epoch",
    *HOW_SURE,
]
ALL_COLUMNS = [
    "attention",
    "embedding",
    "image size",
    "dim",
    "patch size",
    "tokens",
    "heads",
    "blocks",
    "parameters",
    "GFLOPs/img",
    "best top-1 %",
    "final top-1 %",
    "s/epoch",
    "train s/epoch",
    "test s/epoch",
    "train img/s",
    "worst class (top-1 %)",
    "peak MB",
    "epochs",
    "device",
    *HOW_SURE,
]


def _headers(markdown: str) -> list[list[str]]:
    """The heading row of every table in a markdown text."""
    lines = markdown.splitlines()
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for i, line in enumerate(lines)
        if line.startswith("| ") and (i == 0 or not lines[i - 1].startswith("|"))
    ]


def _header(markdown: str) -> list[str]:
    return _headers(markdown)[0]


def _rows(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("| ")][1:]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_mission_sweep_ends_in_a_table_and_plots(cli, tmp_path):
    result = cli(
        "-m",
        "attention=softmax,linear",
        "embedding=patch,cnn",
        *QUICK,
        "logger=none",
        "sweep_name=mission",
    )
    assert result.returncode == 0, result.stderr
    out = tmp_path / "results" / "mission"
    markdown = (out / "comparison.md").read_text()
    per_class = ["row", *map(str, range(10))]  # the digits' classes
    assert _headers(markdown) == [HEADLINE, ALL_COLUMNS, per_class]  # the choices come first
    assert [r[:2] for r in _rows(markdown)[:4]] == [
        ["softmax", "patch"],
        ["softmax", "cnn"],
        ["linear", "patch"],
        ["linear", "cnn"],
    ]
    assert "python src/run.py -m attention=softmax,linear embedding=patch,cnn" in markdown
    table = pd.read_csv(out / "comparison.csv")
    assert len(table) == 4 and (table["status"] == "completed").all()
    assert {"params", "gflops_per_image", "best_top1", "train_img_per_s"} <= set(table.columns)
    assert table["params"].nunique() == 4
    assert "Welch's t-test otherwise" in markdown  # how to read it
    assert "- jobs: 4; seeds: 0" in markdown and "harness commit:" in markdown  # what produced it
    for plot in ("accuracy.png", "latency.png", "pareto.png", "confusion.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"
    assert "| softmax " in result.stdout  # printed too


def _wandb_record(run_dir) -> tuple[dict, dict]:
    """What W&B itself wrote for an offline run, read back with its own CLI: the config and
    summary, and the run record (group, tags)."""
    offline = str(next((run_dir / "wandb").glob("offline-run-*")))
    inspect = [sys.executable, "-m", "wandb", "leet", "inspect", "--json"]
    summary = subprocess.run(
        [*inspect, "--summary", offline], capture_output=True, text=True, check=True
    )
    records = subprocess.run([*inspect, offline], capture_output=True, text=True, check=True)
    lines = (json.loads(line) for line in records.stdout.splitlines() if line.startswith("{"))
    run = next(r["run"] for r in lines if r.get("type") == "run")
    return json.loads(summary.stdout), run


def test_each_job_of_a_sweep_is_its_own_wandb_run_in_the_sweeps_group(cli, tmp_path):
    result = cli(
        "-m", "attention=softmax,linear", *QUICK, "logger.mode=offline", "sweep_name=tracked"
    )
    assert result.returncode == 0, result.stderr
    jobs = sorted(p.parent for p in tmp_path.glob("multirun/tracked/*/summary.json"))
    ids = set()
    for job, attention in zip(jobs, ["softmax", "linear"]):
        record, run = _wandb_record(job)
        assert record["config"]["choices"]["attention"] == attention  # its own config
        assert run["run_group"] == "tracked"  # the sweep's name, shared by its jobs
        assert f"attention={attention}" in run["tags"]
        assert record["summary"]["status"] == "completed"
        ids.add((job / "wandb_run_id").read_text())
    assert len(ids) == 2
    # the sweep's table and plots: one more run of the group, job type "report"
    _, run = _wandb_record(tmp_path / "multirun" / "tracked")
    assert (run["job_type"], run["run_group"]) == ("report", "tracked")
    offline = next((tmp_path / "multirun" / "tracked" / "wandb").glob("offline-run-*"))
    records = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(offline)],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = [json.loads(line) for line in records.stdout.splitlines() if line.startswith("{")]
    logged = next(r["history"]["item"] for r in lines if r.get("type") == "history")
    assert logged["comparison._type"] == "table-file" and logged["pareto._type"] == "image-file"
    shown = json.loads((offline / "files" / logged["comparison.path"]).read_text())
    csv = pd.read_csv(tmp_path / "results" / "tracked" / "comparison.csv")
    assert [row[0] for row in shown["data"]] == list(csv["override:attention"])
    assert "p (Holm)" in shown["columns"]


@pytest.mark.slow
def test_joblib_jobs_keep_their_own_runs_and_configs(cli, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    result = cli(
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "attention=softmax,linear",
        *QUICK,
        "logger.mode=offline",
        "sweep_name=parallel",
    )
    assert result.returncode == 0, result.stderr
    jobs = sorted(p.parent for p in tmp_path.glob("multirun/parallel/*/summary.json"))
    assert len(jobs) == 2
    seen = set()
    for job in jobs:
        overrides = yaml.safe_load((job / "config.yaml").read_text())["overrides"]
        record, run = _wandb_record(job)
        choices = record["config"]["choices"]
        assert run["run_group"] == "parallel"  # the sweep's name, shared by its jobs
        assert f"attention={choices['attention']}" in run["tags"]
        assert f"attention={choices['attention']}" in overrides
        assert record["summary"]["status"] == "completed"
        seen.add(choices["attention"])
    assert seen == {"softmax", "linear"}
    assert len(pd.read_csv(tmp_path / "results" / "parallel" / "comparison.csv")) == 2


def _record(attention: str, seed: int, acc: float, train_s: float, status="completed"):
    model = {"dim": 128, "heads": 8, "depth": 4, "embedding": {"patch_size": 2}}
    config = {
        "seed": seed,
        "choices": {"attention": attention, "embedding": "patch"},
        "model": model,
    }
    summary = {
        "status": status,
        "best_test_acc": acc,
        "final_test_acc": acc,
        "train_s_per_epoch": train_s,
        "test_s_per_epoch": 1.0,
        "params": 1000,
    }
    return config, summary, [f"attention={attention}", f"seed={seed}"]


def test_seed_repeats_aggregate_to_mean_std_and_n():
    records = [
        _record("softmax", 0, 0.70, 10.0),
        _record("softmax", 1, 0.80, 12.0),
        _record("softmax", 2, 0.75, 11.0),
        _record("linear", 0, 0.60, 5.0),
        _record("linear", 1, 0.0, 0.0, status="failed"),
    ]
    runs = pd.DataFrame([row_from_run(*r, run_id=str(i)) for i, r in enumerate(records)])
    table = comparison_table(runs).set_index("label")
    softmax, linear = table.loc["attention=softmax"], table.loc["attention=linear"]
    assert softmax["n"] == 3 and softmax["best_top1"] == pytest.approx(75.0)
    assert softmax["best_top1_std"] == pytest.approx(5.0)
    assert softmax["time_per_epoch_s"] == pytest.approx(12.0)  # train 11 + eval 1
    assert linear["n"] == 1 and linear["best_top1"] == pytest.approx(60.0)  # failed seed out
    assert linear["status"] == "1/2 completed"
    markdown = to_markdown(table.reset_index(), ["attention"])
    assert _rows(markdown)[0][0] == "softmax" and "75.00 ± 5.00" in _rows(markdown)[0]
    assert "n" in _header(markdown)


class FakeRun:
    """Shaped like wandb.apis.public.Run: config, summary, tags, name, state, history()."""

    def __init__(self, config, summary, tags, name, history, state="finished"):
        self.config, self.summary, self.tags, self.name = config, summary, tags, name
        self.state, self._history = state, history

    def history(self, keys=None, pandas=True):
        """Like W&B's: the rows that have the keys asked for (none: an empty frame)."""
        frame = pd.DataFrame(self._history)
        return frame[keys].dropna() if set(keys) <= set(frame.columns) else pd.DataFrame()


def test_wandb_runs_become_the_same_schema_as_local_records(tmp_path):
    config, summary, tags = _record("softmax", 0, 0.7, 10.0)
    history = [
        {"epoch": 1, "test_acc": 0.5, "train_s": 10.0},
        {"epoch": 2, "test_acc": 0.7, "train_s": 10.0},
    ]
    crashed = FakeRun(
        config | {"seed": 1},
        {"status": "running", "_step": 3},
        ["attention=softmax", "seed=1"],
        "run-b",
        [],
        state="crashed",
    )
    runs, curves = frame_from_wandb_runs(
        [FakeRun(config, summary | {"_runtime": 5}, tags, "run-a", history), crashed]
    )
    local = pd.DataFrame([row_from_run(config, summary, tags, run_id="run-a")])
    assert list(runs.columns) == list(local.columns)
    pd.testing.assert_frame_equal(runs.iloc[:1], local, check_dtype=False)
    assert list(runs["status"]) == ["completed", "failed"]
    assert list(curves["test_acc"]) == [0.5, 0.7] and set(curves["run"]) == {"run-a"}


def test_load_wandb_asks_the_api_for_the_group():
    from vitsweep.report import load_wandb

    calls = []
    api = SimpleNamespace(runs=lambda path, filters: calls.append((path, filters)) or [])
    runs, _ = load_wandb("me/vitsweep", "2026-11-27_12-00-00", api=api)
    assert calls == [("me/vitsweep", {"group": "2026-11-27_12-00-00"})] and runs.empty


def _fake_sweep(sweep, jobs) -> None:
    """A sweep directory of run records: ``jobs`` is [(attention, accuracy)]."""
    for i, (attention, acc) in enumerate(jobs):
        job = sweep / str(i)
        job.mkdir(parents=True)
        config, summary, tags = _record(attention, 0, acc, 10.0)
        (job / "config.yaml").write_text(
            yaml.safe_dump(config | {"overrides": tags, "sweep_name": "named"})
        )
        (job / "summary.json").write_text(json.dumps(summary))
        pd.DataFrame({"epoch": [1], "test_acc": [acc], "train_s": [10.0]}).to_csv(
            job / "history.csv", index=False
        )


def test_report_script_rebuilds_from_a_sweep_directory(tmp_path, monkeypatch, capsys):
    from report import main as report_main

    sweep = tmp_path / "multirun" / "some_dir"
    _fake_sweep(sweep, [("softmax", 0.7), ("linear", 0.6)])
    runs, curves = load_sweep(sweep)
    assert list(runs["attention"]) == ["softmax", "linear"] and len(curves) == 2
    monkeypatch.chdir(tmp_path)
    assert report_main([str(sweep)]) == 0
    out = tmp_path / "results" / "named"  # named after the sweep_name its records kept
    assert (out / "comparison.md").exists() and (out / "accuracy.png").exists()
    assert "| softmax " in capsys.readouterr().out


def test_a_garbage_summary_is_an_unreadable_row_and_the_rest_is_built(tmp_path):
    sweep = tmp_path / "s"
    _fake_sweep(sweep, [("softmax", 0.7), ("linear", 0.6), ("performer", 0.5)])
    (sweep / "1" / "summary.json").write_text("{not json")
    (sweep / "2" / "summary.json").write_text("[1, 2]")
    runs, _ = load_sweep(sweep)
    assert list(runs["status"]) == ["completed", "unreadable", "unreadable"]
    assert "summary.json cannot be read" in runs["error"].iloc[1]
    table = comparison_table(runs)
    markdown = to_markdown(table, ["attention"])
    assert [row[-1] for row in _rows(markdown)] == ["completed", "unreadable", "unreadable"]


def test_integer_columns_stay_integers_in_a_table_with_missing_values():
    done = row_from_run(*_record("softmax", 0, 0.7, 10.0), run_id="0") | {
        "tokens": 256,
        "epochs_done": 3,
    }
    missing = row_from_run({}, {}, ["attention=linear"], run_id="1")
    markdown = to_markdown(comparison_table(pd.DataFrame([done, missing])), ["attention"])
    assert "256.00" not in markdown and " 256 " in markdown and " 3 " in markdown


def test_sweep_names():
    assert sweep_name("/data/multirun/lr_sweep") == "lr_sweep"
