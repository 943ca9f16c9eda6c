"""Your own images: a folder of class folders, read as whole uint8 tensors
(``load_image_folder``, ``data=folder``), each real file once whatever links lead to it."""

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from vitsweep.data.sets import ImageSet, stratified_split
from vitsweep.errors import ConfigError, a_few, require

log = logging.getLogger(__name__)

GRAY = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


class ImageFile(NamedTuple):
    """One listed image file: its path, its class's index (``label``) and the real file it is
    (``identity``: device and inode, the same through any link or hard link to it)."""

    path: str
    label: int
    identity: tuple


class Listing(NamedTuple):
    """A folder's class names, sorted, and its image files, class by class."""

    classes: list[str]
    files: list[ImageFile]


class Owner(NamedTuple):
    """The class a real file is kept in, and whether it is there without a link on the way."""

    label: int
    direct: bool


def _holds(outer: str, inner: str) -> bool:
    """Whether the real path ``outer`` is ``inner`` or one of its parents."""
    return os.path.commonpath([outer, inner]) == outer


@dataclass
class FolderWalk:
    """What the walks of one data set have met: the real paths already in it (``tree``, the
    root first), where a link into one of them, or holding one, is not walked; and the links
    to folders not followed (``unfollowed``) since the last listing, for one warning."""

    tree: list[str]
    unfollowed: list[str] = field(default_factory=list)

    @property
    def root(self) -> str:
        """The data set's own folder, as a real path."""
        return self.tree[0]

    def overlaps(self, real: str) -> bool:
        """Whether the real path ``real`` is in the tree, or holds a part of it."""
        return any(_holds(real, known) or _holds(known, real) for known in self.tree)

    def folders(self, top: str) -> list[tuple[str, list[str]]]:
        """(folder, file names) for every folder under ``top``. A link to a folder met on the
        way is followed only where its real target lies outside the tree and holds none of it;
        each one followed joins the tree. So a loop (``cat/loop -> ..``) or another class
        linked in (``dog/cats -> ../cat``) is never walked, while a link out to images kept
        elsewhere is, once; the others land in ``unfollowed``."""
        found = []
        for folder, dirs, files in os.walk(top):  # followlinks=False: the links are judged here
            found.append((folder, files))
            for name in sorted(dirs):
                link = os.path.join(folder, name)
                if not os.path.islink(link):
                    continue
                real = os.path.realpath(link)
                if self.overlaps(real):
                    self.unfollowed.append(link)
                else:
                    self.tree.append(real)
                    found += self.folders(link)
        return found

    def take_unfollowed(self) -> list[str]:
        """The links not followed since the last call; none are left."""
        unfollowed, self.unfollowed = self.unfollowed, []
        return unfollowed


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
    return a_few(Path(p).name for p in paths)


def _list_images(folder: Path, walk: FolderWalk) -> Listing:
    """The classes under ``folder`` and their image files, each real file once. torchvision's
    ImageFolder rules and order (a class is a sub-folder, by sorted name; an image is a file
    with one of its ``IMG_EXTENSIONS``), without following links round a loop.

    A class folder may itself be a link to a folder elsewhere: followed, once (one that holds
    the data set itself is refused). Links to folders met deeper are followed only out of the
    data set (``FolderWalk.folders``). A file is known by its device and inode, so a link or a
    hard link to a file already listed is not listed again. A file reachable under two class
    folders is ambiguous: it stays in the one it is in without a link on the way, else in the
    first by sorted name, and is counted in a warning. A class folder without image files, or
    with only files kept in another class, is one ConfigError."""
    classes = _class_folders(folder, walk)
    found, owners = _find_images(folder, classes, walk)
    files, again, elsewhere = _keep_once(found, owners)
    _require_own_images(folder, Listing(classes, files), found)
    _warn_listing(folder, walk.take_unfollowed(), again, elsewhere)
    return Listing(classes, files)


