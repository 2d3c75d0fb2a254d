"""FAD: Frechet distance in the latent space of a pretrained ANN autoencoder (ESVAE paper Sec. IV-C, Table I; FSVAE paper).

Features are `AE.encode(x)` of images in [-1, 1] at their own size (no resize).
- ``reference`` protocol (the paper's numbers): the AE stays in train mode, so every BatchNorm uses the
  statistics of the batch being encoded; generated images come in batches of 128, 40 of them (5,120,
  no truncation); the reference statistics are the official `stats/{dataset}_test_{latent}.npz`
  (made the same way on the test split, batch 256).
- ``standard`` protocol: the AE in eval mode (its running BN statistics), so a feature depends on
  its own image only; the test-split statistics are computed the same way and cached.
The official AE and stats come from `--fad-dir` / env SJVAE_FAD (a folder with stat_checkpoints/ and
stats/). Datasets without an official AE (CIFAR-10, CelebA) use one trained here by
`sjvae fad-ae train`; its FAD is ours and is not comparable with the paper's table.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..models.autoencoder import AE, build_feature_ae
from .frechet import frechet_distance, gaussian_stats
from ..data import DATASETS, dataset_spec, resolve_cache_dir
from ..atomic import sha256_file
from .resources import MetricUnavailable, load_npz_cache, protocol_key, save_npz_atomic

__all__ = ["FAD_PROTOCOLS", "FADModel", "load_fad_model", "ae_features",
           "fad_test_stats", "compute_fad", "our_ae_paths"]

FAD_PROTOCOLS = ("reference", "standard")
FAD_ENV, FAD_OPTION = "SJVAE_FAD", "--fad-dir"
STATS_BATCH = 256  # the official stats maker's test batch
STATS_VERSION = 1


@dataclass
class FADModel:
    """A feature AE with its reference (train-mode BN) test statistics and where they came from."""
    dataset: str
    ae: AE
    checkpoint: Path
    stats_path: Path
    ref_mu: np.ndarray
    ref_sigma: np.ndarray
    source: str  # "official" (the paper's files) or "ours" (trained by `sjvae fad-ae train`)
    info: dict = field(default_factory=dict)

    @property
    def comparable(self) -> bool:
        """True when the number can be compared with the paper's Table I (official AE and stats)."""
        return self.source == "official"

    def describe(self) -> dict:
        return {"dataset": self.dataset, "source": self.source, "comparable_with_paper": self.comparable,
                "checkpoint": str(self.checkpoint), "checkpoint_sha256": sha256_file(self.checkpoint),
                "stats": str(self.stats_path), "stats_sha256": sha256_file(self.stats_path),
                "latent_dim": self.ae.latent_dim}


def _dataset_shape(dataset: str) -> tuple[int, int]:
    spec = dataset_spec(dataset)
    return spec.in_channels, spec.image_size


def our_ae_paths(dataset: str, cache_dir=None, latent_dim: int | None = None) -> tuple[Path, Path]:
    """Where `sjvae fad-ae train` writes (and FAD looks for) our AE and its test statistics."""
    latent = latent_dim or dataset_spec(dataset).fad_latent
    folder = resolve_cache_dir(cache_dir) / "fad_ae"
    return folder / f"{dataset}_{latent}.pth", folder / f"{dataset}_test_{latent}.npz"


def _load_ae(dataset: str, path: Path, latent: int, device) -> AE:
    c, size = _dataset_shape(dataset)
    ae = build_feature_ae(c, latent, size)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        ae.load_state_dict(state)
    except Exception as e:
        raise MetricUnavailable(f"FAD autoencoder {str(path)!r} does not load into the {type(ae).__name__}"
                                f"({c}, {latent}) of {dataset}: {e}") from e
    return ae.to(device)


def _load_stats(path: Path, latent: int) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as z:
        mu, sigma = z["mu"].astype(np.float64), z["sigma"].astype(np.float64)
    if mu.shape != (latent,) or sigma.shape != (latent, latent):
        raise MetricUnavailable(f"FAD statistics {str(path)!r} have mu {mu.shape}, sigma {sigma.shape}; "
                                f"expected latent size {latent}")
    return mu, sigma


