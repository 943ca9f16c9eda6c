"""The training loop: plain PyTorch, read top to bottom.

fit() runs epochs of train_one_epoch() and evaluate(), and hands each epoch's row to the run
record and the tracker. Nothing here knows which model, data set or logger it was given.
"""

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from vitsweep.data import DeviceLoader
from vitsweep.measure import peak_memory_mb, reset_peak_memory
from vitsweep.record import RunRecord
from vitsweep.tracking import NullTracker

log = logging.getLogger(__name__)


@dataclass
class TrainerSettings:
    """The `trainer:` block of conf/config.yaml."""

    epochs: int = 40  # 0: build, size and record without training
    batch_size: int = 128
    eval_batch_size: int = 512
    precision: str = "auto"  # auto (bf16 autocast on CUDA, else fp32) | fp32 | bf16
    label_smoothing: float = 0.1
    warmup_epochs: float = 0
    min_lr_ratio: float = 0.01
    eval_interval: int = 1
    log_every: int = 10
    progress: bool = True


def cosine_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, min_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup, then cosine decay from lr to lr * min_ratio, stepped every batch."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def autocast_for(
    device: torch.device, precision: str
) -> Callable[[], contextlib.AbstractContextManager]:
    """bf16 autocast (fp32 master weights) on CUDA under `auto`; fp32 elsewhere unless asked."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def train_one_epoch(
    model: nn.Module,
    loader: DeviceLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    criterion: nn.Module,
    autocast: Callable[[], contextlib.AbstractContextManager],
    on_step: Callable[[int, float], None],
    progress: tqdm,
) -> dict[str, float]:
    """One pass over the training set; returns loss, accuracy, seconds and images/s."""
    device = loader.labels.device
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    start = time.perf_counter()
    for images, labels in loader:
        with autocast():
            logits = model(images)
            loss = criterion(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        # Accumulate on the device: a .item() per step would stall the GPU every batch.
        loss_sum += loss.detach() * len(labels)
        correct += (logits.argmax(dim=1) == labels).sum()
        seen += len(labels)
        on_step(len(labels), loss)
        progress.update(1)
    _sync(device)
    seconds = time.perf_counter() - start
    return {
        "train_loss": loss_sum.item() / seen,
        "train_acc": correct.item() / seen,
        "train_s": seconds,
        "train_img_per_s": seen / seconds,
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DeviceLoader,
    criterion: nn.Module,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> dict[str, float]:
    """Loss and top-1 accuracy on the test set, with its wall time."""
    device = loader.labels.device
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    start = time.perf_counter()
    for images, labels in loader:
        with autocast():
            logits = model(images)
        loss_sum += criterion(logits.float(), labels) * len(labels)
        correct += (logits.argmax(dim=1) == labels).sum()
        seen += len(labels)
    _sync(device)
    seconds = time.perf_counter() - start
    return {
        "test_loss": loss_sum.item() / seen,
        "test_acc": correct.item() / seen,
        "eval_s": seconds,
        "eval_img_per_s": seen / seconds,
    }


def fit(
    model: nn.Module,
    train_loader: DeviceLoader,
    test_loader: DeviceLoader,
    optimizer: torch.optim.Optimizer,
    settings: TrainerSettings,
    record: RunRecord,
    tracker: NullTracker,
) -> None:
    """Train for ``settings.epochs``, evaluating every ``eval_interval`` epochs and the last."""
    s = settings
    epochs = s.epochs
    device = train_loader.labels.device
    steps_per_epoch = len(train_loader)
    scheduler = cosine_schedule(
        optimizer,
        epochs * steps_per_epoch,
        round(s.warmup_epochs * steps_per_epoch),
        s.min_lr_ratio,
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=s.label_smoothing)
    autocast = autocast_for(device, s.precision)
    step = 0

    def on_step(batch: int, loss: torch.Tensor) -> None:
        nonlocal step
        step += 1
        if step % s.log_every == 0:
            lr = scheduler.get_last_lr()[0]
            tracker.log({"train/step_loss": loss.item(), "train/lr": lr}, step=step)

    for epoch in range(1, epochs + 1):
        reset_peak_memory(device)
        desc = f"epoch {epoch}/{epochs}"
        # disable=None: bars only on a terminal, so logs and CI output stay clean.
        with tqdm(
            total=steps_per_epoch, desc=desc, leave=False, disable=None if s.progress else True
        ) as bar:
            stats = train_one_epoch(
                model, train_loader, optimizer, scheduler, criterion, autocast, on_step, bar
            )
        row = {"epoch": epoch, **stats}
        if epoch % s.eval_interval == 0 or epoch == epochs:
            row |= evaluate(model, test_loader, criterion, autocast)
        row["lr"] = scheduler.get_last_lr()[0]
        row["peak_mem_mb"] = peak_memory_mb(device)
        record.add_epoch(row)
        tracker.log({f"epoch/{k}": v for k, v in row.items()}, step=step)
        log.info(_epoch_line(row, epochs))


def _epoch_line(row: dict[str, float], epochs: int) -> str:
    line = (
        f"epoch {row['epoch']}/{epochs}  loss {row['train_loss']:.4f}  "
        f"train acc {row['train_acc']:.2%}  {row['train_img_per_s']:.0f} img/s"
    )
    if "test_acc" in row:
        line += f"  test acc {row['test_acc']:.2%}  test loss {row['test_loss']:.4f}"
    return line
