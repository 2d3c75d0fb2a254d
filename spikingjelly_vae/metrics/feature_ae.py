"""Train our own FAD feature autoencoder by the official recipe (`main_ann_ae.py`, spec section 7.4).

Recipe: AE (AELarge for CelebA) with the official latent size (64 MNIST/Fashion-MNIST, 128 CIFAR-10/
CelebA), MSE in [-1, 1], AdamW lr 1e-3 (betas 0.9/0.999, torch's default weight decay 0.01),
150 epochs, batch 250, shuffled training split (random flip only for CelebA, as the official ANN
loaders), the checkpoint with the lowest test loss (eval mode, mean of batch means) kept. Then the
test statistics the official stats maker computes: AE in train mode (batch statistics), test split in
order, batch 256. Files: `<out>/{dataset}_{latent}.pth` (a plain state_dict, the official format),
`<out>/{dataset}_test_{latent}.npz` (mu, sigma, count, protocol) and `<out>/{dataset}_{latent}.json`
(provenance). A FAD computed with this AE is ours, not comparable with the paper's table.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from ..atomic import atomic_write, sha256_file, write_json
from ..models.autoencoder import build_feature_ae
from .fad import STATS_BATCH, ae_features, our_ae_paths
from .frechet import gaussian_stats
from .resources import save_npz_atomic

__all__ = ["train_feature_ae"]


def train_feature_ae(dataset: str, *, root=None, out_dir=None, cache_dir=None, epochs: int = 150,
                     batch_size: int = 250, lr: float = 1e-3, latent_dim: int | None = None,
                     device="cpu", seed: int = 0, limit: int | None = None, overwrite: bool = False,
                     progress: bool = True, log=print) -> dict:
    """Train the feature AE for `dataset`, write checkpoint, statistics and provenance; return the
    provenance dict. `limit` uses only the first `limit` training and test images (for quick checks)."""
    from ..data import dataset_spec, load_dataset
    from .sources import dataset_batches
    spec = dataset_spec(dataset)
    if epochs < 1 or batch_size < 2:
        raise ValueError("epochs must be >= 1 and batch_size >= 2")
    latent = latent_dim or spec.fad_latent
    ckpt_path, stats_path = our_ae_paths(dataset, cache_dir, latent)
    if out_dir is not None:
        ckpt_path, stats_path = Path(out_dir) / ckpt_path.name, Path(out_dir) / stats_path.name
    meta_path = ckpt_path.with_suffix(".json")
    existing = [str(p) for p in (ckpt_path, stats_path, meta_path) if p.exists()]
    if existing and not overwrite:
        raise ValueError(f"{', '.join(existing)} already exist; pass --overwrite to replace them or "
                         "--out to write elsewhere")
    ckpt_path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    train = load_dataset(dataset, "train", root=root, cache_dir=cache_dir, augment=dataset == "celeba")
    test = load_dataset(dataset, "test", root=root, cache_dir=cache_dir, augment=False)
    if limit is not None:
        train, test = Subset(train, range(min(limit, len(train)))), Subset(test, range(min(limit, len(test))))
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=g, num_workers=0)
    ae = build_feature_ae(spec.in_channels, latent, spec.image_size).to(device)
    opt = torch.optim.AdamW(ae.parameters(), lr=lr, betas=(0.9, 0.999))
    best, best_epoch, history, t0 = float("inf"), -1, [], time.time()
    for epoch in range(epochs):
        train_loss, test_loss = _epoch(ae, opt, loader, dataset_batches(test, batch_size), device)
        history.append({"epoch": epoch, "train_loss": train_loss, "test_loss": test_loss})
        if test_loss < best:
            best, best_epoch = test_loss, epoch
            state = {k: v.detach().cpu() for k, v in ae.state_dict().items()}
            atomic_write(ckpt_path, lambda tmp: torch.save(state, tmp))
        if progress:
            log(f"fad-ae {dataset} epoch {epoch + 1}/{epochs}: train {train_loss:.5f} test {test_loss:.5f}"
                f"{' (best)' if best_epoch == epoch else ''}")
    ae.load_state_dict(torch.load(ckpt_path, map_location="cpu", weights_only=True))
    feats = ae_features(dataset_batches(test, STATS_BATCH), ae, "reference", device=device)
    mu, sigma = gaussian_stats(feats)
    proto = {"metric": "fad", "dataset": dataset, "split": "test", "protocol": "reference",
             "batch_size": STATS_BATCH, "num": len(feats), "ae_sha256": sha256_file(ckpt_path),
             "source": "ours"}
    save_npz_atomic(stats_path, mu=mu, sigma=sigma, count=np.int64(len(feats)),
                    protocol=np.array(json.dumps(proto, sort_keys=True)))
    meta = {"dataset": dataset, "latent_dim": latent, "source": "ours", "comparable_with_paper": False,
            "recipe": {"epochs": epochs, "batch_size": batch_size, "lr": lr,
                       "optimizer": "AdamW(0.9, 0.999), wd 0.01", "loss": "MSE in [-1, 1]", "seed": seed,
                       "limit": limit},
            "best_epoch": best_epoch, "best_test_loss": best, "history": history,
            "train_images": len(train), "test_images": len(test), "seconds": time.time() - t0,
            "checkpoint": str(ckpt_path), "checkpoint_sha256": proto["ae_sha256"], "stats": str(stats_path)}
    write_json(meta_path, meta)
    return meta


def _epoch(ae, opt, loader, test_batches, device) -> tuple:
    """One AdamW epoch over `loader`, then the mean test loss (eval mode): (train loss, test loss)."""
    ae.train()
    train_losses = []
    for x, _ in loader:
        x = x.to(device)
        loss = ae.loss(x, ae(x))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        train_losses.append(loss.item())
    ae.eval()
    with torch.no_grad():
        test_losses = [ae.loss(x.to(device), ae(x.to(device)))["loss"].item() for x in test_batches]
    return float(np.mean(train_losses)), float(np.mean(test_losses))
