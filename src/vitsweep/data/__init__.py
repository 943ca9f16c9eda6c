"""Data: the built-in sets and your own folders as uint8 tensors, their splits, and the loaders.

sets.py     ImageSet, and the built-in sets (digits, CIFAR-10/100, SVHN, Fashion-MNIST)
folder.py   your own images: a folder of class folders
splits.py   a run's splits (train, test, validation), sizes read from the data, fingerprints
loaders.py  the device loader and torchvision's, built from the data settings
"""

from vitsweep.data.loaders import (
    Augment,
    DeviceLoader,
    Normalise,
    build_loaders,
    torchvision_loader,
)
from vitsweep.data.sets import ImageSet
from vitsweep.data.splits import Splits, complete_settings, fingerprint, load_splits

__all__ = [
    "Augment",
    "DeviceLoader",
    "Normalise",
    "ImageSet",
    "Splits",
    "build_loaders",
    "complete_settings",
    "fingerprint",
    "load_splits",
    "torchvision_loader",
]
