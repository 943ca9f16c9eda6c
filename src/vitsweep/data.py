"""Data sets as whole uint8 tensors, and a loader that batches and augments them on the device.

Every ``load_*`` function returns ``(train, test)``, each an ``ImageSet`` of uint8 images
(N, C, H, W) and int64 labels. Image size, channels, classes and normalisation live in the
data config (conf/data/*.yaml), never in a model.
"""

import gzip
import importlib.util
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from vitsweep.errors import ConfigError, require, require_each


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8, (N, C, H, W)
    labels: torch.Tensor  # int64, (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int | None) -> "ImageSet":
        """The first ``n`` examples (all of them when ``n`` is None)."""
        return self if n is None else ImageSet(self.images[:n], self.labels[:n])


def _from_torchvision(dataset) -> ImageSet:
    images = torch.as_tensor(np.asarray(dataset.data))
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    labels = torch.as_tensor(np.asarray(dataset.targets), dtype=torch.int64)
    return ImageSet(images.contiguous(), labels)


def stratified_split(
    labels: torch.Tensor, test_fraction: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and test indices holding ``test_fraction`` of every class in the test split."""
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in labels.unique(sorted=True):
        members = (labels == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=g)]
        n_test = round(len(members) * test_fraction)
        test.append(members[:n_test])
        train.append(members[n_test:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def load_digits(image_size: int = 32, test_fraction: float = 0.2) -> tuple[ImageSet, ImageSet]:
    """scikit-learn's bundled 8x8 digits (its CSV, read directly, so a run imports neither
    scikit-learn nor pandas), upsampled to ``image_size`` and repeated to RGB, with a fixed
    stratified split."""
    require(image_size >= 1, "data.image_size", image_size, "a positive integer")
    require(0 < test_fraction < 1, "data.source.test_fraction", test_fraction, "a number in (0, 1)")
    sklearn = importlib.util.find_spec("sklearn")
    if sklearn is None or sklearn.origin is None:
        raise ConfigError("data=digits needs scikit-learn: pip install scikit-learn")
    table = np.loadtxt(Path(sklearn.origin).parent / "datasets/data/digits.csv.gz", delimiter=",")
    images = torch.as_tensor(table[:, :64], dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    images = F.interpolate(images, size=image_size, mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1)
    labels = torch.as_tensor(table[:, 64], dtype=torch.int64)
    split = stratified_split(labels, test_fraction)
    return tuple(ImageSet(images[i].contiguous(), labels[i]) for i in split)  # type: ignore[return-value]


def _missing(name: str, root: str, err: Exception, fix: str) -> ConfigError:
    return ConfigError(f"{name} not found in '{root}' and could not be downloaded ({err}); {fix}")


def load_cifar10(root: str = "data", download: bool = True) -> tuple[ImageSet, ImageSet]:
    """CIFAR-10 through torchvision, downloaded into ``root`` on first use."""
    from torchvision.datasets import CIFAR10

    try:
        train, test = (CIFAR10(root, train=t, download=download) for t in (True, False))
    except (RuntimeError, OSError) as err:
        fix = "put cifar-10-python.tar.gz there, set data.root, or use data=digits offline"
        raise _missing("CIFAR-10", root, err, fix) from None
    return _from_torchvision(train), _from_torchvision(test)


def _copy_system_fashion_mnist(system_dir: Path, root: Path) -> None:
    """torchvision wants the four idx files decompressed in <root>/FashionMNIST/raw."""
    raw = root / "FashionMNIST" / "raw"
    for gz in sorted(system_dir.glob("*-ubyte.gz")):
        target = raw / gz.name.removesuffix(".gz")
        if not target.exists():
            raw.mkdir(parents=True, exist_ok=True)
            with gzip.open(gz) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)


def load_fashion_mnist(
    root: str = "data", download: bool = True, system_dir: str | None = None
) -> tuple[ImageSet, ImageSet]:
    """Fashion-MNIST through torchvision, from Debian's package files when they are there."""
    from torchvision.datasets import FashionMNIST

    if system_dir and Path(system_dir).is_dir():
        _copy_system_fashion_mnist(Path(system_dir), Path(root))
    try:
        train, test = (FashionMNIST(root, train=t, download=download) for t in (True, False))
    except (RuntimeError, OSError) as err:
        fix = "run `apt-get install dataset-fashion-mnist`, set data.root, or use data=digits"
        raise _missing("Fashion-MNIST", root, err, fix) from None
    return _from_torchvision(train), _from_torchvision(test)


class DeviceLoader:
    """Batches of a uint8 ``ImageSet`` kept whole on the training device.

    Shuffling is a device-side permutation; augmentation (random crop with zero padding and
    horizontal flip, each drawn per image) and normalisation run on whole batches, so there
    are no worker processes and no per-image Python. Seeded: the same seed gives the same
    batches, epoch after epoch.
    """

    def __init__(
        self,
        data: ImageSet,
        batch_size: int,
        mean: list[float],
        std: list[float],
        device: torch.device,
        train: bool = False,
        augment: bool = False,
        seed: int = 0,
        pad: int = 4,
    ) -> None:
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)
        self.batch_size = batch_size
        self.train = train
        self.augment = augment and train
        self.pad = pad
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shuffling and augmentation RNG, for checkpoints."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])

    def __len__(self) -> int:
        n, b = len(self.labels), self.batch_size
        # Training drops a ragged last batch (a batch of 1 upsets statistics); eval keeps all.
        return max(n // b, 1) if self.train else -(-n // b)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        order = (
            torch.randperm(n, device=self.labels.device, generator=self.generator)
            if self.train
            else torch.arange(n, device=self.labels.device)
        )
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            images = self.images[idx]
            if self.augment:
                images = random_flip(random_crop(images, self.pad, self.generator), self.generator)
            yield (images.float() - self.mean) / self.std, self.labels[idx]


