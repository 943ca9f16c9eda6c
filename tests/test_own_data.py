"""Your own images (data=folder), CIFAR-100 and SVHN, augmentation per data set, and a sweep's
jobs spread over every GPU."""

import json
import os
import re

import pytest
import torch
import yaml
from PIL import Image

from tests.helpers import COLOURS, TINY, make_folder
from vitsweep.config import options
from vitsweep.data import Augment, DeviceLoader, Normalise, complete_settings
from vitsweep.data.folder import load_image_folder
from vitsweep.data.sets import ImageSet, load_cifar100, load_svhn
from vitsweep.device import device_label, resolve_device
from vitsweep.errors import ConfigError
from vitsweep.settings import DataSettings

RUN = [o for o in TINY if not o.startswith("data")] + ["trainer.epochs=1"]


def test_a_folder_is_split_by_class_with_a_fixed_seed(tmp_path):
    root = make_folder(tmp_path / "pics", COLOURS, per_class=10)
    train, test = load_image_folder(str(root), image_size=16, test_fraction=0.2)
    assert (len(train), len(test)) == (24, 6) and train.classes == ["blue", "green", "red"]
    assert train.images.shape[1:] == (3, 16, 16) and train.images.dtype == torch.uint8
    assert torch.bincount(test.labels).tolist() == [2, 2, 2]  # a fifth of every class
    again, _ = load_image_folder(str(root), image_size=16, test_fraction=0.2)
    assert torch.equal(again.labels, train.labels) and torch.equal(again.images, train.images)


def test_a_folder_with_train_and_test_keeps_them_and_their_class_order(tmp_path):
    make_folder(tmp_path / "pics" / "train", COLOURS, per_class=4)
    make_folder(tmp_path / "pics" / "test", {"red": COLOURS["red"]}, per_class=2)
    train, test = load_image_folder(str(tmp_path / "pics"), image_size=8)
    assert (len(train), len(test)) == (12, 2)
    assert test.labels.tolist() == [train.classes.index("red")] * 2


def test_gray_images_make_one_channel(tmp_path):
    root = make_folder(tmp_path / "pics", COLOURS, per_class=5, mode="L")
    train, _ = load_image_folder(str(root), image_size=8)
    assert train.images.shape[1] == 1


def test_unreadable_files_are_skipped_and_counted(tmp_path, caplog):
    root = make_folder(tmp_path / "pics", COLOURS, per_class=5)
    (root / "red" / "garbage.png").write_bytes(b"not an image at all")
    whole = (root / "green" / "0.png").read_bytes()
    (root / "green" / "truncated.png").write_bytes(whole[: len(whole) // 2])
    with caplog.at_level("WARNING"):
        train, test = load_image_folder(str(root), image_size=8)
    assert len(train) + len(test) == 15
    assert "2 unreadable file(s) skipped" in caplog.text and "garbage.png" in caplog.text


def test_both_splits_are_shuffled_so_a_subset_holds_every_class(tmp_path):
    root = make_folder(tmp_path / "pics", COLOURS, per_class=10)
    train, test = load_image_folder(str(root), image_size=8)
    assert set(train.labels[:9].tolist()) == {0, 1, 2}  # not the first class's images only
    assert len(set(test.labels[:4].tolist())) >= 2


def test_a_val_folder_is_the_test_split_and_a_lone_train_folder_is_refused(tmp_path):
    make_folder(tmp_path / "pics" / "train", COLOURS, per_class=3)
    with pytest.raises(ConfigError, match=r"train/ and test/ \(or val/\)"):
        load_image_folder(str(tmp_path / "pics"), image_size=8)  # never classes 'train'
    make_folder(tmp_path / "pics" / "val", COLOURS, per_class=2)
    train, test = load_image_folder(str(tmp_path / "pics"), image_size=8)
    assert (len(train), len(test)) == (9, 6) and train.classes == ["blue", "green", "red"]


def test_sixteen_bit_gray_images_are_scaled_not_clipped(tmp_path):
    import numpy as np

    for name, level in (("dark", 16384), ("light", 49152)):  # a quarter, three quarters
        for i in range(3):
            path = tmp_path / "pics" / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8), level, dtype=np.uint16)).save(path)
    train, test = load_image_folder(str(tmp_path / "pics"), image_size=8, test_fraction=0.3)
    every = torch.cat([train.images, test.images]).float()
    labels = torch.cat([train.labels, test.labels])
    assert every.shape[1] == 1
    assert every[labels == 0].mean().item() == pytest.approx(64, abs=1)  # "dark"
    assert every[labels == 1].mean().item() == pytest.approx(191, abs=1)


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({}, "has no class folders with images"),
        ({"only": 3}, "at least two class folders"),
        ({"empty": 0, "full": 3}, "has no class folders with images"),
    ],
)
def test_a_folder_that_cannot_be_learned_from_is_one_clear_error(tmp_path, layout, message):
    root = tmp_path / "pics"
    root.mkdir()
    for name, count in layout.items():
        (root / name).mkdir()
        make_folder(root, {name: (100, 100, 100)}, per_class=count)
    with pytest.raises(ConfigError, match=message):
        load_image_folder(str(root), image_size=8)


