"""The data config, and the loaders that batch and augment a data set for training.

``DataSettings`` is the ``data:`` block: what the data set is (``source``, a ``load_*``
function of vitsweep.datasets), its size, channels, classes and normalisation (given, or read
from the training split), and how to augment it. ``build_loaders`` turns it into a train and a
test loader: by default the whole set on the training device with batched augmentation.
"""

import dataclasses
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from vitsweep.datasets import ImageSet, stratified_split
from vitsweep.errors import require, require_each
from vitsweep.record import free_on_resume


class DeviceLoader:
    """Batches of a uint8 ``ImageSet`` kept whole on the training device.

    Shuffling is a device-side permutation; augmentation of training batches (a random crop
    of the image zero-padded by ``crop_padding``, and a horizontal ``flip``, each drawn per
    image) and normalisation run on whole batches, so there are no worker processes and no
    per-image Python. Seeded: the same seed gives the same batches, epoch after epoch.
    """

    def __init__(
        self,
        data: ImageSet,
        batch_size: int,
        mean: list[float],
        std: list[float],
        device: torch.device,
        train: bool = False,
        crop_padding: int = 0,
        flip: bool = False,
        seed: int = 0,
    ) -> None:
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)
        self.batch_size = batch_size
        self.train = train
        self.crop_padding = crop_padding if train else 0
        self.flip = flip and train
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
            if self.crop_padding:
                images = random_crop(images, self.crop_padding, self.generator)
            if self.flip:
                images = random_flip(images, self.generator)
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
    crop_padding: int = 0,
    flip: bool = False,
    workers: int = 0,
) -> torch.utils.data.DataLoader:
    """torchvision transforms per PIL image in a DataLoader: crop, flip, to tensor, normalise."""
    from torchvision import transforms

    size = data.images.shape[-1]
    steps = []
    if train and crop_padding:
        steps.append(transforms.RandomCrop(size, padding=crop_padding))
    if train and flip:
        steps.append(transforms.RandomHorizontalFlip())
    transform = transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(mean, std)])
    return torch.utils.data.DataLoader(
        PILImageSet(data, transform), batch_size=batch_size, shuffle=train, drop_last=train,
        num_workers=workers,
    )  # fmt: skip


class Splits(NamedTuple):
    """A data set's splits as loaded (``val``: None unless ``data.val_fraction`` is set)."""

    train: Any
    test: Any
    val: Any = None

    def present(self) -> list[Any]:
        return [split for split in self if split is not None]


