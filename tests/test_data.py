"""Data loaders on the shared data (small subsets) and on small synthetic trees."""
import io
import os
import stat
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spikingjelly_vae import data

SHARED = Path(os.environ.get("SJVAE_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
needs_shared = pytest.mark.skipif(not (SHARED / "MNIST").is_dir(), reason="shared data not found")


def _check_items(ds, idx, shape, labels=range(10)):
    for i in idx:
        x, y = ds[i]
        assert x.shape == shape and x.dtype == torch.float32
        assert x.min() >= -1.0 and x.max() <= 1.0
        assert isinstance(y, int) and y in labels


def _idx(path, offset, n):
    """Labels straight from an idx1 file (independent of torchvision)."""
    raw = Path(path).read_bytes()
    return list(raw[8 + offset:8 + offset + n])


@needs_shared
@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion", "FashionMNIST")])
def test_mnist_like_shapes_ranges_labels(name, folder):
    train = data.load_dataset(name, "train", root=SHARED)
    test = data.load_dataset(name, "test", root=SHARED)
    assert (len(train), len(test)) == (60000, 10000)
    _check_items(train, range(0, 60000, 7919), (1, 32, 32))
    _check_items(test, [0, 9999], (1, 32, 32))
    raw = SHARED / folder / "raw"
    assert [train[i][1] for i in range(16)] == _idx(raw / "train-labels-idx1-ubyte", 0, 16)
    assert [test[i][1] for i in range(16)] == _idx(raw / "t10k-labels-idx1-ubyte", 0, 16)
    # background pixels are exactly -1 (0 in [0, 1]) and the digit reaches close to +1
    x = train[0][0]
    assert x[0, 0, 0] == -1.0 and x.max() > 0.9
    # train images are not augmented: the same item twice is the same tensor
    assert torch.equal(train[3][0], train[3][0])


def test_unknown_dataset_and_split(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        data.load_dataset("svhn", root=tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        data.dataset_info("svhn")
    with pytest.raises(ValueError, match="unknown split 'valid' for mnist"):
        data.load_dataset("mnist", "valid", root=tmp_path)


def test_missing_or_empty_root(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="does not exist.*--data-root"):
        data.load_dataset("mnist", root=tmp_path / "nowhere")
    monkeypatch.setenv("SJVAE_DATA", str(tmp_path / "nowhere-env"))
    with pytest.raises(ValueError, match="nowhere-env"):
        data.load_dataset("mnist")
    for name, msg in [("mnist", "mnist not found"), ("fashion", "fashion not found"),
                      ("cifar10", "CIFAR-10 not found"), ("celeba", "CelebA not found")]:
        with pytest.raises(ValueError, match=msg):
            data.load_dataset(name, root=tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing written into the data root


def test_dataset_info():
    assert data.dataset_info("mnist") == {"in_channels": 1, "image_size": 32, "num_classes": 10}
    assert data.dataset_info("cifar10") == {"in_channels": 3, "image_size": 32, "num_classes": 10}
    assert data.dataset_info("celeba") == {"in_channels": 3, "image_size": 64, "num_classes": 0}


def _jpeg(color, size=32):
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), color, np.uint8)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _make_cifar_tarball(path, per_class=2):
    with tarfile.open(path, "w:gz") as tf:
        for split in ("train", "test"):
            for label, cls in enumerate(data.CIFAR10_CLASSES):
                for k in range(per_class):
                    blob = _jpeg(20 * label + k)
                    info = tarfile.TarInfo(f"CIFAR-10-images/{split}/{cls}/{k:04d}.jpg")
                    info.size = len(blob)
                    tf.addfile(info, io.BytesIO(blob))


def test_tarball_extracts_once_and_reuses_cache(tmp_path, monkeypatch):
    root, cache = tmp_path / "root", tmp_path / "cache"
    (root / "cifar10_jpeg_q75").mkdir(parents=True)
    _make_cifar_tarball(root / "cifar10_jpeg_q75" / data.CIFAR10_TARBALL)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    calls = []
    real = tarfile.TarFile.extractall
    monkeypatch.setattr(tarfile.TarFile, "extractall", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))

    train = data.load_dataset("cifar10", "train", root=root, cache_dir=cache)
    test = data.load_dataset("cifar10", "test", root=root, cache_dir=cache)
    monkeypatch.setenv("SJVAE_CACHE", str(cache))
    again = data.load_dataset("cifar10", "train", root=root)
    assert len(calls) == 1
    assert (cache / "cifar10" / "CIFAR-10-images" / "train" / "truck" / "0001.jpg").is_file()
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # nothing written in the root
    assert len(train) == len(test) == len(again) == 20
    assert [train[i][1] for i in range(0, 20, 2)] == list(range(10))
    x, y = test[5]  # class 2 (bird), file 1: grey level 41
    assert x.shape == (3, 32, 32) and y == 2
    assert torch.allclose(x, torch.full_like(x, 41 / 255 * 2 - 1), atol=3 / 255)

    # an interrupted extraction (no marker) is redone, not used half-way
    (cache / "cifar10" / ".complete").unlink()
    data.load_dataset("cifar10", "train", root=root, cache_dir=cache)
    assert len(calls) == 2


def test_cache_inside_data_root_is_refused(tmp_path):
    _make_cifar_tarball(tmp_path / data.CIFAR10_TARBALL)
    with pytest.raises(ValueError, match="inside the data root"):
        data.load_dataset("cifar10", root=tmp_path, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_cifar_image_folder_and_flip(tmp_path):
    for label, cls in enumerate(data.CIFAR10_CLASSES):
        d = tmp_path / "cifar10" / "train" / cls
        d.mkdir(parents=True)
        img = np.zeros((32, 32, 3), np.uint8)
        img[:, :16] = 255  # left half white: a flip moves it to the right
        Image.fromarray(img).save(d / "0000.png")
    aug = data.load_dataset("cifar10", "train", root=tmp_path)
    plain = data.load_dataset("cifar10", "train", root=tmp_path, augment=False)
    x = plain[0][0]
    assert x[:, :, :16].min() == 1.0 and x[:, :, 16:].max() == -1.0
    torch.manual_seed(0)
    seen = {aug[0][0][0, 0, 0].item() for _ in range(40)}
    assert seen == {-1.0, 1.0}  # both orientations appear


@needs_shared
def test_cifar10_shared_tarball(sjvae_cache):
    # the 60k-file extraction is cached across test runs in pytest's cache folder (.pytest_cache)
    cache = sjvae_cache
    test = data.load_dataset("cifar10", "test", root=SHARED, cache_dir=cache)
    train = data.load_dataset("cifar10", "train", root=SHARED, cache_dir=cache)
    assert (len(train), len(test)) == (50000, 10000)
    _check_items(test, [0, 999, 1000, 9999], (3, 32, 32))
    assert [test[i][1] for i in (0, 999, 1000, 9999)] == [0, 0, 1, 9]
    _check_items(train, [0, 49999], (3, 32, 32))


def test_unsafe_tarball_refused(tmp_path):
    tarball = tmp_path / data.CIFAR10_TARBALL
    with tarfile.open(tarball, "w:gz") as tf:
        info = tarfile.TarInfo("../evil.txt")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ValueError, match="refusing to extract .*evil.txt"):
        data.extract_tarball_once(tarball, tmp_path / "cache" / "cifar10")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "cache" / "cifar10").exists()


@pytest.mark.parametrize("kind", ["symlink out", "device"])
def test_tarball_with_links_out_or_devices_refused(tmp_path, kind):
    tarball = tmp_path / data.CIFAR10_TARBALL
    with tarfile.open(tarball, "w:gz") as tf:
        info = tarfile.TarInfo("CIFAR-10-images/x")
        if kind == "symlink out":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        else:
            info.type = tarfile.CHRTYPE
        tf.addfile(info)
    with pytest.raises(ValueError, match="refusing to extract"):
        data.extract_tarball_once(tarball, tmp_path / "cache" / "cifar10")
    assert not (tmp_path / "cache" / "cifar10").exists()


def test_tarball_members_lose_setuid_and_write_bits_for_others(tmp_path):
    """Extraction uses tarfile's data filter: no setuid/setgid bits, no group/other write permission."""
    tarball = tmp_path / data.CIFAR10_TARBALL
    with tarfile.open(tarball, "w:gz") as tf:
        info = tarfile.TarInfo("CIFAR-10-images/run.sh")
        info.size, info.mode = 1, 0o6777
        tf.addfile(info, io.BytesIO(b"x"))
    tree = data.extract_tarball_once(tarball, tmp_path / "cache" / "cifar10")
    mode = (tree / "CIFAR-10-images" / "run.sh").stat().st_mode
    assert not mode & (stat.S_ISUID | stat.S_ISGID | stat.S_IWGRP | stat.S_IWOTH)


@needs_shared
def test_celeba_flat_folder():
    ds = data.load_dataset("celeba", "train", root=SHARED)
    assert len(ds) == 32
    _check_items(ds, [0, 31], (3, 64, 64), labels=[0])
    assert len(data.load_dataset("celeba", "all", root=SHARED)) == 32
    with pytest.raises(ValueError, match="no CelebA test images"):
        data.load_dataset("celeba", "test", root=SHARED)


def test_celeba_center_crop(tmp_path):
    d = tmp_path / "img_align_celeba"
    d.mkdir()
    img = np.zeros((218, 178, 3), np.uint8)  # black border, white 148x148 centre
    img[35:183, 15:163] = 255
    Image.fromarray(img).save(d / "000001.png")
    Image.fromarray(img).save(d / "200000.png")
    train = data.load_dataset("celeba", "train", root=tmp_path, augment=False)
    assert len(train) == 1 and len(data.load_dataset("celeba", "test", root=tmp_path)) == 1
    x = train[0][0]
    assert x.shape == (3, 64, 64) and x.min() == 1.0  # the crop keeps only the white centre


def test_dataset_spec_is_the_one_table():
    spec = data.dataset_spec("celeba")
    assert (spec.in_channels, spec.image_size, spec.num_classes, spec.fid_split, spec.test_size) == \
        (3, 64, 0, "valid", 19962)
    assert data.dataset_info("mnist") == {"in_channels": 1, "image_size": 32, "num_classes": 10}
    from spikingjelly_vae.presets import get_preset
    for name, s in data.DATASETS.items():  # the official drop_last of the presets comes from the table
        assert get_preset("esvae", name)["drop_last"] == s.drop_last == get_preset("fsvae", name)["drop_last"]
    with pytest.raises(ValueError, match="unknown dataset 'svhn'; choose one of mnist"):
        data.dataset_spec("svhn")