def test_your_own_images_train_through_the_cli_and_are_recorded(cli, tmp_path):
    root = make_folder(tmp_path / "pics", COLOURS, per_class=10)
    (root / "blue" / "broken.png").write_bytes(b"\x89PNG but no more")
    result = cli(
        *RUN,
        "data=folder",
        f"data.root={root}",
        "data.image_size=16",
        "model.embedding.patch_size=4",
        "hydra.run.dir=run",
    )
    assert result.returncode == 0, result.stderr
    log = (tmp_path / "run" / "run.log").read_text()
    assert log.count("1 unreadable file(s) skipped") == 1  # read once: sized, then trained
    found = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["from_data"]
    assert found["classes"] == ["blue", "green", "red"] and found["channels"] == 3
    assert found["num_classes"] == 3 and len(found["mean"]) == len(found["std"]) == 3
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed"


def test_a_folder_run_without_a_root_is_one_line(cli):
    result = cli(*RUN, "data=folder", "hydra.run.dir=run")
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "error: data.root is required: set it on the command line (data.root=...)"
    )


def test_a_single_class_folder_through_the_cli_is_one_line(cli, tmp_path):
    root = make_folder(tmp_path / "pics", {"only": (1, 2, 3)}, per_class=4)
    result = cli(*RUN, "data=folder", f"data.root={root}", "hydra.run.dir=run")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "at least two class folders to tell apart (found ['only'])" in result.stderr


def pictures(*sets: ImageSet) -> list[bytes]:
    """Every image of the sets, as bytes (the pictures differ by colour, so by bytes)."""
    return [image.numpy().tobytes() for split in sets for image in split.images]


def test_a_link_loop_is_never_walked_and_a_class_kept_elsewhere_is_read_once(tmp_path, caplog):
    root = make_folder(tmp_path / "pics", {"red": COLOURS["red"], "green": COLOURS["green"]}, 5)
    make_folder(tmp_path / "elsewhere", {"blue": COLOURS["blue"], "more": (20, 150, 20)}, 3)
    (root / "blue").symlink_to(tmp_path / "elsewhere" / "blue")  # a class folder: followed
    (root / "green" / "more").symlink_to(tmp_path / "elsewhere" / "more")  # out: followed once
    (root / "red" / "loop").symlink_to("..")  # back into the data set: never walked
    with caplog.at_level("WARNING"):
        train, test = load_image_folder(str(root), image_size=8)
    assert train.classes == ["blue", "green", "red"] and len(train) + len(test) == 16
    labels = torch.cat([train.labels, test.labels])
    assert torch.bincount(labels).tolist() == [3, 8, 5]
    assert len(set(pictures(train, test))) == 16
    assert "1 link(s) to folders already in the data set (or holding it) not followed (loop)" in (
        caplog.text
    )