def _class_folders(folder: Path, walk: FolderWalk) -> list[str]:
    """The class folders' names, sorted, each one's real path added to the tree. A class
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
        if _holds(real, walk.root) or _holds(real, here):
            raise ConfigError(
                f"data.root: class folder {folder / name} is a link to {real}, "
                f"which holds {folder} itself"
            )
        walk.tree.append(real)
    return classes


def _find_images(
    folder: Path, classes: list[str], walk: FolderWalk
) -> tuple[list[ImageFile], dict[tuple, Owner]]:
    """Every image file found under every class folder, and each identity's owner: the class
    it is in without a link on the way, else the first."""
    here = os.path.realpath(folder)
    found, owners = [], {}
    for label, name in enumerate(classes):
        for path in _class_images(folder, name, walk):
            file = ImageFile(path, label, _identity(path))
            direct = os.path.realpath(path) == os.path.join(here, os.path.relpath(path, folder))
            found.append(file)
            owner = owners.get(file.identity)
            if owner is None or direct and not owner.direct:
                owners[file.identity] = Owner(label, direct)
    return found, owners


def _class_images(folder: Path, name: str, walk: FolderWalk) -> list[str]:
    """The image files under class folder ``name``, in torchvision's order; none is one
    ConfigError."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    walked = sorted(walk.folders(str(folder / name)))
    listed = [os.path.join(where, file) for where, names in walked for file in sorted(names)]
    images = [path for path in listed if has_file_allowed_extension(path, IMG_EXTENSIONS)]
    if not images:
        raise ConfigError(
            f"data.root: {folder} has no class folders with images for class '{name}': "
            f"{folder / name} holds no file ending in {', '.join(IMG_EXTENSIONS)}"
        )
    return images


def _identity(path: str) -> tuple:
    """A file's device and inode, the same through any link or hard link to it."""
    try:
        stat = os.stat(path)
        return (stat.st_dev, stat.st_ino)
    except OSError:  # a broken link: listed, then skipped as unreadable
        return ("path", path)


def _keep_once(
    found: list[ImageFile], owners: dict[tuple, Owner]
) -> tuple[list[ImageFile], int, list[str]]:
    """Each real file once, in its owner's class; also how many were reached ``again`` in
    the same class, and the paths left out as ``elsewhere`` (kept in another class)."""
    files, kept, again, elsewhere = [], set(), 0, []
    for file in found:
        if owners[file.identity].label != file.label:
            elsewhere.append(file.path)
        elif file.identity in kept:
            again += 1
        else:
            kept.add(file.identity)
            files.append(file)
    return files, again, elsewhere


def _require_own_images(folder: Path, listing: Listing, found: list[ImageFile]) -> None:
    """One ConfigError for the first class left with no files of its own."""
    own = Counter(file.label for file in listing.files)
    every = Counter(file.label for file in found)
    for label, name in enumerate(listing.classes):
        if not own[label]:
            raise ConfigError(
                f"data.root: {folder} has no images of its own for class '{name}': "
                f"its {every[label]} files are all under another class folder too"
            )


def _warn_listing(folder: Path, unfollowed: list[str], again: int, elsewhere: list[str]) -> None:
    """One warning for each kind of link not followed or file not listed twice."""
    if unfollowed:
        log.warning(
            "%s: %d link(s) to folders already in the data set (or holding it) not followed (%s)",
            folder,
            len(unfollowed),
            _shown(unfollowed),
        )
    if again:
        log.warning(
            "%s: %d file(s) reached twice in one class folder (links) read once", folder, again
        )
    if elsewhere:
        log.warning(
            "%s: %d file(s) also under another class folder left out of this one (%s)",
            folder,
            len(elsewhere),
            _shown(elsewhere),
        )


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

    names = names or listing.classes
    modes, skipped = _image_modes(listing.files)
    gray = bool(modes) and all(mode in GRAY for mode in modes.values())
    images, labels, read = [], [], Counter()
    for file in tqdm(listing.files, desc=f"reading {folder.name}", leave=False, disable=None):
        if file.path not in modes:
            continue
        try:
            with Image.open(file.path) as image:
                picture = _eight_bit(image, gray)
        except Exception:  # a header that opens, on data that does not
            skipped.append(file.path)
            continue
        picture = TF.center_crop(TF.resize(picture, image_size), image_size)
        images.append(TF.pil_to_tensor(picture))
        labels.append(names.index(listing.classes[file.label]))
        read[file.label] += 1
    _require_readable(folder, listing, read)
    if skipped:
        log.warning("%s: %d unreadable file(s) skipped (%s)", folder, len(skipped), _shown(skipped))
    stacked = torch.stack(images)
    return ImageSet(stacked, torch.tensor(labels, dtype=torch.int64), list(names))


def _image_modes(files: list[ImageFile]) -> tuple[dict[str, str], list[str]]:
    """Each file's PIL mode, read from its header alone, and the files whose header cannot
    be opened."""
    from PIL import Image

    modes, skipped = {}, []
    for file in files:
        try:
            with Image.open(file.path) as image:
                modes[file.path] = image.mode
        except Exception:
            skipped.append(file.path)
    return modes, skipped


