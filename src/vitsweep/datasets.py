"""Data sets as whole uint8 tensors.

Every ``load_*`` function returns ``(train, test)``, each an ``ImageSet`` of uint8 images
(N, C, H, W) and int64 labels. A config's ``data.source`` names one of them with its
arguments (conf/data/*.yaml). Image size, channels, classes and normalisation live in the data
config, or, for your own images (``load_image_folder``), are read from the training split.
"""

import gzip
import importlib.util
import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vitsweep.errors import ConfigError, require

log = logging.getLogger(__name__)


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


# Your own images.

GRAY = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def _eight_bit(image: Any, gray: bool) -> Any:
    """The image as 8-bit L or RGB. 16- and 32-bit integer images are scaled from 0..65535
    and float images from 0..1 (or 0..255 when larger), not clipped, which would turn most
    pixels white."""
    from PIL import Image

    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        scale = 255 / 65535 if image.mode.startswith("I") else 255 if values.max() <= 1 else 1
        image = Image.fromarray(np.clip(values * scale, 0, 255).astype(np.uint8), "L")
    return image.convert("L" if gray else "RGB")


def _shown(paths: list[str]) -> str:
    """The first three file names, for a warning or an error."""
    return ", ".join(Path(p).name for p in paths[:3]) + (", ..." if len(paths) > 3 else "")


def _holds(outer: str, inner: str) -> bool:
    """Whether the real path ``outer`` is ``inner`` or one of its parents."""
    return os.path.commonpath([outer, inner]) == outer


def _walk(top: str, tree: list[str], unfollowed: list[str]) -> list[tuple[str, list[str]]]:
    """(folder, file names) for every folder under ``top``. A link to a folder met on the way
    is followed only where its real target lies outside ``tree`` (the real paths already in
    the data set) and holds none of it; each one followed joins ``tree``. So a loop
    (``cat/loop -> ..``) or another class linked in (``dog/cats -> ../cat``) is never walked,
    while a link out to images kept elsewhere is, once; the others land in ``unfollowed``."""
    found = []
    for folder, dirs, files in os.walk(top):  # followlinks=False: the links are judged here
        found.append((folder, files))
        for name in sorted(dirs):
            link = os.path.join(folder, name)
            if not os.path.islink(link):
                continue
            real = os.path.realpath(link)
            if any(_holds(real, known) or _holds(known, real) for known in tree):
                unfollowed.append(link)
            else:
                tree.append(real)
                found += _walk(link, tree, unfollowed)
    return found


Listing = tuple[list[str], list[tuple[str, int, tuple]]]  # classes; (path, class, identity)


def _list_images(folder: Path, tree: list[str]) -> Listing:
    """The classes under ``folder`` and their image files, each real file once. torchvision's
    ImageFolder rules and order (a class is a sub-folder, by sorted name; an image is a file
    with one of its ``IMG_EXTENSIONS``), without following links round a loop.

    A class folder may itself be a link to a folder elsewhere: followed, once (one that holds
    the data set itself is refused). Links to folders met deeper are followed only out of the
    data set (``_walk``). A file is known by its device and inode, so a link or a hard link
    to a file already listed is not listed again. A file reachable under two class folders
    is ambiguous: it stays in the one it is in without a link on the way, else in the first
    by sorted name, and is counted in a warning. A class folder without image files, or with
    only files kept in another class, is one ConfigError."""
    classes = _class_folders(folder, tree)
    unfollowed = []  # links to folders not walked, for one warning
    found, owner = _find_images(folder, classes, tree, unfollowed)
    files, again, elsewhere = _keep_once(found, owner)
    _require_own_images(folder, classes, files, found)
    _warn_listing(folder, unfollowed, again, elsewhere)
    return classes, files


def _class_folders(folder: Path, tree: list[str]) -> list[str]:
    """The class folders' names, sorted, each one's real path added to ``tree``. A class
    folder that is a link is followed, unless it holds the data set itself (a loop)."""
    try:
        with os.scandir(folder) as entries:  # is_dir() follows a class folder that is a link
            classes = sorted(entry.name for entry in entries if entry.is_dir())
    except OSError as err:
        raise ConfigError(f"data.root: cannot read {folder}: {err.strerror}") from None
    if not classes:
        raise ConfigError(f"data.root: {folder} has no class folders with images (no sub-folders)")
    here = os.path.realpath(folder)
    for name in classes:
        real = os.path.realpath(folder / name)
        if _holds(real, tree[0]) or _holds(real, here):
            raise ConfigError(f"data.root: class folder {folder / name} is a link to {real}, "
                              f"which holds {folder} itself")  # fmt: skip
        tree.append(real)
    return classes


def _find_images(
    folder: Path, classes: list[str], tree: list[str], unfollowed: list[str]
) -> tuple[list[tuple[str, int, tuple]], dict[tuple, tuple[int, bool]]]:
    """Every image file found under every class folder, as (path, class, identity), and each
    identity's owner: the class it is in without a link on the way, else the first."""
    here = os.path.realpath(folder)
    found, owner = [], {}  # identity -> (class, there without a link)
    for index, name in enumerate(classes):
        for path in _class_images(folder, name, tree, unfollowed):
            identity = _identity(path)
            inside = os.path.realpath(path) == os.path.join(here, os.path.relpath(path, folder))
            found.append((path, index, identity))
            if identity not in owner or inside and not owner[identity][1]:
                owner[identity] = (index, inside)
    return found, owner