def random_crop(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``pad`` and cut a random window of the original size from each image."""
    b, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    dy, dx = torch.randint(0, 2 * pad + 1, (2, b, 1), device=images.device, generator=generator)
    rows = (dy + torch.arange(h, device=images.device))[:, :, None]  # (B, H, 1)
    cols = (dx + torch.arange(w, device=images.device))[:, None, :]  # (B, 1, W)
    batch = torch.arange(b, device=images.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


class PILImageSet(torch.utils.data.Dataset):
    """An ``ImageSet`` served one PIL image at a time through torchvision transforms: the
    classic per-image pipeline (and the seed's), kept for comparison with ``DeviceLoader``."""

    def __init__(self, data: ImageSet, transform: Callable) -> None:
        self.data = data
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        pixels = self.data.images[i].permute(1, 2, 0).numpy()
        image = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
        return self.transform(image), int(self.data.labels[i])


def torchvision_loader(
    data: ImageSet,
    batch_size: int,
    mean: list[float],
    std: list[float],
    train: bool = False,
    augment: bool = False,
    workers: int = 0,
    pad: int = 4,
) -> torch.utils.data.DataLoader:
    """torchvision transforms per PIL image in a DataLoader: crop, flip, to tensor, normalise."""
    from torchvision import transforms

    size = data.images.shape[-1]
    steps = [transforms.RandomCrop(size, padding=pad), transforms.RandomHorizontalFlip()]
    transform = transforms.Compose(
        [
            *(steps if augment and train else []),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    return torch.utils.data.DataLoader(
        PILImageSet(data, transform),
        batch_size=batch_size,
        shuffle=train,
        drop_last=train,
        num_workers=workers,
    )


@dataclass
class DataSettings:
    """The ``data:`` block (conf/data/*.yaml); each range is checked when it is built."""

    source: dict[str, Any]  # what loads the set: a _target_ and its arguments
    name: str
    image_size: int
    channels: int
    num_classes: int
    mean: list[float]
    std: list[float]
    root: str = "data"
    subset: int | None = None  # keep the first N images of each split
    augment: bool = True
    loader: str = "device"
    workers: int = 0

    def __post_init__(self) -> None:
        d, per_channel = self, f"one number per channel ({self.channels})"
        require_each("data", [
            ("image_size", d.image_size, d.image_size >= 1, "a positive integer"),
            ("channels", d.channels, d.channels >= 1, "a positive integer"),
            ("num_classes", d.num_classes, d.num_classes >= 1, "a positive integer"),
            ("mean", d.mean, len(d.mean) == d.channels, per_channel),
            ("std", d.std, len(d.std) == d.channels, per_channel),
            ("std", d.std, all(s > 0 for s in d.std), "positive numbers"),
            ("subset", d.subset, d.subset is None or d.subset >= 1, "a positive integer or null"),
            ("loader", d.loader, d.loader in ("device", "torchvision"), "device or torchvision"),
            ("workers", d.workers, d.workers >= 0, "an integer >= 0"),
        ])  # fmt: skip


def check_matches_config(images: ImageSet, data: DataSettings) -> None:
    """The data set loaded is the one the config describes (the model was sized from it)."""
    _, channels, height, width = images.images.shape
    require(channels == data.channels, "data.channels", data.channels,
            f"{channels}: the data set's images have {channels} channel(s)")  # fmt: skip
    require(height == width == data.image_size, "data.image_size", data.image_size,
            f"{height}: the data set's images are {height}x{width}")  # fmt: skip
    top = int(images.labels.max()) if len(images) else -1
    require(top < data.num_classes, "data.num_classes", data.num_classes,
            f"at least {top + 1}: the data set has labels up to {top}")  # fmt: skip


def build_loaders(
    data: DataSettings,
    batch_size: int,
    eval_batch_size: int,
    device: torch.device,
    seed: int,
) -> tuple[DeviceLoader | torch.utils.data.DataLoader, ...]:
    """Train and test loaders as the data config asks: ``loader: device`` (the default; the
    whole set on the device, batched augmentation) or ``loader: torchvision`` (per image)."""
    train, test = (s.head(data.subset) for s in instantiate(data.source))
    check_matches_config(train, data)
    check_matches_config(test, data)
    stats = {"mean": list(data.mean), "std": list(data.std)}
    if data.loader == "torchvision":
        return (
            torchvision_loader(
                train, batch_size, **stats, train=True, augment=data.augment, workers=data.workers
            ),
            torchvision_loader(test, eval_batch_size, **stats, workers=data.workers),
        )
    return (
        DeviceLoader(
            train, batch_size, **stats, device=device, train=True, augment=data.augment, seed=seed
        ),
        DeviceLoader(test, eval_batch_size, **stats, device=device),
    )
