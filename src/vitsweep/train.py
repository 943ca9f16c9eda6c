"""The training loop: plain PyTorch, read top to bottom.

``fit`` runs epochs of ``train_one_epoch`` and ``evaluate`` and hands each epoch's row to its
hooks: the run record (which checkpoints it), the tracker, a search's pruner. Nothing here
knows which model, data set, logger or record it was given. One naming scheme for what a
pass measured, everywhere (history.csv, summary.json, W&B, the table): ``train_*`` and
``test_*``, e.g. ``test_acc``.
"""

import contextlib
import inspect
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from vitsweep.checkpoint import Training, restore_checkpoint
from vitsweep.data import Splits
from vitsweep.device import resolve_precision, synchronize
from vitsweep.errors import ConfigError, Diverged, require
from vitsweep.hooks import Hook
from vitsweep.settings import TrainerSettings

log = logging.getLogger(__name__)
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]  # a DeviceLoader or a DataLoader


def build_optimizer(
    factory: Callable[..., torch.optim.Optimizer], model: nn.Module, device: torch.device
) -> torch.optim.Optimizer:
    """The configured optimizer (a partial of its class), fused into one kernel on CUDA where
    it offers that. Its ranges are torch's own checks, reported as one line."""
    lr = getattr(factory, "keywords", {}).get("lr")
    if lr is not None:
        require(lr > 0, "optim.lr", lr, "a positive number")
    target = getattr(factory, "func", factory)
    fused = device.type == "cuda" and "fused" in inspect.signature(target).parameters
    try:
        return factory(model.parameters(), **({"fused": True} if fused else {}))
    except ValueError as err:  # torch's "Invalid weight_decay value: -1.0" and the like
        raise ConfigError(f"optim: {err}") from None


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


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast (fp32 master weights) where ``precision`` is, or resolves to, bf16
    (``vitsweep.device.resolve_precision``)."""
    use_bf16 = resolve_precision(precision, device) == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)


def to_device(
    images: torch.Tensor, labels: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """A no-op for the device-resident loader; a copy for torchvision's DataLoader."""
    if device.type == "cuda" and images.ndim == 4:
        images = images.contiguous(memory_format=torch.channels_last)  # faster conv stems
    return images.to(device, non_blocking=True), labels.to(device, non_blocking=True)


class PassMeter:
    """Loss, accuracy and throughput of one pass (``split``: train or test), and, given the
    number of classes, its confusion matrix (rows: true class, columns: predicted). The sums
    stay on the device (an .item() per step would stall a GPU every batch) and are read once."""

    def __init__(self, split: str, device: torch.device, num_classes: int | None = None) -> None:
        self.split, self.device, self.num_classes = split, device, num_classes
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        cells = (num_classes or 0) ** 2
        self.confusion = torch.zeros(cells, device=device, dtype=torch.long)
        self.seen = 0
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        predicted = logits.argmax(dim=1)
        self.loss_sum += loss.detach().float() * len(labels)
        self.correct += (predicted == labels).sum()
        if self.num_classes:
            cell = labels * self.num_classes + predicted
            self.confusion += torch.bincount(cell, minlength=self.num_classes**2)
        self.seen += len(labels)

    def read(self) -> dict[str, Any]:
        synchronize(self.device)
        seconds = time.perf_counter() - self.start
        stats: dict[str, Any] = {
            f"{self.split}_loss": self.loss_sum.item() / self.seen,
            f"{self.split}_acc": self.correct.item() / self.seen,
            f"{self.split}_s": seconds,
            f"{self.split}_img_per_s": self.seen / seconds,
        }
        if self.num_classes:
            stats["confusion"] = self.confusion.view(self.num_classes, -1).tolist()
        return stats


def training_step(
    net: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    training: Training,
    settings: TrainerSettings,
    meter: PassMeter,
) -> torch.Tensor:
    """One optimizer step of ``net`` (the model, or its compiled form) on one batch; returns
    the batch's loss (on the device)."""
    optimizer, scheduler = training.optimizer, training.scheduler
    criterion = nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    batch_loss = torch.zeros((), device=labels.device)
    # Micro-batches add up to the batch's gradient; on CPU, smaller chunks stay in cache.
    chunk = settings.micro_batch_size or len(labels)
    for x, y in zip(images.split(chunk), labels.split(chunk)):
        with autocast(x.device, settings.precision):
            logits = net(x)
            loss = criterion(logits, y)
        (loss * len(y) / len(labels)).backward()
        batch_loss += loss.detach() * len(y) / len(labels)
        meter.add(loss, logits, y)
    if settings.grad_clip:
        nn.utils.clip_grad_norm_(training.model.parameters(), settings.grad_clip)
    optimizer.step()
    scheduler.step()
    return batch_loss


