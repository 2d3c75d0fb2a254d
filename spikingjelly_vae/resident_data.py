"""Device-resident datasets: decode once into a cached uint8 tensor file, then batch on the device.

MNIST, Fashion-MNIST and CIFAR-10 are at most ~200 MB as uint8, so the whole split can live on the
GPU. `ResidentDataset.load` decodes a split with exactly the PIL path of `data.load_dataset`
(augment off; the PIL image just before `ToTensor`), stores `images` [N, C, H, W] uint8 and `labels`
[N] int64 in ``<cache>/resident/<name>-<split>-<sha>.pt`` (atomic write, `weights_only` load) and
moves them to the device. The key `<sha>` is a SHA-256 of the source files' bytes (and of the
preprocessing and library versions), so a changed source never reuses a stale cache; a cache file
that does not load or does not match its key is rebuilt with a warning, never used.

`ResidentLoader` yields `(x in [-1, 1], labels)` batches on the device in the order a
`DataLoader(data, batch_size, sampler=RandomSampler(data, generator=g), drop_last=..., generator=g)`
gives for the same state of `g` (shuffle), or in index order (test split). x is mapped through a
256-entry table built like `ToTensor()` + `to_signed_range` (u / 255 * 2 - 1), so pixels equal the
DataLoader's bit for bit. Flips (per image, p = 0.5) are drawn from `g` after the permutation.
CelebA (2.4 GB) stays on the DataLoader path.
"""
from __future__ import annotations

import hashlib
import math
import os
import warnings
from pathlib import Path

import numpy as np
import PIL
import torch
import torchvision
from torchvision import datasets, transforms

from .atomic import atomic_write
from .data import DATASETS, load_dataset, resolve_cache_dir, resolve_data_root, to_signed_range
from .schemas import error_reason

__all__ = ["RESIDENT_DATASETS", "ResidentDataset", "ResidentLoader", "fits_on_device", "signed_lut"]

RESIDENT_DATASETS = {"mnist": 70000, "fashion": 70000, "cifar10": 60000}  # train + test images
CACHE_FORMAT = 2  # 2: entries carry payload_sha256
CHUNK = 1 << 20


def fits_on_device(name: str, device, *, headroom: float = 4.0) -> bool:
    """True when `name` can be resident on `device`: a supported dataset (not CelebA) whose train and
    test uint8 images, times `headroom`, fit in the device's free memory (CPU: always)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if name not in RESIDENT_DATASETS:
        return False
    device = torch.device(device)
    if device.type != "cuda":
        return device.type == "cpu"
    info = DATASETS[name]
    nbytes = RESIDENT_DATASETS[name] * info.in_channels * info.image_size ** 2
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes * headroom <= free


def signed_lut(device=None) -> torch.Tensor:
    """[256] float32: byte u -> ToTensor's u / 255, then 2x - 1 (data.to_signed_range)."""
    return to_signed_range(torch.arange(256, dtype=torch.uint8).to(torch.float32).div(255)).to(device)


