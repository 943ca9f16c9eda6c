"""Runs and sweeps that survive interruption, divergence and bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import ROOT, TINY
from vitsweep.checkpoint import Checkpoint
from vitsweep.data import DeviceLoader, load_digits
from vitsweep.models import LinearAttention, PatchEmbedding, VisionTransformer
from vitsweep.record import RunRecord
from vitsweep.tracking import NullTracker
from vitsweep.train import TrainerSettings, fit

CPU = torch.device("cpu")


def _training(run_dir: Path, resume: bool = False, epochs: int = 3):
    """A small digits run, built from scratch the way run.py builds one."""
    torch.manual_seed(0)
    train, test = load_digits()
    stats = {"mean": [0.3] * 3, "std": [0.3] * 3, "device": CPU}
    loaders = (
        DeviceLoader(train.head(256), 64, **stats, train=True, augment=True, seed=0),
        DeviceLoader(test.head(128), 128, **stats),
    )
    model = VisionTransformer(
        partial(PatchEmbedding, patch_size=8), LinearAttention, 32, 3, 10, dim=32, depth=1
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    settings = TrainerSettings(epochs=epochs, progress=False, resume=resume, warmup_epochs=1)
    record = RunRecord(run_dir, {"run": "same"}, resume=resume)
    return model, loaders, optimizer, settings, record


class StopAfter(NullTracker):
    """Interrupts training once ``epochs`` epochs are logged, as Ctrl-C would."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def log(self, metrics, step):
        if metrics.get("epoch/epoch") == self.epochs:
            raise KeyboardInterrupt


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path):
    model, loaders, optimizer, settings, record = _training(tmp_path / "straight")
    fit(model, *loaders, optimizer, settings, record, NullTracker(), Checkpoint(record.run_dir))
    straight = pd.DataFrame(record.history)

    run_dir = tmp_path / "interrupted"
    model, loaders, optimizer, settings, record = _training(run_dir)
    with pytest.raises(KeyboardInterrupt):
        fit(model, *loaders, optimizer, settings, record, StopAfter(1), Checkpoint(run_dir))
    assert len(record.history) == 1

    model, loaders, optimizer, settings, record = _training(run_dir, resume=True)
    fit(model, *loaders, optimizer, settings, record, NullTracker(), Checkpoint(run_dir))
    resumed = pd.DataFrame(record.history)

    metrics = ["train_loss", "train_acc", "test_loss", "test_acc", "lr"]
    pd.testing.assert_frame_equal(resumed[metrics], straight[metrics], check_exact=True)


def test_checkpoint_is_replaced_atomically(tmp_path):
    model, loaders, optimizer, settings, record = _training(tmp_path, epochs=1)
    fit(model, *loaders, optimizer, settings, record, NullTracker(), Checkpoint(tmp_path))
    assert (tmp_path / "checkpoint.pt").exists()
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    expected = {"epoch", "model", "optimizer", "scheduler", "torch_rng", "loader", "history"}
    assert expected <= set(state) and state["epoch"] == 1


def _cli(args, cwd, **kw):
    env = {**os.environ, "WANDB_SILENT": "true"}
    cmd = [sys.executable, str(ROOT / "src" / "run.py"), *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kw)  # fmt: skip


def _wait_for_epoch(history: Path, epoch: int, process: subprocess.Popen, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if history.exists() and len(pd.read_csv(history)) >= epoch:
            return
        time.sleep(0.05)
    raise AssertionError(f"epoch {epoch} never finished: {process.communicate()}")


SLOW_ENOUGH = [*[o for o in TINY if o != "logger=none"], "data.subset=256", "trainer.epochs=8",
               "logger.mode=offline"]  # fmt: skip


def test_sigterm_saves_marks_interrupted_and_resume_finishes(tmp_path):
    run = _cli([*SLOW_ENOUGH, "hydra.run.dir=run"], tmp_path)
    _wait_for_epoch(tmp_path / "run" / "history.csv", 2, run)
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 130
    assert "interrupted" in stderr and "trainer.resume=true" in stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    done_before = len(pd.read_csv(tmp_path / "run" / "history.csv"))
    assert 2 <= done_before < 8
    assert (
        torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["epoch"] == done_before
    )

    resumed = _cli([*SLOW_ENOUGH, "hydra.run.dir=run", "trainer.resume=true"], tmp_path)
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert list(history["epoch"]) == list(range(1, 9))
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"
    # W&B continued the same run: one id, kept in the run directory.
    run_id = (tmp_path / "run" / "wandb_run_id").read_text()
    offline = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert offline and all(p.name.endswith(run_id) for p in offline)


def test_sweep_resume_skips_finished_jobs_and_resumes_the_rest(tmp_path):
    quiet = [o for o in SLOW_ENOUGH if not o.startswith("logger")]
    sweep = ["-m", "attention=softmax,linear", *quiet, "logger=none", "sweep_name=s"]
    first = _cli(sweep, tmp_path)
    _wait_for_epoch(tmp_path / "multirun" / "s" / "1" / "history.csv", 1, first)
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=120)
    assert first.returncode == 130
    job0, job1 = (tmp_path / "multirun" / "s" / str(i) for i in (0, 1))
    assert json.loads((job1 / "summary.json").read_text())["status"] == "interrupted"
    finished_at = (job0 / "checkpoint.pt").stat().st_mtime_ns

    again = _cli([*sweep, "trainer.resume=true"], tmp_path)
    stdout, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr
    assert (job0 / "checkpoint.pt").stat().st_mtime_ns == finished_at  # skipped, not redone
    assert len(pd.read_csv(job1 / "history.csv")) == 8
    table = pd.read_csv(tmp_path / "results" / "s" / "comparison.csv")
    assert list(table["status"]) == ["completed", "completed"]


