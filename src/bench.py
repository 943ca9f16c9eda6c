"""Training and evaluation throughput of the presets, against a nanovit-style reference.

    python src/bench.py                         # vit, vitl, vitx on the available device
    python src/bench.py --data synthetic        # CIFAR-shaped random images (no data set needed)

For each preset it times the harness's own path (device-resident data with batched
augmentation, SDPA, bf16 autocast and a fused optimizer on CUDA, micro-batches on CPU)
against a nanovit-style reference (the attention matrix written out, torch's own dropout,
per-image PIL torchvision transforms through a DataLoader, fp32, eager), both through the
same train_one_epoch() and evaluate() that training uses, in the same process and alternating
round by round, so that the ratio holds on a noisy machine. Where timm is installed, its
VisionTransformer in vit's shape, fed by our data path, is a second reference. It measures the
device's own matrix-multiply peak first and reports each path's fraction of it. Writes
results/bench/<device>.md and .csv.
"""

import argparse
import importlib.util
import statistics
from functools import partial
from pathlib import Path

import pandas as pd
import torch
from hydra.utils import instantiate
from torch import nn
from tqdm import tqdm

from vitsweep.checkpoint import Training
from vitsweep.config import compose_config
from vitsweep.data import Augment, DeviceLoader, ImageSet, Normalise, torchvision_loader
from vitsweep.device import device_label, matmul_seconds, resolve_device, resolve_precision
from vitsweep.files import slug
from vitsweep.measure import describe_model, training_step_peak_mb
from vitsweep.settings import TrainerSettings
from vitsweep.train import (
    PassMeter,
    build_optimizer,
    cosine_schedule,
    evaluate,
    to_device,
    train_one_epoch,
    training_step,
)

ROOT = Path(__file__).resolve().parents[1]
AUGMENT = Augment(crop_padding=4, flip=True)  # every path's training images


