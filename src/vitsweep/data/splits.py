"""A data set's splits as a run loads them: train and test (the first ``subset`` images of
each), a validation split carved out of training, the sizes read from the data where the
settings leave them null, and the fingerprint that says which data a run saw."""

import dataclasses
import hashlib
import logging
from typing import Any, NamedTuple

import torch
from hydra.utils import instantiate

from vitsweep.data.sets import ImageSet, stratified_split
from vitsweep.errors import ConfigError, require
from vitsweep.settings import DataSettings

log = logging.getLogger(__name__)


class Splits(NamedTuple):
    """A data set's splits as loaded (``val``: None unless ``data.val_fraction`` is set)."""

    train: Any
    test: Any
    val: Any = None

    def present(self) -> list[Any]:
        return [split for split in self if split is not None]


def load_splits(data: DataSettings) -> Splits:
    """The train and test splits (the first ``subset`` images of each) and, with a
    ``val_fraction``, a validation split carved out of the training one: that fraction of
    every class, the same images for every run (a fixed seed), never trained on."""
    train, test = (s.head(data.subset) for s in instantiate(data.source))
    warn_of_untrained_classes(train, test, data.subset)
    if not data.val_fraction:
        return Splits(train, test)
    kept, held = stratified_split(train.labels, data.val_fraction, seed=0)
    require(
        len(kept) > 0 and len(held) > 0,
        "data.val_fraction",
        data.val_fraction,
        "a fraction that leaves images both to train and to validate on",
    )
    lost = sorted(set(train.labels[held].tolist()) - set(train.labels[kept].tolist()))
    if lost:  # every image of these classes would be held out: the model never sees one
        names = class_names(train, lost)
        few = f" (data.subset={data.subset} keeps few of them)" if data.subset else ""
        raise ConfigError(
            f"data.val_fraction={data.val_fraction} holds out every training image of class "
            f"{', '.join(names)}{few}: lower it, or keep more images"
        )
    return Splits(train.take(kept), test, train.take(held))


def class_names(images: ImageSet, labels: list[int]) -> list[str]:
    return [images.classes[c] if images.classes else str(c) for c in labels]


def warn_of_untrained_classes(train: ImageSet, test: ImageSet, subset: int | None) -> None:
    """Said in the log when the training split has no image of a class the test split has (a
    small ``data.subset``): the model is scored on classes it never saw."""
    unseen = sorted(set(test.labels.tolist()) - set(train.labels.tolist()))
    if unseen:
        kept = f"data.subset={subset} keeps" if subset else "the training split has"
        log.warning(
            "%s no training image of class %s: the test scores it all the same",
            kept,
            ", ".join(class_names(test, unseen)),
        )


def complete_settings(data: DataSettings, train: ImageSet) -> DataSettings:
    """The data settings with what was left null read from the training split: its
    channels, its number of classes, and its per-channel mean and std."""
    pixels = train.images.float().div(255).transpose(0, 1).flatten(1)  # (C, N*H*W)
    found = {
        "channels": train.images.shape[1],
        "num_classes": len(train.classes) if train.classes else int(train.labels.max()) + 1,
        "mean": [round(v, 4) for v in pixels.mean(1).tolist()],
        "std": [round(max(v, 1e-3), 4) for v in pixels.std(1).tolist()],
    }
    given = {k: v for k, v in found.items() if getattr(data, k) is None}
    return dataclasses.replace(data, **given)


def fingerprint(*splits: ImageSet | None) -> str:
    """A hash of the data exactly as it was loaded (every uint8 image and label of each split,
    in order): two runs with equal fingerprints trained and tested on the same data."""
    digest = hashlib.sha256()
    for split in (split for split in splits if split is not None):
        digest.update(split.images.contiguous().numpy().tobytes())
        digest.update(split.labels.to(torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
