from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vitsweep.data import Augment, DeviceLoader, Normalise
from vitsweep.data.loaders import random_crop, random_flip
from vitsweep.data.sets import ImageSet, load_digits, load_fashion_mnist

CPU = torch.device("cpu")


def test_digits_is_a_fixed_stratified_split_of_32px_rgb():
    train, test = load_digits()
    assert (len(train), len(test)) == (1438, 359)
    for c in range(10):  # a fifth of every class in the test split
        in_test, in_train = (test.labels == c).sum().item(), (train.labels == c).sum().item()
        assert in_test == round((in_test + in_train) * 0.2)
    assert train.images.shape[1:] == (3, 32, 32) and train.images.dtype == torch.uint8
    assert torch.equal(train.labels, load_digits()[0].labels)
    assert set(test.labels.tolist()) == set(range(10))


def test_digits_mean_and_std_match_the_config(make_config):
    cfg = make_config(["data=digits"])
    pixels = load_digits()[0].images.float() / 255
    assert pixels.mean().item() == pytest.approx(cfg.data.mean[0], abs=1e-3)
    assert pixels.std().item() == pytest.approx(cfg.data.std[0], abs=1e-3)


def _column_images(n: int, size: int = 8) -> torch.Tensor:
    """Each pixel holds its column number + 1 and its row number * 16, so every crop offset
    and every flip leaves a different picture; 0 only where padding came in."""
    cols = torch.arange(1, size + 1).view(1, 1, 1, size)
    rows = torch.arange(size).view(1, 1, size, 1) * 16
    return (cols + rows).expand(n, 1, size, size).to(torch.uint8).contiguous()


def test_random_crop_is_a_window_of_the_padded_image():
    images = _column_images(64)
    g = torch.Generator().manual_seed(0)
    crops = random_crop(images, pad=4, generator=g)
    padded = F.pad(images, (4, 4, 4, 4))
    offsets = set()
    for crop, full in zip(crops, padded):
        matches = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            if torch.equal(crop, full[:, dy : dy + 8, dx : dx + 8])
        ]
        assert len(matches) == 1  # within bounds, and exactly one window
        offsets.add(matches[0])
    assert len(offsets) > 20  # the offsets really vary


def test_random_flip_mirrors_about_half():
    images = _column_images(4000)
    flipped = random_flip(images, torch.Generator().manual_seed(0))
    mirrored = (flipped == images.flip(-1)).flatten(1).all(1)
    unchanged = (flipped == images).flatten(1).all(1)
    assert (mirrored ^ unchanged).all()
    assert 0.45 < mirrored.float().mean().item() < 0.55


def test_loader_keeps_labels_with_their_images_and_is_seeded():
    n = 100
    labels = torch.arange(n)
    images = labels.view(n, 1, 1, 1).expand(n, 1, 4, 4).to(torch.uint8).contiguous()
    data = ImageSet(images, labels)

    def batches(seed):
        loader = DeviceLoader(data, 16, Normalise([0.0], [1 / 255]), CPU, Augment(), seed=seed)
        return list(loader)

    first = batches(seed=1)
    assert len(first) == n // 16
    for x, y in first:  # unaugmented: every pixel of an image still equals its label
        assert torch.equal(x[:, 0, 0, 0].long(), y)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(first, batches(seed=1)))
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(first, batches(seed=2)))


def test_eval_loader_covers_every_image_in_order():
    data = ImageSet(torch.zeros(10, 1, 4, 4, dtype=torch.uint8), torch.arange(10))
    loader = DeviceLoader(data, 4, Normalise([0.0], [1.0]), CPU)  # held out: never augmented
    labels = torch.cat([y for _, y in loader])
    assert torch.equal(labels, torch.arange(10))


def test_loader_normalises_with_the_config_statistics():
    data = ImageSet(torch.full((4, 3, 2, 2), 255, dtype=torch.uint8), torch.zeros(4).long())
    loader = DeviceLoader(data, 4, Normalise([0.5, 0.5, 0.0], [0.5, 0.25, 1.0]), CPU)
    x, _ = next(iter(loader))
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([1.0, 2.0, 1.0]))


SYSTEM_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not SYSTEM_FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_reads_the_debian_package_offline(tmp_path):
    train, test = load_fashion_mnist(str(tmp_path), download=False, system_dir=str(SYSTEM_FASHION))
    assert (len(train), len(test)) == (60_000, 10_000)
    assert train.images.shape[1:] == (1, 28, 28)


def test_fashion_mnist_missing_offline_is_a_config_error(tmp_path):
    from vitsweep.errors import ConfigError

    with pytest.raises(ConfigError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(str(tmp_path), download=False, system_dir=str(tmp_path / "none"))


@pytest.mark.parametrize("channels", [1, 3])
def test_torchvision_path_gives_the_same_batches_without_augmentation(channels):
    from vitsweep.data import torchvision_loader

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (10, channels, 8, 8), dtype=torch.uint8, generator=g)
    data = ImageSet(images, torch.arange(10))
    mean, std = [0.4] * channels, [0.2] * channels
    ours = list(DeviceLoader(data, 4, Normalise(mean, std), CPU))
    theirs = list(torchvision_loader(data, 4, Normalise(mean, std)))
    assert len(ours) == len(theirs) == 3
    for (x, y), (tx, ty) in zip(ours, theirs):
        assert torch.equal(y, ty)
        assert torch.allclose(x, tx, atol=1e-5)


def test_torchvision_loader_trains_through_the_cli(cli, tmp_path):
    from tests.helpers import TINY

    result = cli(*TINY, "trainer.epochs=1", "data.loader=torchvision", "hydra.run.dir=run")
    assert result.returncode == 0, result.stderr
    assert '"status": "completed"' in (tmp_path / "run" / "summary.json").read_text()


def test_a_digits_run_imports_neither_pandas_nor_matplotlib(tmp_path):
    import subprocess
    import sys

    from tests.helpers import RUN, TINY

    probe = (
        f"import runpy, sys; sys.argv = {[str(RUN), *TINY, 'trainer.epochs=1']!r}\n"
        f"try: runpy.run_path({str(RUN)!r}, run_name='__main__')\n"
        "except SystemExit: pass\n"
        "print('imported:', sorted(m for m in ('pandas', 'matplotlib') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert "imported: []" in done.stdout, done.stdout + done.stderr
    assert '"status": "completed"' in next(tmp_path.glob("outputs/*/*/summary.json")).read_text()