@dataclass
class DataSettings:
    """The ``data:`` block (conf/data/*.yaml); each range is checked when it is built.
    ``channels``, ``num_classes``, ``mean`` and ``std`` may be null: read from the training
    split (``completed``), as ``data=folder`` does."""

    source: dict[str, Any]  # what loads the set: a _target_ and its arguments
    name: str
    image_size: int
    channels: int | None = None
    num_classes: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    root: str = free_on_resume("data")
    subset: int | None = None  # keep the first N images of each split
    val_fraction: float = 0.0  # held out of the training split, stratified (0: none)
    crop_padding: int = 4  # random crop of the image zero-padded by this; 0: no crop
    flip: bool = True  # random horizontal flip (off for digits: a mirrored 2 is no 2)
    loader: str = "device"
    workers: int = free_on_resume(0)

    def __post_init__(self) -> None:
        d, positive = self, "a positive integer"
        per_channel = f"one number per channel ({self.channels})"
        require_each("data", [
            ("image_size", d.image_size, d.image_size >= 1, positive),
            ("channels", d.channels, d.channels is None or d.channels >= 1, positive),
            ("num_classes", d.num_classes, d.num_classes is None or d.num_classes >= 2,
             "an integer >= 2"),
            ("mean", d.mean, d.mean is None or d.channels is None or len(d.mean) == d.channels,
             per_channel),
            ("std", d.std, d.std is None or d.channels is None or len(d.std) == d.channels,
             per_channel),
            ("std", d.std, d.std is None or all(s > 0 for s in d.std), "positive numbers"),
            ("subset", d.subset, d.subset is None or d.subset >= 1, "a positive integer or null"),
            ("val_fraction", d.val_fraction, 0 <= d.val_fraction < 1, "a number in [0, 1)"),
            ("crop_padding", d.crop_padding, d.crop_padding >= 0, "an integer >= 0 (0: no crop)"),
            ("loader", d.loader, d.loader in ("device", "torchvision"), "device or torchvision"),
            ("workers", d.workers, d.workers >= 0, "an integer >= 0"),
        ])  # fmt: skip

    @property
    def sized_by_data(self) -> bool:
        """Whether some of the sizes come from the data itself (it must be read first)."""
        return None in (self.channels, self.num_classes, self.mean, self.std)

    def load(self) -> "Splits":
        """The train and test splits (the first ``subset`` images of each) and, with a
        ``val_fraction``, a validation split carved out of the training one: that fraction of
        every class, the same images for every run (a fixed seed), never trained on."""
        train, test = (s.head(self.subset) for s in instantiate(self.source))
        if not self.val_fraction:
            return Splits(train, test)
        kept, held = stratified_split(train.labels, self.val_fraction, seed=0)
        require(len(kept) > 0 and len(held) > 0, "data.val_fraction", self.val_fraction,
                "a fraction that leaves images both to train and to validate on")  # fmt: skip
        return Splits(train.take(kept), test, train.take(held))

    def completed(self, train: ImageSet) -> "DataSettings":
        """These settings with what was left null read from the training split: its
        channels, its number of classes, and its per-channel mean and std."""
        pixels = train.images.float().div(255).transpose(0, 1).flatten(1)  # (C, N*H*W)
        found = {
            "channels": train.images.shape[1],
            "num_classes": len(train.classes) if train.classes else int(train.labels.max()) + 1,
            "mean": [round(v, 4) for v in pixels.mean(1).tolist()],
            "std": [round(max(v, 1e-3), 4) for v in pixels.std(1).tolist()],
        }
        given = {k: v for k, v in found.items() if getattr(self, k) is None}
        return dataclasses.replace(self, **given)

    def model_sizes(self) -> dict[str, int]:
        """What the model is sized by: the image's side, its channels, the classes."""
        return {"image_size": self.image_size, "in_channels": self.channels,
                "num_classes": self.num_classes}  # fmt: skip


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


def fingerprint(*splits: ImageSet | None) -> str:
    """A hash of the data exactly as it was loaded (every uint8 image and label of each split,
    in order): two runs with equal fingerprints trained and tested on the same data."""
    digest = hashlib.sha256()
    for split in (split for split in splits if split is not None):
        digest.update(split.images.contiguous().numpy().tobytes())
        digest.update(split.labels.to(torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def build_loaders(
    data: DataSettings,
    batch_size: int,
    eval_batch_size: int,
    device: torch.device,
    seed: int,
    sets: Splits,
) -> Splits:
    """Train, test (and validation) loaders of ``sets`` as the data config asks: ``loader:
    device`` (the default; the whole set on the device, batched augmentation) or ``loader:
    torchvision`` (per image)."""
    for split in sets.present():
        check_matches_config(split, data)
    stats = {"mean": list(data.mean), "std": list(data.std)}
    augment = {"crop_padding": data.crop_padding, "flip": data.flip}
    if data.loader == "torchvision":
        train = torchvision_loader(sets.train, batch_size, **stats, train=True, **augment,
                                   workers=data.workers)  # fmt: skip
        held_out = partial(torchvision_loader, batch_size=eval_batch_size, **stats,
                           workers=data.workers)  # fmt: skip
    else:
        train = DeviceLoader(sets.train, batch_size, **stats, device=device, train=True,
                             **augment, seed=seed)  # fmt: skip
        held_out = partial(DeviceLoader, batch_size=eval_batch_size, **stats, device=device)
    val = None if sets.val is None else held_out(sets.val)
    return Splits(train, held_out(sets.test), val)