def load_fad_model(dataset: str, fad_dir=None, cache_dir=None, *, checkpoint=None, stats=None,
                   device="cpu") -> FADModel:
    """The feature AE for `dataset`: an explicit `checkpoint` (+ `stats`), else the official files under
    `fad_dir` (or env SJVAE_FAD), else ours from `sjvae fad-ae train` in the cache folder."""
    if dataset not in DATASETS:
        raise ValueError(f"FAD has no feature autoencoder for {dataset!r}; choose one of "
                         f"{', '.join(DATASETS)}")
    latent = DATASETS[dataset].fad_latent
    if checkpoint is not None:
        ckpt = Path(checkpoint)
        meta_path = ckpt.with_suffix(".json")
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        latent = int(meta.get("latent_dim", latent))
        st = Path(stats) if stats else ckpt.with_name(f"{dataset}_test_{latent}.npz")
        for p, what in ((ckpt, "checkpoint"), (st, "statistics")):
            if not p.is_file():
                raise MetricUnavailable(f"FAD autoencoder {what} {str(p)!r} does not exist")
        mu, sigma = _load_stats(st, latent)
        return FADModel(dataset, _load_ae(dataset, ckpt, latent, device), ckpt, st, mu, sigma, "ours", meta)
    looked = []
    root = fad_dir or os.environ.get(FAD_ENV)
    if root:
        root = Path(root).expanduser()
        ckpt = root / "stat_checkpoints" / f"{dataset}_{latent}.pth"
        st = root / "stats" / f"{dataset}_test_{latent}.npz"
        if ckpt.is_file() and st.is_file():
            mu, sigma = _load_stats(st, latent)
            return FADModel(dataset, _load_ae(dataset, ckpt, latent, device), ckpt, st, mu, sigma, "official")
        looked.append(f"{ckpt} + {st}")
    else:
        looked.append(f"the official files ({FAD_OPTION} / {FAD_ENV} not given)")
    ckpt, st = our_ae_paths(dataset, cache_dir)
    if ckpt.is_file() and st.is_file():
        meta_path = ckpt.with_suffix(".json")
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        mu, sigma = _load_stats(st, latent)
        return FADModel(dataset, _load_ae(dataset, ckpt, latent, device), ckpt, st, mu, sigma, "ours", meta)
    looked.append(f"{ckpt} + {st}")
    raise MetricUnavailable(
        f"no FAD autoencoder for {dataset}: looked for {'; '.join(looked)}. Pass {FAD_OPTION} (folder with "
        f"stat_checkpoints/ and stats/) or train one with `sjvae fad-ae train --dataset {dataset}` "
        "(its FAD is then ours, not comparable with the paper)")


@torch.no_grad()
def ae_features(batches, ae: AE, protocol: str = "reference", device=None) -> np.ndarray:
    """AE latent features [N, latent] (float64) of every image in `batches` (no truncation).

    reference: BN on the statistics of each batch (a copy of the AE in train mode, so the AE's own
    running statistics stay untouched); standard: BN on the running statistics (eval mode)."""
    if protocol not in FAD_PROTOCOLS:
        raise ValueError(f"unknown FAD protocol {protocol!r}; choose one of {', '.join(FAD_PROTOCOLS)}")
    net = copy.deepcopy(ae).train() if protocol == "reference" else ae.eval()
    device = device or next(ae.parameters()).device
    feats = []
    for batch in batches:
        if protocol == "reference" and batch.shape[0] < 2:
            raise ValueError("the reference FAD protocol encodes with batch statistics; batches of one "
                             "image cannot be normalised")
        feats.append(net.encode(batch.to(device, torch.float32)).double().cpu().numpy())
    if not feats:
        raise ValueError("no images reached the FAD autoencoder")
    return np.concatenate(feats)


def fad_test_stats(fad: FADModel, protocol: str, *, root=None, cache_dir=None, num: int | None = None,
                   batch_size: int = STATS_BATCH, split: str = "test") -> dict:
    """Reference statistics of a split for `protocol`.

    reference with the whole test split: the loaded statistics file (official, or ours from
    `fad-ae train`). Otherwise they are computed from the split (test batch 256, in order) and
    cached under the cache folder, keyed by the AE's checksum and the protocol."""
    if protocol == "reference" and num is None and split == "test" and batch_size == STATS_BATCH:
        return {"mu": fad.ref_mu, "sigma": fad.ref_sigma, "path": str(fad.stats_path), "cached": True}
    from ..data import load_dataset
    from .sources import dataset_batches
    data = load_dataset(fad.dataset, split, root=root, cache_dir=cache_dir, augment=False)
    proto = {"metric": "fad", "version": STATS_VERSION, "dataset": fad.dataset, "split": split,
             "protocol": protocol, "num": "all" if num is None else int(num), "batch_size": batch_size,
             "dataset_size": len(data), "ae_sha256": sha256_file(fad.checkpoint)}
    path = resolve_cache_dir(cache_dir) / "fad_stats" / (
        f"{fad.dataset}_{split}_{protocol}_{proto['num']}_{protocol_key(proto)}.npz")
    z = load_npz_cache(path, proto)
    if z is not None:
        return {"mu": z["mu"], "sigma": z["sigma"], "count": int(z["count"]), "path": str(path), "cached": True}
    feats = ae_features(dataset_batches(data, batch_size, num), fad.ae, protocol)
    mu, sigma = gaussian_stats(feats)
    save_npz_atomic(path, mu=mu, sigma=sigma, count=np.int64(len(feats)),
                    protocol=np.array(json.dumps(proto, sort_keys=True)))
    return {"mu": mu, "sigma": sigma, "count": len(feats), "path": str(path), "cached": False}


def compute_fad(batches, fad: FADModel, protocol: str = "reference", reference: dict | None = None,
                **stats_kw) -> dict:
    """FAD of the images in `batches` ([-1, 1], the dataset's size) against the test statistics."""
    reference = reference or fad_test_stats(fad, protocol, **stats_kw)
    feats = ae_features(batches, fad.ae, protocol)
    mu, sigma = gaussian_stats(feats)
    out = {"fad": frechet_distance(mu, sigma, reference["mu"], reference["sigma"]),
           "num_images": int(len(feats)), "protocol": protocol, "source": fad.source,
           "comparable_with_paper": fad.comparable and protocol == "reference",
           "reference_stats": reference.get("path")}
    if not out["comparable_with_paper"]:
        out["note"] = ("feature AE trained by this project, not the paper's: not comparable with Table I"
                       if fad.source != "official" else
                       "standard protocol (eval-mode BN): not the paper's protocol")
    return out
