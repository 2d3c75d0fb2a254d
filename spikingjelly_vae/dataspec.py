"""The dataset table: what the package knows about each dataset (shapes, splits, the settings of the
official loader and metrics). Plain data without the image stack: presets, the downloader and the metrics
read it without importing PIL or torchvision; data.py loads the images.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

__all__ = ["DATASETS", "EMBEDDED", "DatasetSpec", "dataset_spec", "dataset_info"]


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the package knows about one dataset (the one table the rest reads)."""

    name: str
    label: str                 # as printed in the paper's Table I
    in_channels: int
    image_size: int
    num_classes: int           # 0: unlabelled
    flip: bool                 # random horizontal flip on the training split (official)
    splits: tuple              # splits load_dataset accepts
    fid_split: str             # split of the FID reference statistics (as the reference)
    fad_latent: int            # latent size of the official FAD feature autoencoder
    drop_last: bool            # the official train loader's drop_last (also the reference MSE batching)
    test_size: int             # images in the full test split
    mse_batch: int             # ESVAE's test batch (2 x its training batch)
    crop: Optional[int] = None  # CenterCrop before resizing (CelebA: 148)
    resize: bool = True        # resize to image_size x image_size


_TRAIN_TEST = ("train", "test")
DATASETS = {spec.name: spec for spec in (
    DatasetSpec("mnist", "MNIST", 1, 32, 10, False, _TRAIN_TEST, "test", 64, False, 10000, 512),
    DatasetSpec("mnist-mini", "MNIST (embedded subset)", 1, 32, 10, False, _TRAIN_TEST, "test", 64, False, 2000,
                512),
    DatasetSpec("fashion", "Fashion MNIST", 1, 32, 10, False, _TRAIN_TEST, "test", 64, True, 10000, 512),
    DatasetSpec("cifar10", "CIFAR10", 3, 32, 10, True, _TRAIN_TEST, "test", 128, True, 10000, 512, resize=False),
    DatasetSpec("celeba", "CelebA", 3, 64, 0, True, ("train", "valid", "test", "all"), "valid", 128, False, 19962,
                128, crop=148),
)}
EMBEDDED = {"mnist-mini": Path(__file__).resolve().parent / "embedded" / "mnist_mini.npz"}  # shipped data


def dataset_spec(name: str) -> DatasetSpec:
    """The DatasetSpec of a dataset name; ValueError naming the known ones otherwise."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def dataset_info(name: str) -> dict:
    """`in_channels`, `image_size`, `num_classes` (0: unlabelled) of a dataset name."""
    spec = dataset_spec(name)
    return {"in_channels": spec.in_channels, "image_size": spec.image_size, "num_classes": spec.num_classes}