def test_a_class_linked_into_another_is_neither_repeated_nor_in_both_splits(tmp_path, caplog):
    root = make_folder(tmp_path / "pics", COLOURS, per_class=10)
    (root / "green" / "reds").symlink_to("../red")  # another class, linked in: not walked
    (root / "blue" / "also.png").symlink_to("../red/3.png")  # in two classes: stays in red
    os.link(root / "green" / "4.png", root / "green" / "copy.png")  # the same file, twice
    with caplog.at_level("WARNING"):
        train, test = load_image_folder(str(root), image_size=8)
    assert (len(train), len(test)) == (24, 6)
    assert torch.bincount(torch.cat([train.labels, test.labels])).tolist() == [10, 10, 10]
    assert len(set(pictures(train, test))) == 30  # no picture twice, so none in both splits
    assert "1 file(s) also under another class folder left out of this one (also.png)" in (
        caplog.text
    )


def test_a_test_file_linked_to_a_training_file_stays_in_training_only(tmp_path, caplog):
    make_folder(tmp_path / "pics" / "train", COLOURS, per_class=4)
    test_dir = make_folder(tmp_path / "pics" / "test", {"red": (230, 60, 60)}, per_class=2)
    (test_dir / "red" / "linked.png").symlink_to("../../train/red/0.png")
    (test_dir / "green").mkdir()  # green's only test file is a training file: no green tests
    os.link(tmp_path / "pics" / "train" / "green" / "1.png", test_dir / "green" / "hard.png")
    with caplog.at_level("WARNING"):
        train, test = load_image_folder(str(tmp_path / "pics"), image_size=8)
    assert (len(train), len(test)) == (12, 2)
    assert test.labels.tolist() == [train.classes.index("red")] * 2
    assert not set(pictures(train)) & set(pictures(test))
    assert "2 file(s) also in train/ (links) dropped from the test split" in caplog.text


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("red", "no images of its own for class 'alias': its 5 files are all under another"),
        (".", "class folder .+ is a link to .+, which holds .+ itself"),
    ],
)
def test_a_class_folder_linked_to_another_or_to_the_whole_set_is_refused(tmp_path, target, message):
    root = make_folder(tmp_path / "pics", COLOURS, per_class=5)
    (root / "alias").symlink_to(target)  # "alias" sorts first, but red's files stay red's
    with pytest.raises(ConfigError, match=message):
        load_image_folder(str(root), image_size=8)


def test_a_class_whose_files_are_all_unreadable_is_one_line(cli, tmp_path):
    root = make_folder(tmp_path / "pics", COLOURS, per_class=5)
    for i in range(3):
        (root / "grey").mkdir(exist_ok=True)
        (root / "grey" / f"{i}.png").write_bytes(b"not an image at all")
    said = f"has no readable images for class 'grey': its 3 files in {root / 'grey'} could not"
    with pytest.raises(ConfigError, match=re.escape(said)):
        load_image_folder(str(root), image_size=8)
    result = cli(*RUN, "data=folder", f"data.root={root}", "hydra.run.dir=run")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: ") and said in result.stderr


def test_settings_left_null_are_read_from_the_training_split():
    images = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    images[:2] = 255  # half the pixels white: mean 0.5, std ~0.53
    data = complete_settings(
        DataSettings(source={}, name="x", image_size=2),
        ImageSet(images, torch.tensor([0, 1, 2, 0]), ["a", "b", "c"]),
    )
    assert (data.channels, data.num_classes) == (1, 3)
    assert data.mean == [0.5] and data.std[0] == pytest.approx(0.5164, abs=1e-3)


