"""The built-in data sets as whole uint8 tensors.

Every ``load_*`` function returns ``(train, test)``, each an ``ImageSet`` of uint8 images
(N, C, H, W) and int64 labels. A config's ``data.source`` names one of them with its
arguments (conf/data/*.yaml). Image size, channels, classes and normalisation live in the data
config, or, for your own images (``vitsweep.data.folder``), are read from the training split.
"""

import gzip
import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vitsweep.errors import ConfigError, require


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8, (N, C, H, W)
    labels: torch.Tensor  # int64, (N,)
    classes: list[str] | None = None  # class names, where the data set has them

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int | None) -> "ImageSet":
        """The first ``n`` examples (all of them when ``n`` is None)."""
        if n is None:
            return self
        return ImageSet(self.images[:n], self.labels[:n], self.classes)

    def take(self, index: torch.Tensor) -> "ImageSet":
        return ImageSet(self.images[index].contiguous(), self.labels[index], self.classes)


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
    every = ImageSet(images, torch.as_tensor(table[:, 64], dtype=torch.int64))
    train, test = stratified_split(every.labels, test_fraction)
    return every.take(train), every.take(test)


# torchvision's data sets.


def _missing(name: str, root: str, err: Exception, fix: str) -> ConfigError:
    return ConfigError(f"{name} not found in '{root}' and could not be downloaded ({err}); {fix}")


def _from_torchvision(dataset, channels_first: bool = False) -> ImageSet:
    """A torchvision data set's arrays: (N, H, W), (N, H, W, C), or (N, C, H, W) as given."""
    images = torch.as_tensor(np.asarray(dataset.data))
    if images.ndim == 3:
        images = images.unsqueeze(1)
    elif not channels_first:
        images = images.permute(0, 3, 1, 2)
    labels = getattr(dataset, "targets", None)
    labels = torch.as_tensor(np.asarray(dataset.labels if labels is None else labels))
    return ImageSet(images.contiguous(), labels.to(torch.int64), getattr(dataset, "classes", None))


def _torchvision_pair(name: str, make, root: str, fix: str) -> tuple[ImageSet, ImageSet]:
    """``make(split)`` for the train and test splits, as ImageSets; one line if missing."""
    try:
        return make(True), make(False)
    except (RuntimeError, OSError) as err:
        raise _missing(name, root, err, fix) from None


def load_cifar10(root: str = "data", download: bool = True) -> tuple[ImageSet, ImageSet]:
    """CIFAR-10 through torchvision, downloaded into ``root`` on first use."""
    from torchvision.datasets import CIFAR10

    fix = "put cifar-10-python.tar.gz there, set data.root, or use data=digits offline"
    make = lambda train: _from_torchvision(CIFAR10(root, train=train, download=download))  # noqa: E731
    return _torchvision_pair("CIFAR-10", make, root, fix)


def load_cifar100(root: str = "data", download: bool = True) -> tuple[ImageSet, ImageSet]:
    """CIFAR-100 (the 100 fine classes) through torchvision, downloaded on first use."""
    from torchvision.datasets import CIFAR100

    fix = "put cifar-100-python.tar.gz there, set data.root, or use data=digits offline"
    make = lambda train: _from_torchvision(CIFAR100(root, train=train, download=download))  # noqa: E731
    return _torchvision_pair("CIFAR-100", make, root, fix)


def load_svhn(root: str = "data", download: bool = True) -> tuple[ImageSet, ImageSet]:
    """SVHN's train and test splits (digits 0-9, house numbers) through torchvision."""
    from torchvision.datasets import SVHN

    def make(train: bool) -> ImageSet:
        split = SVHN(root, split="train" if train else "test", download=download)
        return _from_torchvision(split, channels_first=True)  # SVHN keeps (N, C, H, W)

    fix = "put train_32x32.mat and test_32x32.mat there, set data.root, or use data=digits"
    return _torchvision_pair("SVHN", make, root, fix)


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

    fix = "run `apt-get install dataset-fashion-mnist`, set data.root, or use data=digits"
    if system_dir and Path(system_dir).is_dir():
        try:
            _copy_system_fashion_mnist(Path(system_dir), Path(root))
        except OSError as err:  # a root that is a file, or cannot be written
            raise _missing("Fashion-MNIST", root, err, fix) from None
    make = lambda train: _from_torchvision(FashionMNIST(root, train=train, download=download))  # noqa: E731
    return _torchvision_pair("Fashion-MNIST", make, root, fix)
