import json
from functools import partial

import pandas as pd
import pytest
import torch

from vitsweep.data import Augment, DeviceLoader, Normalise, Splits
from vitsweep.data.sets import load_digits
from vitsweep.errors import Diverged
from vitsweep.models import LinearAttention, PatchEmbedding, VisionTransformer
from vitsweep.record import RunRecord
from vitsweep.settings import TrainerSettings
from vitsweep.tracking import NullTracker
from vitsweep.train import autocast, cosine_schedule, fit


def test_cosine_schedule_warms_up_then_decays_to_the_floor():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = cosine_schedule(optimizer, total_steps=100, warmup_steps=10, min_ratio=0.01)
    lrs = []
    for _ in range(100):
        lrs.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert schedule.get_last_lr()[0] == pytest.approx(0.01)


def test_fp32_on_cpu_unless_bf16_is_asked_for():
    cpu = torch.device("cpu")
    with autocast(cpu, "auto"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(cpu, "bf16"):
        assert torch.is_autocast_enabled("cpu")


class RecordingTracker(NullTracker):
    def __init__(self):
        self.logged: list[tuple[int, dict]] = []

    def log(self, metrics, step):
        self.logged.append((step, metrics))


def _digits_run(tmp_path, epochs=6, lr=3e-3, **settings):
    torch.manual_seed(0)
    train, test = load_digits()
    cpu = torch.device("cpu")
    normalise = Normalise([0.3059] * 3, [0.3241] * 3)
    train_loader = DeviceLoader(train, 64, normalise, cpu, Augment())
    test_loader = DeviceLoader(test, 256, normalise, cpu)
    model = VisionTransformer(
        partial(PatchEmbedding, patch_size=8), LinearAttention, 32, 3, 10, dim=64, depth=2
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    record = RunRecord.claim(tmp_path, {}, resume=False)
    settings = TrainerSettings(epochs=epochs, progress=False, **settings)
    return model, train_loader, test_loader, optimizer, settings, record


def test_fit_learns_digits_and_records_every_epoch(tmp_path):
    model, train_loader, test_loader, optimizer, settings, record = _digits_run(
        tmp_path, log_every=4, eval_interval=2
    )
    tracker = RecordingTracker()
    fit(model, optimizer, Splits(train_loader, test_loader), settings, [record, tracker])
    record.release()

    history = pd.read_csv(tmp_path / "history.csv")
    assert list(history["epoch"]) == list(range(1, 7))
    assert history["test_acc"].notna().tolist() == [False, True] * 3
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert record.summary["best_test_acc"] > 0.5  # chance is 0.1
    step_logs = [step for step, m in tracker.logged if "step/train_loss" in m]
    assert step_logs == list(range(4, 6 * len(train_loader) + 1, 4))
    epoch_logs = [m for _, m in tracker.logged if "epoch" in m]  # the history's own names
    assert [m["epoch"] for m in epoch_logs] == list(range(1, 7))
    assert set(epoch_logs[1]) == set(history.columns)


def test_a_non_finite_loss_stops_training_with_its_step(tmp_path):
    model, *loaders, optimizer, settings, record = _digits_run(
        tmp_path, epochs=2, lr=1e30, log_every=1000
    )
    with pytest.raises(Diverged) as stopped:
        fit(model, optimizer, Splits(*loaders), settings, [record, NullTracker()])
    record.release()
    assert 1 <= stopped.value.step <= len(loaders[0])  # found at the epoch's end, not later


def test_auto_precision_on_a_cpu_is_fp32_every_time_and_is_recorded(cli, tmp_path, monkeypatch):
    import vitsweep.device

    # Nothing is timed: a matrix product that would make bf16 look 100x faster changes nothing.
    monkeypatch.setattr(vitsweep.device, "matmul_seconds", lambda n, dtype, *a, **k: pytest.fail())
    result = cli(
        "data=digits",
        "data.subset=64",
        "model.dim=32",
        "model.depth=1",
        "trainer.epochs=1",
        "logger=none",
        "device=cpu",
        "hydra.run.dir=run",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["precision"] == "fp32"


def test_an_explicit_precision_is_kept():
    from vitsweep.device import resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("auto", torch.device("mps")) == "fp32"


@pytest.mark.parametrize("major, chosen", [(7, "fp32"), (8, "bf16"), (9, "bf16")])
def test_auto_precision_on_cuda_is_bf16_from_ampere_on(monkeypatch, major, chosen):
    from vitsweep.device import resolve_precision

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, 0))
    assert resolve_precision("auto", torch.device("cuda", 0)) == chosen  # V100, A100, H100