class FakeTorchvisionSet:
    """Shaped like torchvision's CIFAR100 / SVHN: arrays in ``data``, ``targets``/``labels``."""

    def __init__(self, root, train=True, split=None, download=False, channels_first=False):
        n = 6 if (train if split is None else split == "train") else 4
        shape = (n, 3, 32, 32) if channels_first else (n, 32, 32, 3)
        self.data = torch.randint(0, 256, shape, dtype=torch.uint8).numpy()
        labels = list(range(n))
        if channels_first:
            self.labels = labels
        else:
            self.targets = labels


def test_cifar100_and_svhn_become_uint8_image_sets(monkeypatch):
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", FakeTorchvisionSet)
    svhn = lambda *a, **k: FakeTorchvisionSet(*a, **k, channels_first=True)  # noqa: E731
    monkeypatch.setattr(torchvision.datasets, "SVHN", svhn)
    for load in (load_cifar100, load_svhn):
        train, test = load("nowhere", download=False)
        assert train.images.shape == (6, 3, 32, 32) and test.images.shape == (4, 3, 32, 32)
        assert train.labels.dtype == torch.int64 and train.labels.tolist() == list(range(6))


@pytest.mark.parametrize(("data", "name"), [("cifar100", "CIFAR-100"), ("svhn", "SVHN")])
def test_torchvision_sets_missing_offline_are_one_line(cli, tmp_path, data, name):
    result = cli(
        *RUN, f"data={data}", "data.root=absent", "data.source.download=false", "hydra.run.dir=run"
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert f"error: {name} not found in 'absent'" in result.stderr


def test_each_data_set_flips_only_where_a_mirror_image_is_the_same_class(make_config):
    flips = {name: make_config([f"data={name}"]).data.flip for name in options("data")}
    assert flips == {
        "cifar10": True,
        "cifar100": True,
        "digits": False,
        "fashion_mnist": True,
        "folder": True,
        "svhn": False,
    }


def test_crop_and_flip_are_separate_knobs():
    picture = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).expand(64, 1, 4, 4)
    data = ImageSet(picture.contiguous(), torch.zeros(64, dtype=torch.long))
    raw = {"normalise": Normalise([0.0], [1 / 255]), "device": torch.device("cpu")}
    only_flips = next(iter(DeviceLoader(data, 64, **raw, augment=Augment(flip=True))))[0]
    assert all(
        torch.equal(x, picture[0].float()) or torch.equal(x, picture[0].flip(-1).float())
        for x in only_flips
    )
    only_crops = next(iter(DeviceLoader(data, 64, **raw, augment=Augment(crop_padding=1))))[0]
    assert not any(torch.equal(x, picture[0].flip(-1).float()) for x in only_crops)
    assert sum(not torch.equal(x, picture[0].float()) for x in only_crops) > 32  # most moved


def test_a_sweeps_cuda_jobs_go_round_the_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: "NVIDIA H200")
    placed = [resolve_device("cuda", job_num=i) for i in range(6)]
    assert [d.index for d in placed] == [0, 1, 2, 3, 0, 1]
    assert resolve_device("auto", job_num=6).index == 2
    assert resolve_device("cuda:3", job_num=0).index == 3  # a GPU named is that GPU
    assert resolve_device("cuda").index is None  # a single run: torch's current device
    assert device_label(placed[5]) == "NVIDIA H200 (cuda:1)"
    with pytest.raises(ConfigError, match="cuda:0 to cuda:3"):
        resolve_device("cuda:4")


def test_a_sweeps_jobs_are_told_their_number(cli, tmp_path, monkeypatch):
    import vitsweep.job

    seen = []
    real = vitsweep.job.resolve_device
    spy = lambda name, job_num=None: seen.append(job_num) or real(name, job_num)  # noqa: E731
    monkeypatch.setattr(vitsweep.job, "resolve_device", spy)
    assert cli("-m", "seed=0,1,2", *TINY, "trainer.epochs=0", "sweep_name=gpus").returncode == 0
    assert seen == [0, 1, 2]