def _require_readable(folder: Path, listing: Listing, read: Counter) -> None:
    """One ConfigError for the first class (by label) none of whose files could be read."""
    for label, count in sorted(Counter(file.label for file in listing.files).items()):
        if not read[label]:
            name = listing.classes[label]
            unread = [file.path for file in listing.files if file.label == label]
            raise ConfigError(
                f"data.root: {folder} has no readable images for class '{name}': "
                f"its {count} files in {folder / name} could not be read ({_shown(unread)})"
            )


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
    walk = FolderWalk([os.path.realpath(folder)])  # links into the data set are not walked
    splits = [name for name in ("train", "test", "val", "valid") if (folder / name).is_dir()]
    if splits:  # never read a train/ folder as a class: say which layouts there are
        train, test = _read_split_folders(folder, root, splits, walk, image_size)
    else:
        train, test = _read_and_split(folder, walk, image_size, test_fraction, seed)
    found = f"at least two class folders to tell apart (found {train.classes})"
    require(len(train.classes) >= 2, "data.root", root, found)
    left = "a fraction that leaves images to test on"
    require(len(test) > 0, "data.source.test_fraction", test_fraction, left)
    # Listed class by class; shuffled once, data.subset takes from every class.
    g = torch.Generator().manual_seed(seed)
    train, test = (split.take(torch.randperm(len(split), generator=g)) for split in (train, test))
    log.info(
        "%s: %d training and %d test images of %d classes (%s)",
        root,
        len(train),
        len(test),
        len(train.classes),
        ", ".join(train.classes),
    )
    return train, test


def _read_split_folders(
    folder: Path, root: str, splits: list[str], walk: FolderWalk, image_size: int
) -> tuple[ImageSet, ImageSet]:
    """The ``train/`` and ``test/`` (or ``val/``) splits under ``folder``, the test split's
    classes among the training split's, and labelled as they are there."""
    held_out = next((name for name in splits if name != "train"), None)
    layouts = "class folders, or train/ and test/ (or val/) holding them"
    require("train" in splits and held_out is not None, "data.root", root, layouts)
    train_dir, test_dir = folder / "train", folder / held_out
    walk.tree += [os.path.realpath(train_dir), os.path.realpath(test_dir)]
    train_listing = _list_images(train_dir, walk)
    test_listing = _list_images(test_dir, walk)
    missing = sorted(set(test_listing.classes) - set(train_listing.classes))
    extra = f"the training split's classes; {test_dir} also has {', '.join(missing)}"
    require(not missing, "data.root", str(test_dir), extra)
    test_files = _drop_files_in_train(test_dir, train_listing.files, test_listing.files)
    only_test = f"images in {held_out}/ that are not also in train/"
    require(bool(test_files), "data.root", root, only_test)
    train = _read_images(train_dir, train_listing, image_size)
    test_listing = Listing(test_listing.classes, test_files)
    test = _read_images(test_dir, test_listing, image_size, train.classes)
    return train, test


def _drop_files_in_train(
    test_dir: Path, train_files: list[ImageFile], test_files: list[ImageFile]
) -> list[ImageFile]:
    """The test split's files less those also in ``train/`` (a link or hard link)."""
    # A file in both splits is dropped from the test split, with a warning, rather than
    # refused: the honest split is unambiguous (the model trains on it either way), and
    # a refusal would only make the user delete these very files by hand.
    in_train = {file.identity for file in train_files}
    shared = [file.path for file in test_files if file.identity in in_train]
    if shared:
        log.warning(
            "%s: %d file(s) also in train/ (links) dropped from the test split (%s)",
            test_dir,
            len(shared),
            _shown(shared),
        )
    return [file for file in test_files if file.identity not in in_train]


def _read_and_split(
    folder: Path, walk: FolderWalk, image_size: int, test_fraction: float, seed: int
) -> tuple[ImageSet, ImageSet]:
    """The class folders directly under ``folder``, split by a fixed stratified split:
    ``test_fraction`` of every class, seeded, over distinct files."""
    fraction = "a number in (0, 1)"
    require(0 < test_fraction < 1, "data.source.test_fraction", test_fraction, fraction)
    every = _read_images(folder, _list_images(folder, walk), image_size)
    train_index, test_index = stratified_split(every.labels, test_fraction, seed)
    return every.take(train_index), every.take(test_index)
