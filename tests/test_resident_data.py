"""Device-resident data: same pixels as data.load_dataset, same order as train.py's DataLoader, seeded flips,
exact resume, and a cache that is never used stale or broken. The CPU device stands in for CUDA."""
import hashlib
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Subset

from spikingjelly_vae import data
from spikingjelly_vae.resident_data import ResidentDataset, ResidentLoader, fits_on_device, signed_lut

SHARED = Path(os.environ.get("SJVAE_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
needs_shared = pytest.mark.skipif(not (SHARED / "MNIST").is_dir(), reason="shared data not found")


def _seed(seed, *parts):  # any per-epoch seed works; this one mimics train.py's sha256-derived seeds
    return int.from_bytes(hashlib.sha256(":".join(map(str, (seed, *parts))).encode()).digest()[:8], "little") >> 1


def _synthetic(n=103, name="cifar10", split="train"):
    g = torch.Generator().manual_seed(n)
    c = data.DATASETS[name].in_channels
    images = torch.randint(0, 256, (n, c, 4, 4), generator=g, dtype=torch.uint8)
    return ResidentDataset(images, torch.arange(n) % 10, name=name, split=split)


class _AsDataset(Dataset):
    """The same images as a map-style Dataset, for the DataLoader reference."""

    def __init__(self, res):
        self.res = res

    def __len__(self):
        return len(self.res)

    def __getitem__(self, i):
        return data.to_signed_range(self.res.images[i].float().div(255)), int(self.res.labels[i])


def _batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def _assert_same(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_lut_is_totensor_then_signed_range():
    u = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(signed_lut(), data.to_signed_range(u.float().div(255)))
    assert signed_lut()[0] == -1.0 and signed_lut()[255] == 1.0


@pytest.mark.parametrize("batch,drop_last,subset", [(16, False, None), (16, True, None), (10, True, 57),
                                                     (200, False, None), (7, False, 40)])
def test_order_equals_train_dataloader(batch, drop_last, subset):
    """train.py: Subset(perm[:k]) for train_subset, RandomSampler + loader generator re-seeded per epoch."""
    res = _synthetic(103, name="mnist")  # no flip: the DataLoader batches must come out identical
    ref = _AsDataset(res)
    if subset is not None:
        keep = torch.randperm(len(res), generator=torch.Generator().manual_seed(42))[:subset].tolist()
        ref, res = Subset(ref, keep), res.subset(keep)
    g_ref, g_res = torch.Generator(), torch.Generator()
    dl = DataLoader(ref, batch, sampler=RandomSampler(ref, generator=g_ref), drop_last=drop_last, generator=g_ref)
    rl = ResidentLoader(res, batch_size=batch, shuffle=True, drop_last=drop_last, generator=g_res)
    assert len(rl) == len(dl)
    for epoch in range(3):
        g_ref.manual_seed(_seed(42, epoch, 0, "loader"))
        g_res.manual_seed(_seed(42, epoch, 0, "loader"))
        _assert_same(_batches(rl), _batches(dl))
        assert torch.equal(g_ref.get_state(), g_res.get_state())  # the generator is consumed alike


def test_distributed_sampler_passthrough():
    res = _synthetic(50, name="mnist")
    for rank in range(2):
        ds = DistributedSampler(_AsDataset(res), 2, rank, shuffle=True, seed=3, drop_last=False)
        rs = DistributedSampler(res, 2, rank, shuffle=True, seed=3, drop_last=False)
        ds.set_epoch(4), rs.set_epoch(4)
        dl = DataLoader(_AsDataset(res), 8, sampler=ds, generator=torch.Generator().manual_seed(1))
        rl = ResidentLoader(res, batch_size=8, sampler=rs, generator=torch.Generator().manual_seed(1))
        _assert_same(_batches(rl), _batches(dl))


def test_test_split_in_order_unflipped():
    res = _synthetic(37, name="cifar10", split="test")
    assert not res.flip
    rl = ResidentLoader(res, batch_size=10)
    assert len(rl) == 4
    _assert_same(_batches(rl), _batches(DataLoader(_AsDataset(res), 10, shuffle=False)))


def test_flips_seeded_per_image():
    res = _synthetic(2000, name="cifar10")
    assert res.flip and not _synthetic(10, name="mnist").flip
    g = torch.Generator()
    rl = ResidentLoader(res, batch_size=64, shuffle=True, generator=g)
    plain = ResidentLoader(res, batch_size=64, shuffle=True, flip=False, generator=g)
    g.manual_seed(5)
    a = _batches(rl)
    g.manual_seed(5)
    _assert_same(_batches(rl), a)  # deterministic for a seed
    g.manual_seed(5)
    ref = _batches(plain)  # same order: the flips are drawn after the permutation
    flipped = torch.cat([(xa != xr).flatten(1).any(1) for (xa, _), (xr, _) in zip(a, ref)])
    for (xa, _), (xr, _) in zip(a, ref):
        for x, r in zip(xa, xr):  # every image is either itself or its mirror image
            assert torch.equal(x, r) or torch.equal(x, r.flip(-1))
    assert 0.4 < flipped.float().mean() < 0.6
    g.manual_seed(6)
    b = _batches(rl)
    assert not all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b))
    # the mirror is left-right: a column of the image becomes the opposite column
    img = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    img[..., 0] = 255
    one = ResidentDataset(img.repeat(64, 1, 1, 1), torch.zeros(64, dtype=torch.long), name="cifar10", split="train")
    x, _ = next(iter(ResidentLoader(one, batch_size=64, generator=torch.Generator().manual_seed(0))))
    assert set(x[:, :, :, 0].unique().tolist()) == {-1.0, 1.0} and torch.equal(x[:, :, :, 0], -x[:, :, :, 3])


def test_resume_epoch_depends_only_on_seed_and_epoch():
    res = _synthetic(90, name="cifar10")
    g = torch.Generator()
    rl = ResidentLoader(res, batch_size=16, shuffle=True, drop_last=True, generator=g)
    run = []
    for epoch in range(3):
        g.manual_seed(_seed(7, epoch, 0, "loader"))
        it = iter(rl)
        run.append(_batches(rl) if epoch != 1 else [next(it)])  # epoch 1 stops early (max_steps)
    g2 = torch.Generator()  # a restarted process: fresh generator and loader, resumes at epoch 2
    g2.manual_seed(_seed(7, 2, 0, "loader"))
    _assert_same(_batches(ResidentLoader(res, batch_size=16, shuffle=True, drop_last=True, generator=g2)), run[2])


def _write_idx(path, arr, magic):
    path.write_bytes(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes())


def _fake_mnist(root, n=6, shift=0):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        imgs = ((rng.integers(0, 256, (n, 28, 28)) + shift) % 256).astype(np.uint8)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", imgs, 0x803)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8), 0x801)


def _check_pixels(res, ref, idx):
    assert len(res) == len(ref)
    for i in idx:
        x, y = ref[i]
        assert torch.equal(res[i][0], x) and res[i][1] == y


def test_cache_stale_source_never_reused(tmp_path):
    root = tmp_path / "data"
    _fake_mnist(root)
    cache = tmp_path / "cache"
    a = ResidentDataset.load("mnist", "train", root=root, cache_dir=cache)
    _check_pixels(a, data.load_dataset("mnist", "train", root=root), range(6))
    _fake_mnist(root, shift=1)  # same size, other bytes
    b = ResidentDataset.load("mnist", "train", root=root, cache_dir=cache)
    _check_pixels(b, data.load_dataset("mnist", "train", root=root), range(6))
    assert not torch.equal(a.images, b.images)
    assert len(list((cache / "resident").glob("mnist-train-*.pt"))) == 2


def test_cache_bad_file_rebuilt_with_warning(tmp_path):
    root = tmp_path / "data"
    _fake_mnist(root)
    cache = tmp_path / "cache"
    good = ResidentDataset.load("mnist", "test", root=root, cache_dir=cache)
    (path,) = (cache / "resident").glob("mnist-test-*.pt")
    entry = torch.load(path, weights_only=True)
    bad_entries = [b"not a torch file",  # truncated or foreign
                   {**entry, "source_sha256": "0" * 64},  # another source's cache under this name
                   {**entry, "images": entry["images"][:, :, :16]}]  # wrong shape
    for bad in bad_entries:
        path.write_bytes(bad) if isinstance(bad, bytes) else torch.save(bad, path)
        with pytest.warns(UserWarning, match="rebuilding the resident-data cache"):
            again = ResidentDataset.load("mnist", "test", root=root, cache_dir=cache)
        assert torch.equal(again.images, good.images)
    with pytest.raises(ValueError, match="inside the data root"):
        ResidentDataset.load("mnist", "test", root=root, cache_dir=root / "cache")
    import pickle  # a pickle that would run code is refused by weights_only, then rebuilt
    path.write_bytes(pickle.dumps({"images": os.getcwd}, protocol=2))
    with pytest.warns(UserWarning, match="does not load"):
        ResidentDataset.load("mnist", "test", root=root, cache_dir=cache)


def test_unsupported_and_fits():
    with pytest.raises(ValueError, match="cannot be held on the device.*--no-data-on-gpu"):
        ResidentDataset.load("celeba", "train")
    with pytest.raises(ValueError, match="unknown dataset"):
        fits_on_device("svhn", "cpu")
    assert fits_on_device("mnist", "cpu") and fits_on_device("cifar10", torch.device("cpu"))
    assert not fits_on_device("celeba", "cpu")
    with pytest.raises(ValueError, match="positive int"):
        ResidentLoader(_synthetic(4), batch_size=0)


@needs_shared
@pytest.mark.parametrize("name,split", [("mnist", "train"), ("mnist", "test"), ("fashion", "train"),
                                        ("fashion", "test"), ("cifar10", "test")])  # cifar10 train: same code path
def test_same_pixels_as_load_dataset(sjvae_cache, name, split):
    cache = sjvae_cache  # the CIFAR-10 extraction and decodes persist across runs
    res = ResidentDataset.load(name, split, root=SHARED, cache_dir=cache)
    ref = data.load_dataset(name, split, root=SHARED, cache_dir=cache, augment=False)
    n = len(ref)
    _check_pixels(res, ref, [0, 1, n // 3, n // 2 + 17, n - 2, n - 1])
    assert res.flip == (name == "cifar10" and split == "train")
    again = ResidentDataset.load(name, split, root=SHARED, cache_dir=cache)  # from the cache file
    assert torch.equal(again.images, res.images) and torch.equal(again.labels, res.labels)


@needs_shared
def test_mnist_batches_equal_dataloader(sjvae_cache):
    """Real data, the exact train.py construction: first batches of an epoch are identical."""
    cache = sjvae_cache
    ref = Subset(data.load_dataset("mnist", "train", root=SHARED), range(0, 60000, 50))
    res = ResidentDataset.load("mnist", "train", root=SHARED, cache_dir=cache).subset(range(0, 60000, 50))
    g_ref, g_res = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    dl = DataLoader(ref, 64, sampler=RandomSampler(ref, generator=g_ref), generator=g_ref)
    rl = ResidentLoader(res, batch_size=64, shuffle=True, generator=g_res)
    _assert_same(_batches(rl)[:3], _batches(dl)[:3])


def test_order_without_generator_follows_global_rng():
    res = _synthetic(30, name="mnist")
    torch.manual_seed(9)
    ref = _batches(DataLoader(_AsDataset(res), 8, shuffle=True))
    torch.manual_seed(9)
    _assert_same(_batches(ResidentLoader(res, batch_size=8, shuffle=True)), ref)