class ResidentDataset:
    """A whole split as `images` [N, C, H, W] uint8 and `labels` [N] int64 on one device.

    `flip` is the official augmentation choice (train split of CIFAR-10 / CelebA). Items `data[i]`
    are `(image in [-1, 1], int label)` like `load_dataset(..., augment=False)[i]`.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, name: str, split: str):
        if images.dtype != torch.uint8 or images.dim() != 4 or labels.shape != images.shape[:1]:
            raise ValueError("images must be uint8 [N, C, H, W] and labels [N] on the same device")
        self.images, self.labels = images, labels.to(images.device)
        self.name, self.split = name, split
        self.flip = split == "train" and DATASETS[name].flip
        self.lut = signed_lut(images.device)

    @classmethod
    def load(cls, name: str, split: str = "train", *, root=None, cache_dir=None, device="cpu") -> "ResidentDataset":
        """Decode `name`/`split` (or reuse its cache file) and put it on `device`."""
        if name not in RESIDENT_DATASETS:
            raise ValueError(f"dataset {name!r} cannot be held on the device (only "
                             f"{', '.join(RESIDENT_DATASETS)}); use the DataLoader path (--no-data-on-gpu)")
        source = load_dataset(name, split, root, cache_dir, augment=False)
        key = source_hash(name, split, source)
        folder = resolve_cache_dir(cache_dir) / "resident"
        if folder.resolve().is_relative_to(resolve_data_root(root).resolve()):
            raise ValueError(f"cache folder {str(folder)!r} lies inside the data root; pass --cache-dir (or set "
                             "SJVAE_CACHE) to a folder outside it")
        path = folder / f"{name}-{split}-{key[:16]}.pt"
        entry = _read_cache(path, name, split, key)
        if entry is None:
            images, labels = decode(source)
            entry = {"format": CACHE_FORMAT, "name": name, "split": split, "source_sha256": key,
                     "images": images, "labels": labels, "payload_sha256": payload_hash(images, labels)}
            atomic_write(path, lambda p: torch.save(entry, p))
        device = torch.device(device)
        return cls(entry["images"].to(device), entry["labels"].to(device), name=name, split=split)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i):
        return self.lut[self.images[i].long()], int(self.labels[i])

    def subset(self, indices) -> "ResidentDataset":
        """The images at `indices` (a `Subset` of this split), as a new resident dataset."""
        idx = torch.as_tensor(list(indices) if isinstance(indices, range) else indices, dtype=torch.long)
        idx = idx.to(self.images.device)
        return ResidentDataset(self.images.index_select(0, idx), self.labels.index_select(0, idx),
                               name=self.name, split=self.split)

    @property
    def nbytes(self) -> int:
        return self.images.numel() + self.labels.numel() * self.labels.element_size()


class ResidentLoader:
    """Batches `(x [B, C, H, W] float32 in [-1, 1], labels [B])` of a `ResidentDataset` on its device.

    The index order equals `DataLoader`'s for the same `generator` state: one int64 draw (the
    DataLoader's worker base seed), then `randperm(n)` (RandomSampler) when `shuffle`, else 0..n-1;
    a `sampler` (e.g. a DistributedSampler) replaces both. `flip` (None: `data.flip`) then draws
    one `rand(n) < 0.5` from `generator` and mirrors those images left-right. Re-seed `generator`
    before each epoch (as train.py does) and the epoch's batches depend only on that seed; after a
    whole epoch the generator is left in the DataLoader's state too.
    """

    def __init__(self, data: ResidentDataset, *, batch_size: int, shuffle: bool = False, drop_last: bool = False,
                 flip=None, generator: torch.Generator | None = None, sampler=None):
        if not (isinstance(batch_size, int) and batch_size > 0):
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if shuffle and sampler is not None:
            raise ValueError("pass either shuffle=True or a sampler, not both (as DataLoader)")
        self.data, self.batch_size, self.shuffle, self.drop_last = data, batch_size, shuffle, drop_last
        self.flip = data.flip if flip is None else bool(flip)
        self.generator, self.sampler = generator, sampler
        self.skip = 0  # the next pass starts at this batch (the plan is drawn whole; train/resume.py)

    def __len__(self) -> int:
        n = len(self.sampler) if self.sampler is not None else len(self.data)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def epoch_plan(self):
        """(order [n] int64, flips [n] bool or None) on the CPU; consumes `generator` like DataLoader."""
        g = self.generator
        torch.empty((), dtype=torch.int64).random_(generator=g)  # DataLoader's base seed draw
        n = len(self.data)
        if self.sampler is not None:
            order = torch.as_tensor(list(self.sampler), dtype=torch.long)
        elif self.shuffle:  # RandomSampler; without a generator it seeds its own from the global RNG
            perm_gen = g or torch.Generator().manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
            order = torch.randperm(n, generator=perm_gen)
        else:
            order = torch.arange(n)
        flips = torch.rand(order.numel(), generator=g) < 0.5 if self.flip else None
        return order, flips

    def __iter__(self):
        order, flips = self.epoch_plan()
        skip, self.skip = self.skip, 0
        dev = self.data.images.device
        order = order.to(dev, non_blocking=True)
        flips = None if flips is None else flips.to(dev, non_blocking=True)
        images, labels, lut, bs = self.data.images, self.data.labels, self.data.lut, self.batch_size
        for b in range(skip, len(self)):
            idx = order[b * bs:(b + 1) * bs]
            u = images.index_select(0, idx)
            if flips is not None:
                u = torch.where(flips[b * bs:(b + 1) * bs].view(-1, 1, 1, 1), u.flip(-1), u)
            yield lut[u.long()], labels.index_select(0, idx)
        if self.shuffle and self.generator is not None:  # RandomSampler's empty tail randperm(n)[:0]
            torch.randperm(len(self.data), generator=self.generator)


def source_hash(name: str, split: str, source) -> str:
    """SHA-256 of the split's source files (bytes and names) and of how they are decoded."""
    h = hashlib.sha256()
    h.update(f"{CACHE_FORMAT}|{name}|{split}|{source.transform!r}|PIL {PIL.__version__}|"
             f"torchvision {torchvision.__version__}\n".encode())
    for tag, path in _source_files(source):
        h.update(f"{tag}\0".encode())
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def payload_hash(images: torch.Tensor, labels: torch.Tensor) -> str:
    """SHA-256 of a cache entry's tensors (shapes and bytes), checked on every read."""
    h = hashlib.sha256(f"{tuple(images.shape)} {tuple(labels.shape)}\n".encode())
    h.update(images.contiguous().numpy())  # buffer protocol: no copy
    h.update(labels.contiguous().numpy())
    return h.hexdigest()


