import json

import pandas as pd
import pytest
import yaml

from tests.conftest import TINY

HISTORY_COLUMNS = {
    "epoch", "train_loss", "train_acc", "train_s", "train_img_per_s", "test_loss", "test_acc",
    "eval_s", "eval_img_per_s", "lr", "peak_mem_mb",
}  # fmt: skip


def test_short_run_writes_its_record_and_an_offline_wandb_run(cli, tmp_path):
    overrides = [o for o in TINY if o != "logger=none"]
    result = cli(*overrides, "trainer.epochs=2", "logger.mode=offline", "hydra.run.dir=run")
    assert result.returncode == 0, result.stderr
    run = tmp_path / "run"

    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"]["name"] == "digits" and config["model"]["image_size"] == 32

    history = pd.read_csv(run / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    assert set(history.columns) >= HISTORY_COLUMNS
    assert history["test_acc"].between(0, 1).all() and (history["train_img_per_s"] > 0).all()

    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["params"] > 0 and summary["flops_per_image"] > 0
    assert summary["best_test_acc"] == history["test_acc"].max()
    assert summary["final_test_acc"] == history["test_acc"].iloc[-1]

    wandb_runs = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(wandb_runs) == 1 and wandb_runs[0].stat().st_size > 0


def test_zero_epochs_sizes_the_model_without_training(cli, tmp_path):
    result = cli("model=vitx", "trainer.epochs=0", "data=cifar10", "data.root=absent",
                 "logger=none", "hydra.run.dir=run")  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "sized"
    assert summary["params"] == 1_017_162
    assert summary["flops_per_image"] > 1e9
    assert not (tmp_path / "run" / "history.csv").exists()
    assert not (tmp_path / "absent").exists()  # no data was loaded


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.dim=100", "model.dim=100 is not divisible by model.heads=8"),
        ("model.embedding.patch_size=3", "not divisible by model.embedding.patch_size=3"),
        ("device=cuda", "device=cuda but CUDA is not available"),
        ("data=cifar10 data.root=absent", "CIFAR-10 not found"),
    ],
)
def test_bad_input_is_one_clear_line(cli, tmp_path, override, message):
    result = cli(*TINY, "trainer.epochs=1", *override.split(), "hydra.run.dir=run")
    if override == "device=cuda" and result.returncode == 0:
        pytest.skip("CUDA is available here")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {_line(result.stderr)}"]
    assert message in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and message in summary["error"]


def test_unknown_group_option_names_the_choices(cli):
    result = cli("attention=nope")
    assert result.returncode != 0
    assert "Could not find 'attention/nope'" in result.stderr
    assert "linear" in result.stderr and "softmax" in result.stderr
    assert "Traceback" not in result.stderr


def _line(stderr: str) -> str:
    return stderr.strip().removeprefix("error: ")


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["vit", "vitl", "vitx"])
def test_seed_presets_train_end_to_end_on_digits(cli, tmp_path, preset):
    result = cli(f"model={preset}", "data=digits", "data.subset=256", "trainer.epochs=3",
                 "trainer.batch_size=32", "trainer.micro_batch_size=16", "logger=none",
                 "hydra.run.dir=run", timeout=1800)  # fmt: skip
    assert result.returncode == 0, result.stderr
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert len(history) == 3 and history["train_loss"].notna().all()
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
