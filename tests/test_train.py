from functools import partial

import pandas as pd
import pytest
import torch

from vitsweep.data import DeviceLoader, load_digits
from vitsweep.models import LinearAttention, PatchEmbedding, VisionTransformer
from vitsweep.record import RunRecord
from vitsweep.tracking import NullTracker
from vitsweep.train import TrainerSettings, autocast_for, cosine_schedule, fit


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
    with autocast_for(cpu, "auto")():
        assert not torch.is_autocast_enabled("cpu")
    with autocast_for(cpu, "bf16")():
        assert torch.is_autocast_enabled("cpu")


class RecordingTracker(NullTracker):
    def __init__(self):
        self.logged: list[tuple[int, dict]] = []

    def log(self, metrics, step):
        self.logged.append((step, metrics))


def test_fit_learns_digits_and_records_every_epoch(tmp_path):
    torch.manual_seed(0)
    train, test = load_digits()
    cpu = torch.device("cpu")
    stats = {"mean": [0.3054] * 3, "std": [0.3237] * 3, "device": cpu}
    train_loader = DeviceLoader(train, 64, **stats, train=True, augment=False)
    test_loader = DeviceLoader(test, 256, **stats)
    model = VisionTransformer(
        partial(PatchEmbedding, patch_size=8), LinearAttention, 32, 3, 10, dim=64, depth=2
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    record, tracker = RunRecord(tmp_path, {}), RecordingTracker()
    settings = TrainerSettings(epochs=6, log_every=4, progress=False, eval_interval=2)

    fit(model, train_loader, test_loader, optimizer, settings, record, tracker)

    history = pd.read_csv(tmp_path / "history.csv")
    assert list(history["epoch"]) == list(range(1, 7))
    assert history["test_acc"].notna().tolist() == [False, True] * 3
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert record.summary["best_test_acc"] > 0.5  # chance is 0.1
    step_logs = [step for step, m in tracker.logged if "train/step_loss" in m]
    assert step_logs == list(range(4, 6 * len(train_loader) + 1, 4))
