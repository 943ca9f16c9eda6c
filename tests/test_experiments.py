"""Named experiments (conf/experiment/): a whole study in one versioned file, and a dry run
that lists its jobs, sized, before anything trains."""

import json

import pytest

from tests.helpers import TINY
from vitsweep.config import options


def _job_rows(stdout: str) -> list[list[str]]:
    lines = [line for line in stdout.splitlines() if line.startswith("| ")][1:]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_lists_its_jobs_sized_and_runs_nothing(cli, tmp_path, experiment):
    result = cli("-m", f"experiment={experiment}", "dry_run=true")
    assert result.returncode == 0, result.stderr
    rows = _job_rows(result.stdout)
    assert rows and all(row[-1] == "ok" and int(row[2].replace(",", "")) > 0 for row in rows)
    assert (
        f"{len(rows)} jobs" in result.stdout and "nothing was created or trained" in result.stdout
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no multirun/, results/, outputs/
    if experiment == "nanovit_table":  # nanovit's three models times three seeds, its recipe
        assert [r[1] for r in rows[:2]] == ["model=vit seed=0", "model=vit seed=1"]
        assert [r[2] for r in rows[::3]] == ["829,322", "924,426", "1,017,162"]
        assert {r[5] for r in rows} == {"40"}


def test_the_digits_try_is_one_offline_run_without_wandb(make_config):
    cfg = make_config(["experiment=digits_try"])
    assert cfg.data.name == "digits" and cfg.logger._target_.endswith("NullTracker")
    assert (cfg.model.dim, cfg.model.depth, cfg.model.embedding.patch_size) == (64, 2, 4)
    assert "params" not in cfg.get("hydra", {}).get("sweeper", {})  # no grid: a single run


def test_the_digits_try_dry_run_is_one_job_sized(cli):
    result = cli("experiment=digits_try", "dry_run=true")
    assert result.returncode == 0, result.stderr
    assert "75,082" in result.stdout  # dim 64, 2 blocks, 64 tokens: as the README says


@pytest.mark.slow
def test_the_digits_try_trains_to_a_useful_accuracy(cli, tmp_path):
    result = cli("experiment=digits_try", "hydra.run.dir=run")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["best_test_acc"] >= 0.9


def test_the_command_line_narrows_an_experiments_grid(cli):
    rows = _job_rows(cli("-m", "experiment=fmnist_ablation", "seed=5", "dry_run=true").stdout)
    assert len(rows) == 4 and all("seed=5" not in r[1] for r in rows)  # one seed: not varying
    assert {r[3] for r in rows} == {"49"}  # 7x7 tokens on 28x28 images


def test_a_dry_run_says_which_jobs_would_fail(cli):
    result = cli("-m", "model.heads=3,8", *TINY, "dry_run=true")
    assert result.returncode == 2
    rows = _job_rows(result.stdout)
    assert "not divisible by model.heads=3" in rows[0][-1] and rows[1][-1] == "ok"
    assert "1 would fail" in result.stdout


def test_a_single_run_dry_run_sizes_it(cli, tmp_path):
    result = cli("model=vitx", "dry_run=true")
    assert result.returncode == 0 and "1,017,162" in result.stdout
    assert not (tmp_path / "outputs").exists()