def train_one_epoch(
    net: nn.Module,
    training: Training,
    settings: TrainerSettings,
    hooks: Sequence[Hook],
    step: int,
    desc: str = "train",
) -> tuple[dict[str, float], int]:
    """One pass of ``net`` (the model, or its compiled form) over the training loader.
    Returns its loss, accuracy, seconds, images/s (and on CUDA the allocator's peak, free to
    read), and the global step it ended on. Raises ``Diverged`` at the first non-finite
    loss."""
    device = next(net.parameters()).device
    net.train()
    meter = PassMeter("train", device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # The first non-finite step is noted on the device and read only where we sync anyway.
    first_bad_step = torch.full((), -1, device=device, dtype=torch.long)
    bar = tqdm(training.loader, desc=desc, leave=False, disable=None if settings.progress else True)
    for images, labels in bar:  # disable=None above: bars only on a terminal
        images, labels = to_device(images, labels, device)
        batch_loss = training_step(net, images, labels, training, settings, meter)
        step += 1
        bad = ~torch.isfinite(batch_loss) & (first_bad_step < 0)
        first_bad_step = torch.where(bad, step, first_bad_step)
        if step % settings.log_every == 0:
            raise_if_diverged(first_bad_step)
            lr = training.scheduler.get_last_lr()[0]
            for hook in hooks:
                hook.on_step({"step/train_loss": batch_loss.item(), "step/lr": lr}, step)
    raise_if_diverged(first_bad_step)
    stats = meter.read()
    if device.type == "cuda":
        stats["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return stats, step


def raise_if_diverged(first_bad_step: torch.Tensor) -> None:
    if (bad_step := int(first_bad_step.item())) >= 0:
        raise Diverged(bad_step)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Batches,
    settings: TrainerSettings,
    num_classes: int | None = None,
    split: str = "test",
) -> dict[str, Any]:
    """Loss (with the training's label smoothing) and top-1 accuracy on a held-out ``split``
    (test, or val), with its wall time, and given ``num_classes`` its confusion matrix.
    Batches are cut into ``micro_batch_size`` chunks too (on a CPU, small chunks stay in
    cache)."""
    device = next(model.parameters()).device
    criterion = nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)
    model.eval()
    meter = PassMeter(split, device, num_classes)
    for images, labels in loader:
        images, labels = to_device(images, labels, device)
        chunk = settings.micro_batch_size or len(labels)
        for x, y in zip(images.split(chunk), labels.split(chunk)):
            with autocast(device, settings.precision):
                logits = model(x)
            meter.add(criterion(logits.float(), y), logits, y)
    return meter.read()


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loaders: Splits,
    settings: TrainerSettings,
    hooks: Sequence[Hook] = (),
    resume_from: dict[str, Any] | None = None,
    num_classes: int | None = None,
) -> None:
    """Train for ``settings.epochs``, evaluating every ``eval_interval`` epochs and after the
    last (on the validation split too, when ``loaders`` has one; the test set with a confusion
    matrix over ``num_classes``), each epoch's row handed to every hook in turn. ``resume_from``
    (a checkpoint's state) carries on after its epoch with every state (model, optimizer,
    schedule, RNGs, history) as it was then."""
    s = settings
    steps_per_epoch = len(loaders.train)
    warmup_steps = round(s.warmup_epochs * steps_per_epoch)
    scheduler = cosine_schedule(optimizer, s.epochs * steps_per_epoch, warmup_steps, s.min_lr_ratio)
    training = Training(model, optimizer, scheduler, loaders.train)
    start_epoch = 1
    if resume_from is not None:
        start_epoch = restore_checkpoint(resume_from, training) + 1
        for hook in hooks:
            hook.on_resume(resume_from["history"])
        log.info("resumed after epoch %d", start_epoch - 1)
    net = torch.compile(model) if s.compile else model
    step = (start_epoch - 1) * steps_per_epoch

    for epoch in range(start_epoch, s.epochs + 1):
        desc = f"epoch {epoch}/{s.epochs}"
        stats, step = train_one_epoch(net, training, s, hooks, step, desc)
        row = {"epoch": epoch, **stats}
        if epoch % s.eval_interval == 0 or epoch == s.epochs:
            row |= evaluate_epoch(net, loaders, s, num_classes)
            if not math.isfinite(row["test_loss"]):  # finite but exploded weights: no model
                raise Diverged(step, "test loss")
        row["lr"] = scheduler.get_last_lr()[0]
        for hook in hooks:
            hook.on_epoch(row, step, training)
        log.info(epoch_line(row, s.epochs))


def evaluate_epoch(
    net: nn.Module, loaders: Splits, settings: TrainerSettings, num_classes: int | None
) -> dict[str, Any]:
    """An evaluated epoch's numbers: the validation split's (when there is one), then the test
    set's."""
    row = {}
    if loaders.val is not None:
        row |= evaluate(net, loaders.val, settings, split="val")
    return row | evaluate(net, loaders.test, settings, num_classes)


def epoch_line(row: dict[str, float], epochs: int) -> str:
    line = (
        f"epoch {row['epoch']}/{epochs}  loss {row['train_loss']:.4f}  "
        f"train acc {row['train_acc']:.2%}  {row['train_img_per_s']:.0f} img/s"
    )
    if "val_acc" in row:
        line += f"  val acc {row['val_acc']:.2%}"
    if "test_acc" in row:
        line += f"  test acc {row['test_acc']:.2%}  test loss {row['test_loss']:.4f}"
    return line
