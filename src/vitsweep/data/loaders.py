"""The loaders that batch and augment a data set for training: by default the whole set on the
training device with batched augmentation (``DeviceLoader``), or torchvision's per-image
pipeline (``torchvision_loader``). ``build_loaders`` makes a run's from its data settings."""

from collections.abc import Callable, Iterator
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F

from vitsweep.data.sets import ImageSet
from vitsweep.data.splits import Splits
from vitsweep.errors import require
from vitsweep.settings import DataSettings


class Normalise(NamedTuple):
    """The per-channel mean and std images are normalised with (of pixels scaled to [0, 1])."""

    mean: list[float]
    std: list[float]


class Augment(NamedTuple):
    """How a training loader augments its images, each draw per image. A loader given one
    trains: it shuffles and drops a ragged last batch; one without serves held-out images in
    order, as they are."""

    crop_padding: int = 0  # a random crop of the image zero-padded by this; 0: no crop
    flip: bool = False  # a random horizontal flip


class DeviceLoader:
    """Batches of a uint8 ``ImageSet`` kept whole on the training device.

    Shuffling is a device-side permutation; augmentation of training batches (``augment``) and
    normalisation run on whole batches, so there are no worker processes and no per-image
    Python. Seeded: the same seed gives the same batches, epoch after epoch.
    """

    def __init__(
        self,
        data: ImageSet,
        batch_size: int,
        normalise: Normalise,
        device: torch.device,
        augment: Augment | None = None,
        seed: int = 0,
    ) -> None:
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)
        self.batch_size = batch_size
        self.train = augment is not None
        self.crop_padding, self.flip = augment or Augment()
        mean, std = normalise
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
    normalise: Normalise,
    augment: Augment | None = None,
    workers: int = 0,
) -> torch.utils.data.DataLoader:
    """torchvision transforms per PIL image in a DataLoader: crop, flip, to tensor, normalise."""
    from torchvision import transforms

    size, train = data.images.shape[-1], augment is not None
    crop_padding, flip = augment or Augment()
    steps = []
    if crop_padding:
        steps.append(transforms.RandomCrop(size, padding=crop_padding))
    if flip:
        steps.append(transforms.RandomHorizontalFlip())
    normalize = transforms.Normalize(*normalise)
    transform = transforms.Compose([*steps, transforms.ToTensor(), normalize])
    return torch.utils.data.DataLoader(
        PILImageSet(data, transform),
        batch_size=batch_size,
        shuffle=train,
        drop_last=train,
        num_workers=workers,
    )


def check_matches_config(images: ImageSet, data: DataSettings) -> None:
    """The data set loaded is the one the config describes (the model was sized from it)."""
    _, channels, height, width = images.images.shape
    require(
        channels == data.channels,
        "data.channels",
        data.channels,
        f"{channels}: the data set's images have {channels} channel(s)",
    )
    require(
        height == width == data.image_size,
        "data.image_size",
        data.image_size,
        f"{height}: the data set's images are {height}x{width}",
    )
    top = int(images.labels.max()) if len(images) else -1
    require(
        top < data.num_classes,
        "data.num_classes",
        data.num_classes,
        f"at least {top + 1}: the data set has labels up to {top}",
    )


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
    normalise = Normalise(list(data.mean), list(data.std))
    augment = Augment(data.crop_padding, data.flip)
    if data.loader == "torchvision":
        train = torchvision_loader(sets.train, batch_size, normalise, augment, data.workers)
        held_out = partial(
            torchvision_loader,
            batch_size=eval_batch_size,
            normalise=normalise,
            workers=data.workers,
        )
    else:
        train = DeviceLoader(sets.train, batch_size, normalise, device, augment, seed)
        held_out = partial(
            DeviceLoader, batch_size=eval_batch_size, normalise=normalise, device=device
        )
    val = None if sets.val is None else held_out(sets.val)
    return Splits(train, held_out(sets.test), val)