def load_images(name: str, count: int) -> tuple[ImageSet, list[float], list[float]]:
    """``count`` CIFAR-shaped training images: digits (offline, real), cifar10, or random."""
    if name == "synthetic":
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=g)
        return ImageSet(images, torch.randint(0, 10, (count,), generator=g)), [0.5] * 3, [0.25] * 3
    data = compose_config([f"data={name}"]).data
    train, _ = instantiate(data.source)
    repeats = -(-count // len(train))  # digits: 1,438 training images, cycled if asked for more
    images, labels = train.images.repeat(repeats, 1, 1, 1), train.labels.repeat(repeats)
    return ImageSet(images[:count], labels[:count]), list(data.mean), list(data.std)


def matmul_peak(
    device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 7, budget_s: float = 20
) -> float:
    """The device's own matrix-multiply rate in GFLOP/s: the median of ``repeats`` n x n x n
    products after a warm-up, the ceiling a training step's GEMMs can approach. A device
    without fast units for ``dtype`` (bf16 on a CPU without AVX-512-BF16 or AMX runs at well
    under 1 GFLOP/s) is probed at the largest n whose products fit in ``budget_s``."""
    small = matmul_seconds(256, dtype, device, repeats=1)
    affordable = 256 * (budget_s / (repeats + 2) / max(small, 1e-9)) ** (1 / 3)
    n = min(n, max(256, int(affordable) // 256 * 256))
    return 2 * n**3 / matmul_seconds(n, dtype, device, repeats, warmup=2) / 1e9


def build_preset(preset: str, nanovit_style: bool) -> nn.Module:
    """The preset as vitsweep builds it, or as nanovit did: the attention matrix written
    out, and torch's own dropout (one random draw per element on the CPU)."""
    cfg = compose_config([f"model={preset}", "data=cifar10"])
    if nanovit_style and cfg.model.attention._target_.endswith("SoftmaxAttention"):
        cfg.model.attention.impl = "explicit"
    torch.manual_seed(0)
    model = instantiate(cfg.model, image_size=32, in_channels=3, num_classes=10)
    if nanovit_style:
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.__class__ = nn.Dropout
    return model


def timm_reference(preset: str) -> nn.Module | None:
    """timm's VisionTransformer in the vit preset's shape, where timm is installed."""
    if preset != "vit" or importlib.util.find_spec("timm") is None:
        return None
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    shape = {"img_size": 32, "patch_size": 2, "embed_dim": 128, "depth": 4, "num_heads": 8}
    return VisionTransformer(**shape, mlp_ratio=4, num_classes=10, proj_drop_rate=0.1)


class Contender:
    """One way of training a preset: a model, its loaders, its settings."""

    def __init__(self, name, model, train_loader, test_loader, settings, device):
        self.name, self.model, self.settings = name, model.to(device), settings
        self.train_loader, self.test_loader, self.device = train_loader, test_loader, device
        self.optimizer = build_optimizer(partial(torch.optim.AdamW, lr=1e-3), self.model, device)
        self.schedule = cosine_schedule(self.optimizer, 10**6, 0, 0.01)
        self.training = Training(self.model, self.optimizer, self.schedule, train_loader)
        self.train_rates, self.eval_rates, self.peak_mb = [], [], 0.0

    def cpu_step_peak_mb(self) -> float:
        """One training step on one batch, watched through the profiler (on the CPU, training
        itself measures no memory); run after a first round, when the optimizer has its
        state."""
        images, labels = next(iter(self.train_loader))
        images, labels = to_device(images, labels, self.device)
        step = partial(
            training_step,
            self.model,
            images,
            labels,
            self.training,
            self.settings,
            PassMeter("train", self.device),
        )
        return training_step_peak_mb(step, self.model, self.optimizer, self.train_loader)

    def run_round(self) -> None:
        stats, _ = train_one_epoch(self.model, self.training, self.settings, [], 0)
        if "peak_mem_mb" in stats:  # CUDA's allocator peak
            self.peak_mb = max(self.peak_mb, stats["peak_mem_mb"])
        elif not self.peak_mb:  # the CPU's: profiled once, after the warm-up round
            self.peak_mb = self.cpu_step_peak_mb()
        self.train_rates.append(stats["train_img_per_s"])
        evaluated = evaluate(self.model, self.test_loader, self.settings)
        self.eval_rates.append(evaluated["test_img_per_s"])


def bench_preset(preset, images, mean, std, args, device) -> list[dict]:
    """One preset's rows: every contender timed over ``args.rounds`` alternating rounds."""
    contenders, fast_model = make_contenders(preset, images, mean, std, args, device)
    size = describe_model(fast_model.to(device), (3, 32, 32))
    time_rounds(preset, contenders, args.rounds)
    if args.profile:
        write_profile(preset, contenders[0], args)
    return result_rows(preset, contenders, size, args)


def make_contenders(preset, images, mean, std, args, device) -> tuple[list[Contender], nn.Module]:
    """Our path, the nanovit-style reference (second: the rows are measured against it) and,
    where timm is installed, timm's model on our path; with our model, uncompiled, to
    describe."""
    steps_images = ImageSet(
        images.images[: args.steps * args.batch], images.labels[: args.steps * args.batch]
    )
    eval_images = ImageSet(images.images[: args.eval_images], images.labels[: args.eval_images])
    on_cuda = device.type == "cuda"
    fast = TrainerSettings(
        batch_size=args.batch,
        precision=resolve_precision(args.precision, device),
        progress=False,
        micro_batch_size=None if on_cuda else args.cpu_micro_batch,
    )
    reference = TrainerSettings(batch_size=args.batch, precision="fp32", progress=False)
    fast_model = build_preset(preset, nanovit_style=False)
    if on_cuda:
        fast_model = fast_model.to(memory_format=torch.channels_last)
    our_loaders = partial(device_loaders, steps_images, eval_images, mean, std, args.batch, device)
    contenders = [
        Contender(
            "vitsweep",
            torch.compile(fast_model) if args.compile else fast_model,
            *our_loaders(),
            fast,
            device,
        ),
        Contender(
            "nanovit-style reference",
            build_preset(preset, nanovit_style=True),
            torchvision_loader(steps_images, args.batch, Normalise(mean, std), AUGMENT),
            torchvision_loader(eval_images, 512, Normalise(mean, std)),
            reference,
            device,
        ),
    ]
    timm_model = timm_reference(preset)
    if timm_model is not None:  # same data path and settings as ours: only the model differs
        contenders.append(
            Contender("timm VisionTransformer", timm_model, *our_loaders(), fast, device)
        )
    return contenders, fast_model


def device_loaders(train, test, mean, std, batch, device) -> tuple[DeviceLoader, DeviceLoader]:
    """Our data path: device-resident images, the training ones augmented in batches."""
    normalise = Normalise(mean, std)
    return (
        DeviceLoader(train, batch, normalise, device, AUGMENT),
        DeviceLoader(test, 512, normalise, device),
    )


def time_rounds(preset: str, contenders: list[Contender], rounds: int) -> None:
    """A warm-up round each, its rates dropped, then ``rounds`` rounds."""
    for contender in contenders:  # warm-up: kernels, caches, allocator, compilation
        contender.run_round()
        contender.train_rates.clear()
        contender.eval_rates.clear()
    for _ in tqdm(range(rounds), desc=preset, leave=False):
        for contender in contenders:  # alternate, so both see the same machine
            contender.run_round()


def result_rows(preset, contenders, size, args) -> list[dict]:
    """One row per contender: its median rates, and their ratios to the reference's."""
    rows = []
    reference_rate = statistics.median(contenders[1].train_rates)
    for contender in contenders:
        train_rate = statistics.median(contender.train_rates)
        rows.append(
            {
                "preset": preset,
                "path": contender.name,
                "batch": args.batch,
                "micro_batch": contender.settings.micro_batch_size or args.batch,
                "precision": contender.settings.precision,
                "train_img_per_s": train_rate,
                "eval_img_per_s": statistics.median(contender.eval_rates),
                "vs_reference": train_rate / reference_rate,
                "peak_mb": contender.peak_mb,
                "params": size["params"],
                "gflops_per_image": size["flops_per_image"] / 1e9,
                # a training step is ~3 forward passes (forward, and backward's two matmuls each)
                "achieved_gflop_per_s": 3 * size["flops_per_image"] * train_rate / 1e9,
                "eval_vs_reference": statistics.median(contender.eval_rates)
                / statistics.median(contenders[1].eval_rates),
                "epoch_50k_s": 50_000 / train_rate,
            }
        )
    return rows


def write_profile(preset: str, contender: Contender, args: argparse.Namespace) -> None:
    """Where one round of our training path spends its time: the top operators."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if contender.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        contender.run_round()
    sort = "cuda_time_total" if contender.device.type == "cuda" else "cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=15, max_name_column_width=50)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"profile_{preset}_{contender.device.type}.txt"
    path.write_text(f"{preset}, {contender.name} path, one round of {args.steps} steps\n{table}")


def write_results(
    frame: pd.DataFrame, label: str, peaks: dict[str, float], args: argparse.Namespace
) -> Path:
    """results/bench/<device>.csv and .md: each path's throughput, its ratio to the nanovit-style
    reference, and its achieved fraction of the device's measured matrix-multiply peak."""
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / slug(label + ("_compile" if args.compile else ""))
    frame.to_csv(stem.with_suffix(".csv"), index=False)
    measured = ", ".join(f"{k} {v:,.0f} GFLOP/s" for k, v in peaks.items())
    lines = [
        f"# Training throughput — {label}",
        "",
        f"Data: {args.data}; batch {args.batch}; {args.steps} step(s) per round, median of "
        f"{args.rounds} alternating rounds after one warm-up round. Eval on {args.eval_images} "
        "images. GFLOPs are forward per image; achieved GFLOP/s counts a step as 3 forwards. "
        f"The device's own matrix-multiply peak (n×n×n products, n up to {args.peak_n}; smaller "
        "where the device is too slow in a precision to afford it), measured at the start: "
        f'{measured}; "of peak" is achieved over the peak of the path\'s precision. Peak MB is '
        "the tensor memory of a training step (model, gradients, optimizer state, data, and what "
        "the step allocates at its peak).",
        "",
        "| preset | path | micro-batch | precision | train img/s | × reference | eval img/s "
        "| eval × reference | peak MB | GFLOPs/img | GFLOP/s | of peak | s per 50k-image epoch |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in frame.itertuples():
        lines.append(
            f"| {r.preset} | {r.path} | {r.micro_batch} | {r.precision} | "
            f"{r.train_img_per_s:.1f} | {r.vs_reference:.2f} | {r.eval_img_per_s:.1f} | "
            f"{r.eval_vs_reference:.2f} | {r.peak_mb:.0f} | {r.gflops_per_image:.2f} | "
            f"{r.achieved_gflop_per_s:.1f} | {r.of_peak:.0%} | {r.epoch_50k_s:.1f} |"
        )
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return stem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["vit", "vitl", "vitx"])
    parser.add_argument("--data", default="digits", help="digits | cifar10 | synthetic")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--cpu-micro-batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--eval-images", type=int, default=512)
    parser.add_argument("--compile", action="store_true", help="torch.compile the fast path")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="the fast path's (auto: as a run would choose on this device)",
    )
    parser.add_argument("--profile", action="store_true", help="write each preset's op profile")
    parser.add_argument("--peak-n", type=int, default=2048, help="side of the peak probe's GEMM")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    args = parser.parse_args()

    device = resolve_device(args.device)
    peaks = {
        "fp32": matmul_peak(device, torch.float32, args.peak_n),
        "bf16": matmul_peak(device, torch.bfloat16, args.peak_n),
    }
    images, mean, std = load_images(args.data, max(args.steps * args.batch, args.eval_images))
    rows = []
    for preset in tqdm(args.presets, desc="bench"):
        rows += bench_preset(preset, images, mean, std, args, device)
    frame = pd.DataFrame(rows)
    frame["of_peak"] = frame["achieved_gflop_per_s"] / frame["precision"].map(peaks)
    write_results(frame, device_label(device), peaks, args)


if __name__ == "__main__":
    main()
