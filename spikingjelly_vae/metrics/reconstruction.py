"""Reconstruction MSE on a test set in [-1, 1] (ESVAE paper Sec. IV-C, Table I).

The model is in eval mode (BatchNorm on running statistics) and its posterior is sampled (pass a
`torch.Generator` for an exact repeat); the reconstruction is `model(x, generator)[0]`.
- ``mse``: the per-image mean over the whole set, (1/N) sum_i mean_pixels (x_hat_i - x_i)^2.
- ``mse_batch_mean`` (the reference's number): the unweighted mean of per-batch means over the
  same batches, where the reference also drops the last, smaller batch for Fashion-MNIST and
  CIFAR-10 (`drop_last=True` in its test loaders). The two differ when the last batch is smaller
  (it gets the weight of a full batch, or is left out) and, under dropping, by the images skipped.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from ..runtime import eval_mode, progress_bar

__all__ = ["reconstruction_mse"]


@torch.no_grad()
def reconstruction_mse(model, dataset, batch_size: int = 512, generator: torch.Generator | None = None, *,
                       device=None, drop_last_reference: bool = False, num: int | None = None,
                       progress: bool = False) -> dict:
    """MSE of `model`'s reconstructions of `dataset` (items `(image, label)` or image tensors).

    batch_size: the reference uses 2 x the training batch (ESVAE: 512). `num` limits the images.
    `progress`: a bar over the images."""
    device = device or next(model.parameters()).device
    if num is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(num, len(dataset))))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    total, count, batch_means, full_means = 0.0, 0, [], []
    with eval_mode(model), progress_bar(total=len(dataset), desc="MSE", unit="img", enabled=progress) as bar:
        for item in loader:
            x = (item[0] if isinstance(item, (list, tuple)) else item).to(device)
            recon = model(x, generator=generator)[0]
            per_image = (recon.double() - x.double()).pow(2).flatten(1).mean(1)
            total += per_image.sum().item()
            count += per_image.numel()
            batch_means.append(per_image.mean().item())
            if per_image.numel() == batch_size:
                full_means.append(batch_means[-1])
            bar.update(per_image.numel())
    if count == 0:
        raise ValueError("the dataset is empty")
    ref = full_means if drop_last_reference else batch_means
    if not ref:
        raise ValueError(f"no full batch of {batch_size} images to average (reference drop_last)")
    return {"mse": total / count, "num_images": count, "mse_batch_mean": sum(ref) / len(ref),
            "batch_size": batch_size, "num_batches_reference": len(ref),
            "drop_last_reference": drop_last_reference}
