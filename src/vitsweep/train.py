"""The training loop: plain PyTorch, read top to bottom.

fit() runs epochs of train_one_epoch() and evaluate(), hands each epoch's row to the run
record and the tracker, and checkpoints after every epoch. Nothing here knows which model,
data set or logger it was given.
"""

import contextlib
import inspect
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from tqdm import tqdm

from vitsweep.checkpoint import Checkpoint
from vitsweep.errors import ConfigError, Diverged
from vitsweep.measure import peak_memory_mb, reset_peak_memory
from vitsweep.record import RunRecord
from vitsweep.tracking import NullTracker

log = logging.getLogger(__name__)
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]  # a DeviceLoader or a DataLoader


@dataclass
class TrainerSettings:
    """The `trainer:` block of conf/config.yaml."""

    epochs: int = 40  # 0: build, size and record without training
    batch_size: int = 128
    micro_batch_size: int | None = None  # split each batch (same gradient; faster on CPU)
    eval_batch_size: int = 512
    precision: str = "auto"  # auto (bf16 autocast on CUDA, else fp32) | fp32 | bf16
    compile: bool = False  # torch.compile the model
    label_smoothing: float = 0.1
    warmup_epochs: float = 0
    min_lr_ratio: float = 0.01
    grad_clip: float | None = None  # clip the gradient norm to this
    eval_interval: int = 1
    log_every: int = 10
    progress: bool = True
    resume: bool = False  # continue from the run directory's checkpoint

    def __post_init__(self) -> None:
        """Every trainer setting is checked before any data loads or W&B starts."""
        checks = [
            (self.epochs >= 0, f"trainer.epochs must be >= 0 (0 sizes only), got {self.epochs}"),
            (self.batch_size > 0, f"trainer.batch_size must be positive, got {self.batch_size}"),
            (self.eval_batch_size > 0, "trainer.eval_batch_size must be positive"),
            (self.micro_batch_size is None or self.micro_batch_size > 0,
             "trainer.micro_batch_size must be positive or null"),
            (self.precision in ("auto", "fp32", "bf16"),
             f"trainer.precision must be auto, fp32 or bf16, got '{self.precision}'"),
            (self.eval_interval > 0, "trainer.eval_interval must be positive"),
            (self.log_every > 0, "trainer.log_every must be positive"),
            (self.grad_clip is None or self.grad_clip > 0, "trainer.grad_clip must be positive"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


def build_optimizer(
    factory: Callable[..., torch.optim.Optimizer], model: nn.Module, device: torch.device
) -> torch.optim.Optimizer:
    """The configured optimizer, fused into one kernel on CUDA where it offers that."""
    lr = factory.keywords.get("lr") if isinstance(factory, partial) else None
    if lr is not None and lr <= 0:
        raise ConfigError(f"optim.lr must be positive, got {lr}")
    target = factory.func if isinstance(factory, partial) else factory
    fused = device.type == "cuda" and "fused" in inspect.signature(target).parameters
    return factory(model.parameters(), **({"fused": True} if fused else {}))


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


def _to_device(images: torch.Tensor, labels: torch.Tensor, device: torch.device):
    """A no-op for the device-resident loader; a copy for torchvision's DataLoader."""
    if device.type == "cuda" and images.ndim == 4:
        images = images.contiguous(memory_format=torch.channels_last)  # faster conv stems
    return images.to(device, non_blocking=True), labels.to(device, non_blocking=True)


@dataclass
class StepContext:
    """What one training step needs besides the batch."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    criterion: nn.Module
    autocast: Callable[[], contextlib.AbstractContextManager]
    settings: TrainerSettings


class PassMeter:
    """Loss, accuracy and throughput of one pass over a loader. Sums stay on the device (an
    .item() per step would stall a GPU every batch) and are read once, at the end."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.seen = 0
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.loss_sum += loss.detach().float() * len(labels)
        self.correct += (logits.argmax(dim=1) == labels).sum()
        self.seen += len(labels)

    def read(self, metric: str, timing: str) -> dict[str, float]:
        _sync(self.device)
        seconds = time.perf_counter() - self.start
        return {
            f"{metric}_loss": self.loss_sum.item() / self.seen,
            f"{metric}_acc": self.correct.item() / self.seen,
            f"{timing}_s": seconds,
            f"{timing}_img_per_s": self.seen / seconds,
        }


def train_one_epoch(
    model: nn.Module,
    loader: Batches,
    ctx: StepContext,
    on_step: Callable[[torch.Tensor], None],
    progress: tqdm,
) -> dict[str, float]:
    """One pass over the training set; returns loss, accuracy, seconds and images/s."""
    device = next(model.parameters()).device
    model.train()
    meter = PassMeter(device)
    for images, labels in loader:
        images, labels = _to_device(images, labels, device)
        ctx.optimizer.zero_grad(set_to_none=True)
        # Micro-batches add up to the batch's gradient; on CPU, smaller chunks stay in cache.
        chunk = ctx.settings.micro_batch_size or len(labels)
        batch_loss = torch.zeros((), device=device)
        for x, y in zip(images.split(chunk), labels.split(chunk)):
            with ctx.autocast():
                logits = model(x)
                loss = ctx.criterion(logits, y)
            share = len(y) / len(labels)
            (loss * share).backward()
            batch_loss += loss.detach() * share
            meter.add(loss, logits, y)
        if ctx.settings.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), ctx.settings.grad_clip)
        ctx.optimizer.step()
        ctx.scheduler.step()
        on_step(batch_loss)
        progress.update(1)
    return meter.read("train", "train")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Batches,
    criterion: nn.Module,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> dict[str, float]:
    """Loss and top-1 accuracy on the test set, with its wall time."""
    device = next(model.parameters()).device
    model.eval()
    meter = PassMeter(device)
    for images, labels in loader:
        images, labels = _to_device(images, labels, device)
        with autocast():
            logits = model(images)
        meter.add(criterion(logits.float(), labels), logits, labels)
    return meter.read("test", "eval")