def _class_images(folder: Path, name: str, tree: list[str], unfollowed: list[str]) -> list[str]:
    """The image files under class folder ``name``, in torchvision's order; none is one
    ConfigError."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    walked = sorted(_walk(str(folder / name), tree, unfollowed))
    listed = [os.path.join(where, file) for where, names in walked for file in sorted(names)]
    images = [path for path in listed if has_file_allowed_extension(path, IMG_EXTENSIONS)]
    if not images:
        raise ConfigError(f"data.root: {folder} has no class folders with images for class "
                          f"'{name}': {folder / name} holds no file ending in "
                          f"{', '.join(IMG_EXTENSIONS)}")  # fmt: skip
    return images


def _identity(path: str) -> tuple:
    """A file's device and inode, the same through any link or hard link to it."""
    try:
        stat = os.stat(path)
        return (stat.st_dev, stat.st_ino)
    except OSError:  # a broken link: listed, then skipped as unreadable
        return ("path", path)


def _keep_once(
    found: list[tuple[str, int, tuple]], owner: dict[tuple, tuple[int, bool]]
) -> tuple[list[tuple[str, int, tuple]], int, list[str]]:
    """Each real file once, in its owner's class; also how many were reached ``again`` in
    the same class, and the paths left out as ``elsewhere`` (kept in another class)."""
    files, kept, again, elsewhere = [], set(), 0, []
    for path, index, identity in found:
        if owner[identity][0] != index:
            elsewhere.append(path)
        elif identity in kept:
            again += 1
        else:
            kept.add(identity)
            files.append((path, index, identity))
    return files, again, elsewhere


def _require_own_images(folder: Path, classes: list[str], files: list, found: list) -> None:
    """One ConfigError for the first class left with no files of its own."""
    own, every = Counter(file[1] for file in files), Counter(file[1] for file in found)
    for index, name in enumerate(classes):
        if not own[index]:
            raise ConfigError(f"data.root: {folder} has no images of its own for class '{name}': "
                              f"its {every[index]} files are all under another class folder "
                              f"too")  # fmt: skip


def _warn_listing(folder: Path, unfollowed: list[str], again: int, elsewhere: list[str]) -> None:
    """One warning for each kind of link not followed or file not listed twice."""
    if unfollowed:
        log.warning("%s: %d link(s) to folders already in the data set (or holding it) not "
                    "followed (%s)", folder, len(unfollowed), _shown(unfollowed))  # fmt: skip
    if again:
        log.warning("%s: %d file(s) reached twice in one class folder (links) read once",
                    folder, again)  # fmt: skip
    if elsewhere:
        log.warning("%s: %d file(s) also under another class folder left out of this one (%s)",
                    folder, len(elsewhere), _shown(elsewhere))  # fmt: skip


def _read_images(
    folder: Path, listing: Listing, image_size: int, names: list[str] | None = None
) -> ImageSet:
    """The listed images, resized (shorter side) and centre-cropped to ``image_size``, each
    labelled by its class's place in ``names`` (the listing's own classes when None). Gray if
    every image is, else RGB. A file that cannot be read is skipped and counted, never a crash
    halfway; a class none of whose files can be read is one ConfigError, since it would still
    count as a class the model is asked to tell apart."""
    from PIL import Image
    from torchvision.transforms import functional as TF
    from tqdm import tqdm

    classes, files = listing
    names = names or classes
    modes, skipped = _image_modes(files)
    gray = bool(modes) and all(mode in GRAY for mode in modes.values())
    images, labels, read = [], [], Counter()
    for path, label, _ in tqdm(files, desc=f"reading {folder.name}", leave=False, disable=None):
        if path not in modes:
            continue
        try:
            with Image.open(path) as image:
                picture = _eight_bit(image, gray)
        except Exception:  # a header that opens, on data that does not
            skipped.append(path)
            continue
        picture = TF.center_crop(TF.resize(picture, image_size), image_size)
        images.append(TF.pil_to_tensor(picture))
        labels.append(names.index(classes[label]))
        read[label] += 1
    _require_readable(folder, listing, read)
    if skipped:
        log.warning("%s: %d unreadable file(s) skipped (%s)", folder, len(skipped), _shown(skipped))
    stacked = torch.stack(images)
    return ImageSet(stacked, torch.tensor(labels, dtype=torch.int64), list(names))


def _image_modes(files: list[tuple[str, int, tuple]]) -> tuple[dict[str, str], list[str]]:
    """Each file's PIL mode, read from its header alone, and the files whose header cannot
    be opened."""
    from PIL import Image

    modes, skipped = {}, []
    for path, _, _ in files:
        try:
            with Image.open(path) as image:
                modes[path] = image.mode
        except Exception:
            skipped.append(path)
    return modes, skipped