def _source_files(source):
    """`(tag, path)` of the files a `load_dataset` split reads; the tag keeps names and labels in the key."""
    if isinstance(source, datasets.MNIST):  # also FashionMNIST
        prefix = "train" if source.train else "t10k"
        raw = Path(source.raw_folder)
        return [(f, raw / f) for f in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")]
    if isinstance(source, datasets.CIFAR10):
        folder = Path(source.root) / source.base_folder
        return [(f, folder / f) for f, _ in (source.train_list if source.train else source.test_list)]
    if isinstance(source, datasets.ImageFolder):
        return [(f"{label}/{os.path.basename(p)}", p) for p, label in source.samples]  # str: 50k Paths are slow
    raise ValueError(f"cannot hold a {type(source).__name__} on the device; use the DataLoader path")


def decode(source):
    """All items of a `load_dataset(..., augment=False)` split as uint8 [N, C, H, W] and int64 [N] tensors:
    the PIL image each item holds just before ToTensor (same resize/crop), as ToTensor lays it out."""
    steps = list(source.transform.transforms)
    if not (isinstance(steps[-2], transforms.ToTensor) and isinstance(steps[-1], transforms.Lambda)):
        raise ValueError("unexpected transform in data.load_dataset: expected ... ToTensor(), to_signed_range")
    if any(isinstance(s, transforms.RandomHorizontalFlip) for s in steps):
        raise ValueError("decode needs the un-augmented split (load_dataset(..., augment=False))")
    source.transform = transforms.Compose(steps[:-2])
    try:
        first = np.asarray(source[0][0])
        h, w = first.shape[:2]
        c = 1 if first.ndim == 2 else first.shape[2]
        images = np.empty((len(source), h, w, c), np.uint8)
        labels = torch.empty(len(source), dtype=torch.long)
        for i in range(len(source)):
            img, labels[i] = source[i]
            images[i] = np.asarray(img, dtype=np.uint8).reshape(h, w, c)
    finally:
        source.transform = transforms.Compose(steps)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels


def _read_cache(path: Path, name: str, split: str, key: str):
    """The cache entry at `path` if it loads (weights only) and matches the key; else None (warns if it exists)."""
    if not path.is_file():
        return None
    info = DATASETS[name]
    shape = (info.in_channels, info.image_size, info.image_size)
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
        images, labels = entry["images"], entry["labels"]
        ok = (entry.get("format") == CACHE_FORMAT and entry.get("source_sha256") == key
              and (entry.get("name"), entry.get("split")) == (name, split)
              and images.dtype == torch.uint8 and images.dim() == 4 and tuple(images.shape[1:]) == shape
              and labels.dtype == torch.long and labels.shape == images.shape[:1])
        reason = "it does not match its sources (format, key, dataset or shapes differ)"
        if ok and entry.get("payload_sha256") != payload_hash(images, labels):
            ok, reason = False, "its images or labels changed since it was written (payload sha256 differs)"
    except Exception as e:  # noqa: BLE001 - any unreadable file is rebuilt
        ok, reason = False, f"it does not load ({error_reason(e)})"
    if ok:
        return entry
    warnings.warn(f"rebuilding the resident-data cache {path}: {reason}", stacklevel=3)
    return None