def fit(
    model: nn.Module,
    train_loader: Batches,
    test_loader: Batches,
    optimizer: torch.optim.Optimizer,
    settings: TrainerSettings,
    record: RunRecord,
    tracker: NullTracker,
    checkpoint: Checkpoint | None = None,
) -> None:
    """Train for ``settings.epochs``, evaluating every ``eval_interval`` epochs and the last,
    checkpointing after each epoch. With a checkpoint to resume from, carry on after its
    epoch with every state (model, optimizer, schedule, RNGs, history) as it was then."""
    s = settings
    device = next(model.parameters()).device
    steps_per_epoch = len(train_loader)
    scheduler = cosine_schedule(
        optimizer, s.epochs * steps_per_epoch, round(s.warmup_epochs * steps_per_epoch),
        s.min_lr_ratio,
    )  # fmt: skip
    criterion = nn.CrossEntropyLoss(label_smoothing=s.label_smoothing)
    autocast = autocast_for(device, s.precision)
    ctx = StepContext(optimizer, scheduler, criterion, autocast, s)
    trained = torch.compile(model) if s.compile else model
    start_epoch = 1
    if checkpoint is not None and s.resume and checkpoint.exists():
        start_epoch = checkpoint.load(model, optimizer, scheduler, train_loader, record) + 1
        log.info("resumed after epoch %d from %s", start_epoch - 1, checkpoint.path)
    step = (start_epoch - 1) * steps_per_epoch
    first_bad_step = torch.full((), -1, device=device, dtype=torch.long)

    def on_step(loss: torch.Tensor) -> None:
        nonlocal step
        step += 1
        # Note the first non-finite step on the device; look only when syncing anyway.
        bad = (~torch.isfinite(loss)) & (first_bad_step < 0)
        first_bad_step.copy_(torch.where(bad, step, first_bad_step))
        if step % s.log_every == 0:
            check_finite()
            lr = scheduler.get_last_lr()[0]
            tracker.log({"train/step_loss": loss.item(), "train/lr": lr}, step=step)

    def check_finite() -> None:
        if (bad_step := int(first_bad_step.item())) >= 0:
            raise Diverged(bad_step)

    for epoch in range(start_epoch, s.epochs + 1):
        reset_peak_memory(device)
        # disable=None: bars only on a terminal, so logs and CI output stay clean.
        with tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{s.epochs}", leave=False,
                  disable=None if s.progress else True) as bar:  # fmt: skip
            stats = train_one_epoch(trained, train_loader, ctx, on_step, bar)
        check_finite()
        row = {"epoch": epoch, **stats}
        if epoch % s.eval_interval == 0 or epoch == s.epochs:
            row |= evaluate(trained, test_loader, criterion, autocast)
        row["lr"] = scheduler.get_last_lr()[0]
        row["peak_mem_mb"] = peak_memory_mb(device)
        record.add_epoch(row)
        if checkpoint is not None:
            checkpoint.save(epoch, model, optimizer, scheduler, train_loader, record)
        tracker.log({f"epoch/{k}": v for k, v in row.items()}, step=step)
        log.info(_epoch_line(row, s.epochs))


def _epoch_line(row: dict[str, float], epochs: int) -> str:
    line = (
        f"epoch {row['epoch']}/{epochs}  loss {row['train_loss']:.4f}  "
        f"train acc {row['train_acc']:.2%}  {row['train_img_per_s']:.0f} img/s"
    )
    if "test_acc" in row:
        line += f"  test acc {row['test_acc']:.2%}  test loss {row['test_loss']:.4f}"
    return line