def _require_readable(folder: Path, listing: Listing, read: Counter) -> None:
    """One ConfigError for the first class (by label) none of whose files could be read."""
    classes, files = listing
    for label, count in sorted(Counter(label for _, label, _ in files).items()):
        if not read[label]:
            unread = [path for path, of, _ in files if of == label]
            raise ConfigError(f"data.root: {folder} has no readable images for class "
                              f"'{classes[label]}': its {count} files in {folder / classes[label]} "
                              f"could not be read ({_shown(unread)})")  # fmt: skip


def load_image_folder(
    root: str, image_size: int = 32, test_fraction: float = 0.2, seed: int = 0
) -> tuple[ImageSet, ImageSet]:
    """Your own images: ``root`` holds one sub-folder per class (torchvision's ImageFolder
    layout), either inside ``train/`` and ``test/`` (or ``val/``), or directly, in which case
    a fixed stratified split (``test_fraction`` of every class, seeded) makes the test set.
    Both splits are shuffled once with ``seed``.

    Every real file is read once, whatever links lead to it (``_list_images``): a link loop
    is never walked, a file under two class folders stays in the first by sorted name, the
    stratified split is made over distinct files, and a file of ``test/`` that is also in
    ``train/`` (a link or hard link) is dropped from the test split with a warning. A class
    folder with no image files, or none readable, is one ConfigError."""
    folder = Path(root)
    require(folder.is_dir(), "data.root", root, "a directory of class folders")
    require(image_size >= 1, "data.image_size", image_size, "a positive integer")
    tree = [os.path.realpath(folder)]  # real paths in the data set: links into them not walked
    splits = [name for name in ("train", "test", "val", "valid") if (folder / name).is_dir()]
    if splits:  # never read a train/ folder as a class: say which layouts there are
        train, test = _read_split_folders(folder, root, splits, tree, image_size)
    else:
        train, test = _read_and_split(folder, tree, image_size, test_fraction, seed)
    require(len(train.classes) >= 2, "data.root", root,
            f"at least two class folders to tell apart (found {train.classes})")  # fmt: skip
    require(len(test) > 0, "data.source.test_fraction", test_fraction,
            "a fraction that leaves images to test on")  # fmt: skip
    # Listed class by class; shuffled once, data.subset takes from every class.
    g = torch.Generator().manual_seed(seed)
    train, test = (split.take(torch.randperm(len(split), generator=g)) for split in (train, test))
    log.info("%s: %d training and %d test images of %d classes (%s)", root, len(train),
             len(test), len(train.classes), ", ".join(train.classes))  # fmt: skip
    return train, test


def _read_split_folders(
    folder: Path, root: str, splits: list[str], tree: list[str], image_size: int
) -> tuple[ImageSet, ImageSet]:
    """The ``train/`` and ``test/`` (or ``val/``) splits under ``folder``, the test split's
    classes among the training split's, and labelled as they are there."""
    held_out = next((name for name in splits if name != "train"), None)
    require("train" in splits and held_out is not None, "data.root", root,
            "class folders, or train/ and test/ (or val/) holding them")  # fmt: skip
    train_dir, test_dir = folder / "train", folder / held_out
    tree += [os.path.realpath(train_dir), os.path.realpath(test_dir)]
    train_listing = _list_images(train_dir, tree)
    test_classes, test_files = _list_images(test_dir, tree)
    missing = sorted(set(test_classes) - set(train_listing[0]))
    extra = f"the training split's classes; {test_dir} also has {', '.join(missing)}"
    require(not missing, "data.root", str(test_dir), extra)
    test_files = _drop_files_in_train(test_dir, train_listing[1], test_files)
    require(bool(test_files), "data.root", root,
            f"images in {held_out}/ that are not also in train/")  # fmt: skip
    train = _read_images(train_dir, train_listing, image_size)
    test = _read_images(test_dir, (test_classes, test_files), image_size, train.classes)
    return train, test


def _drop_files_in_train(test_dir: Path, train_files: list, test_files: list) -> list:
    """The test split's files less those also in ``train/`` (a link or hard link)."""
    # A file in both splits is dropped from the test split, with a warning, rather than
    # refused: the honest split is unambiguous (the model trains on it either way), and
    # a refusal would only make the user delete these very files by hand.
    in_train = {identity for _, _, identity in train_files}
    shared = [path for path, _, identity in test_files if identity in in_train]
    if shared:
        log.warning("%s: %d file(s) also in train/ (links) dropped from the test split (%s)",
                    test_dir, len(shared), _shown(shared))  # fmt: skip
    return [file for file in test_files if file[2] not in in_train]


def _read_and_split(
    folder: Path, tree: list[str], image_size: int, test_fraction: float, seed: int
) -> tuple[ImageSet, ImageSet]:
    """The class folders directly under ``folder``, split by a fixed stratified split:
    ``test_fraction`` of every class, seeded, over distinct files."""
    require(0 < test_fraction < 1, "data.source.test_fraction", test_fraction,
            "a number in (0, 1)")  # fmt: skip
    every = _read_images(folder, _list_images(folder, tree), image_size)
    train_index, test_index = stratified_split(every.labels, test_fraction, seed)
    return every.take(train_index), every.take(test_index)
