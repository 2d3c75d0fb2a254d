"""Image batch sources for the metrics: any iterable of `[N, C, H, W]` tensors in [-1, 1] works.

The metric functions take such an iterable, so they score any model that can `sample(n, generator)`
(ESVAE, FSVAE, ANN VAE) as well as a dataset split or a stack of tensors.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ..runtime import eval_mode

__all__ = ["sample_batches", "dataset_batches", "tensor_batches", "collect"]


@torch.no_grad()
def sample_batches(model, num: int, batch_size: int, generator: torch.Generator | None = None,
                   ) -> Iterator[torch.Tensor]:
    """ceil(num / batch_size) batches of `model.sample(batch_size, generator)` (the last one is not
    cut short, as in the reference code: 5,000 at batch 128 gives 40 x 128 = 5,120 images)."""
    if num < 1 or batch_size < 1:
        raise ValueError(f"num ({num}) and batch_size ({batch_size}) must be positive")
    with eval_mode(model):
        for _ in range(math.ceil(num / batch_size)):
            yield model.sample(batch_size, generator=generator)


def dataset_batches(dataset: Dataset, batch_size: int, num: int | None = None,
                    drop_last: bool = False) -> Iterator[torch.Tensor]:
    """The images of `dataset` (items `(image, label)`) in order, in batches; the first `num` only."""
    if num is not None:
        if num < 1:
            raise ValueError(f"num must be positive, got {num}")
        dataset = Subset(dataset, range(min(num, len(dataset))))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=drop_last, num_workers=0)
    for item in loader:
        yield item[0] if isinstance(item, (list, tuple)) else item


def tensor_batches(images: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """A tensor `[N, C, H, W]` cut into batches of `batch_size` (the last may be smaller)."""
    for i in range(0, images.shape[0], batch_size):
        yield images[i:i + batch_size]


def collect(batches, num: int | None = None) -> torch.Tensor:
    """Concatenate batches on the CPU (the first `num` images if given)."""
    out, have = [], 0
    for b in batches:
        out.append(b.detach().cpu())
        have += b.shape[0]
        if num is not None and have >= num:
            break
    if not out:
        raise ValueError("the image source gave no batches")
    x = torch.cat(out)
    return x if num is None else x[:num]
