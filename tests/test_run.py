"""One run through the command line: what it leaves behind, and what it tells the user."""

import json

import pandas as pd
import pytest
import yaml

from tests.helpers import TINY

HISTORY_COLUMNS = {
    "epoch", "train_loss", "train_acc", "train_s", "train_img_per_s", "test_loss", "test_acc",
    "test_s", "test_img_per_s", "lr",
}  # fmt: skip  # and peak_mem_mb on CUDA: its allocator's peak (the CPU's: src/bench.py)
WITH_WANDB = [o for o in TINY if o != "logger=none"] + ["logger.mode=offline"]


def test_a_short_run_writes_its_record_and_an_offline_wandb_run(cli, tmp_path):
    result = cli(*WITH_WANDB, "trainer.epochs=2", "hydra.run.dir=run")
    assert result.returncode == 0, result.stderr
    run = tmp_path / "run"

    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"]["name"] == "digits" and config["data"]["image_size"] == 32
    assert config["choices"]["attention"] == "softmax" and "data.subset=64" in config["overrides"]

    history = pd.read_csv(run / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    assert set(history.columns) == HISTORY_COLUMNS
    assert history["test_acc"].between(0, 1).all() and (history["train_img_per_s"] > 0).all()

    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and "error" not in summary
    assert summary["params"] > 0 and summary["flops_per_image"] > 0
    assert summary["best_test_acc"] == history["test_acc"].max()
    assert summary["final_test_acc"] == history["test_acc"].iloc[-1]
    assert summary["torch"] and summary["device"].startswith("CPU")
    assert "peak_mem_mb" not in summary  # no profiler in the training loop

    assert "epoch 2/2" in (run / "run.log").read_text()
    assert not (run / ".hydra").exists()  # the run's own config.yaml is the record
    wandb_runs = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(wandb_runs) == 1 and wandb_runs[0].stat().st_size > 0


def test_zero_epochs_sizes_the_model_without_loading_data(cli, tmp_path):
    result = cli(
        "model=vitx",
        "trainer.epochs=0",
        "data=cifar10",
        "data.root=absent",
        "logger=none",
        "hydra.run.dir=run",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "sized"
    assert summary["params"] == 1_017_162
    assert summary["flops_per_image"] > 1e9
    assert not (tmp_path / "run" / "history.csv").exists()
    assert not (tmp_path / "absent").exists()  # no data was loaded


def test_an_unknown_group_option_is_hydras_short_message_naming_the_choices(cli):
    result = cli("attention=nope")
    assert result.returncode == 1
    assert "Could not find 'attention/nope'" in result.stderr
    assert "linear" in result.stderr and "softmax" in result.stderr
    assert "Traceback" not in result.stderr


def test_wandb_online_without_credentials_warns_once_and_trains_on(cli, tmp_path, monkeypatch):
    for key in [k for k in __import__("os").environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no API key
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setattr("vitsweep.tracking.WandbTracker.INIT_TIMEOUT_S", 5)
    result = cli(*WITH_WANDB[:-1], "logger.mode=online", "trainer.epochs=1", "hydra.run.dir=run")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("W&B disabled") == 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and "best_test_acc" in summary


def test_wandb_takes_long_overrides_as_tags(tmp_path):
    from vitsweep.tracking import WandbTracker

    tracker = WandbTracker(mode="offline")
    tracker.start({"a": 1}, tmp_path, "job", None, tags=["x=" + "a" * 100])
    try:
        assert tracker.run is not None  # not given up on: W&B refuses tags over 64 chars
        assert all(len(tag) <= 64 for tag in tracker.run.tags)
    finally:
        tracker.finish()


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["vit", "vitl", "vitx"])
def test_seed_presets_train_end_to_end_on_digits(cli, tmp_path, preset):
    result = cli(
        f"model={preset}",
        "data=digits",
        "data.subset=256",
        "trainer.epochs=3",
        "trainer.batch_size=32",
        "trainer.micro_batch_size=16",
        "logger=none",
        "hydra.run.dir=run",
    )
    assert result.returncode == 0, result.stderr
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert len(history) == 3 and history["train_loss"].notna().all()
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