def test_divergence_stops_the_run_with_its_step(cli, tmp_path):
    result = cli(*TINY, "trainer.epochs=2", "optim.lr=1e30", "trainer.log_every=1",
                 "hydra.run.dir=run")  # fmt: skip
    assert result.returncode == 1
    assert "diverged: non-finite loss at step" in result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_step"] >= 1


def test_a_diverged_job_is_a_row_and_the_sweep_goes_on(cli, tmp_path):
    result = cli("-m", "optim.lr=1e-3,1e30", *TINY, "trainer.epochs=1", "sweep_name=d")
    assert result.returncode == 1  # something did not complete
    table = pd.read_csv(tmp_path / "results" / "d" / "comparison.csv")
    assert list(table["status"]) == ["completed", "diverged"]


def test_grad_clip_bounds_the_update(tmp_path):
    model, loaders, optimizer, _, record = _training(tmp_path, epochs=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    settings = TrainerSettings(epochs=1, progress=False, grad_clip=1e-3, min_lr_ratio=1.0)
    fit(model, *loaders, optimizer, settings, record, NullTracker())
    moved = torch.cat([(p - b).flatten() for p, b in zip(model.parameters(), before)])
    assert moved.norm() <= 1e-3 * len(loaders[0]) + 1e-6  # each step moves at most lr * clip


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.epochs=-1", "trainer.epochs must be >= 0"),
        ("trainer.batch_size=0", "trainer.batch_size must be positive"),
        ("optim.lr=0", "optim.lr must be positive"),
        ("optim.lr=-1e-3", "optim.lr must be positive"),
        ("attention=linformer model.attention.k=0", "model.attention.k must be positive"),
        ("attention=linformer model.attention.seq_len=100",
         "model.attention.seq_len=100 but this model has 257 tokens (256 from the embedding"),
        ("data=fashion_mnist data.root=absent data.source.system_dir=absent "
         "data.source.download=false", "Fashion-MNIST not found"),
        ("data.loader=dali", "data.loader must be device or torchvision"),
        ("device.name=tpu", "unknown device 'tpu'"),
    ],
)  # fmt: skip
def test_bad_config_is_caught_before_any_work(cli, tmp_path, override, message):
    result = cli(*[o for o in TINY if o != "logger=none"], "trainer.epochs=1",
                 *override.split(), "hydra.run.dir=run")  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"error: {result.stderr.strip().removeprefix('error: ')}"
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "wandb").exists()  # W&B never started
    assert not (tmp_path / "run" / "history.csv").exists()


def test_resume_refuses_a_directory_of_another_run(cli, tmp_path):
    assert cli(*TINY, "trainer.epochs=1", "hydra.run.dir=run").returncode == 0
    before = (tmp_path / "run" / "summary.json").read_text()
    result = cli(*TINY, "trainer.epochs=1", "model.dim=64", "trainer.resume=true",
                 "hydra.run.dir=run")  # fmt: skip
    assert result.returncode == 2 and "holds a run with another config" in result.stderr
    assert (tmp_path / "run" / "summary.json").read_text() == before  # left untouched


def test_wandb_online_without_credentials_warns_and_trains_on(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env |= {"HOME": str(tmp_path), "WANDB_SILENT": "true"}  # no ~/.netrc, no API key
    args = [*[o for o in TINY if o != "logger=none"], "trainer.epochs=1", "logger.mode=online",
            "hydra.run.dir=run"]  # fmt: skip
    result = subprocess.run([sys.executable, str(ROOT / "src" / "run.py"), *args], cwd=tmp_path,
                            env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stdout.splitlines() if "W&B disabled" in line]
    assert len(warnings) == 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and "best_test_acc" in summary
    assert len(pd.read_csv(tmp_path / "run" / "history.csv")) == 1


def test_wandb_takes_long_overrides_as_tags(tmp_path):
    from vitsweep.tracking import WandbTracker

    tracker = WandbTracker({"a": 1}, tmp_path, mode="offline", tags=["x=" + "a" * 100])
    try:
        assert tracker.run is not None  # not given up on: W&B refuses tags over 64 chars
        assert all(len(tag) <= 64 for tag in tracker.run.tags)
    finally:
        tracker.finish()
