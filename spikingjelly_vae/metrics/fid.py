"""FID: Frechet distance between 2048-d pool3 features of the TF-FID Inception network.

Pipeline for a batch x in [-1, 1] (generated or real, the same for both):
  1. p = (x + 1) / 2 * 255 (no rounding, no clamping), grey repeated to RGB;
  2. resize to 299 x 299:
     - ``clean`` (the reference protocol, clean-fid's "clean" mode): each channel of each image as a
       float32 PIL 'F' image, PIL bicubic, on the CPU. Generated images keep their float values, as in
       clean-fid's generator path; dataset images are uint8-valued already.
     - ``fast``: `F.interpolate(..., 'bilinear', align_corners=False)` on the tensor's device.
  3. (p - 128) / 128 into the TorchScript network (`torch.jit.load(path).eval()`), -> [N, 2048].
FID = frechet_distance(stats(generated), stats(reference split)). The network file is never
downloaded: `--inception-weights` / env SJVAE_INCEPTION.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .frechet import frechet_distance, gaussian_stats
from ..data import resolve_cache_dir
from ..atomic import sha256_file
from ..runtime import progress_bar
from .resources import MetricUnavailable, load_npz_cache, protocol_key, resolve_file, save_npz_atomic

__all__ = ["FID_MODES", "INCEPTION_FILE", "to_pixels", "clean_resize", "fast_resize", "FIDInception",
           "load_fid_inception", "inception_features", "fid_reference_stats", "compute_fid"]

FID_MODES = ("clean", "fast")
INCEPTION_FILE = "fid_inception_2015-12-05_pool3_torchscript.pt"
INCEPTION_ENV = "SJVAE_INCEPTION"
INCEPTION_OPTION = "--inception-weights"
SIZE = 299
STATS_VERSION = 1


def to_pixels(x: torch.Tensor, rgb: bool = True) -> torch.Tensor:
    """[-1, 1] -> [0, 255] float, (x + 1) / 2 * 255; 1-channel images repeated to 3 channels if `rgb`."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be [N, 1 or 3, H, W], got {tuple(x.shape)}")
    p = (x.float() + 1.0) / 2.0 * 255.0
    return p.repeat(1, 3, 1, 1) if rgb and p.shape[1] == 1 else p


def _resize_channel(ch: np.ndarray) -> np.ndarray:
    img = Image.fromarray(np.ascontiguousarray(ch, dtype=np.float32))  # mode 'F'
    return np.asarray(img.resize((SIZE, SIZE), resample=Image.BICUBIC), dtype=np.float32)


def clean_resize(pixels: torch.Tensor, workers: int | None = None) -> torch.Tensor:
    """clean-fid's clean resize: PIL bicubic on each float32 channel, [N, C, H, W] -> [N, C, 299, 299].

    Runs on the CPU (PIL releases the GIL, so channels are resized by a thread pool)."""
    arr = pixels.detach().to("cpu", torch.float32).numpy()
    n, c = arr.shape[:2]
    flat = [arr[i, j] for i in range(n) for j in range(c)]
    workers = workers or min(8, os.cpu_count() or 1)  # PIL releases the GIL while resizing
    if workers > 1 and len(flat) > 1:
        with ThreadPoolExecutor(workers) as pool:
            out = list(pool.map(_resize_channel, flat))
    else:
        out = [_resize_channel(ch) for ch in flat]
    return torch.from_numpy(np.stack(out).reshape(n, c, SIZE, SIZE))


def fast_resize(pixels: torch.Tensor) -> torch.Tensor:
    """Bilinear resize to 299 x 299 on the tensor's device (align_corners=False)."""
    return F.interpolate(pixels, size=(SIZE, SIZE), mode="bilinear", align_corners=False)


class FIDInception(torch.nn.Module):
    """The TF-FID Inception pool3 network (TorchScript); input [N, 3, 299, 299] in [0, 255]."""

    def __init__(self, net, path: Path):
        super().__init__()
        self.net, self.path = net, Path(path)

    @property
    def sha256(self) -> str:
        return sha256_file(self.path)

    @torch.no_grad()
    def forward(self, pixels299: torch.Tensor) -> torch.Tensor:
        if pixels299.shape[1:] != (3, SIZE, SIZE):
            raise ValueError(f"Inception input must be [N, 3, {SIZE}, {SIZE}], got {tuple(pixels299.shape)}")
        return self.net((pixels299 - 128.0) / 128.0).reshape(-1, 2048)


def load_fid_inception(path=None, device="cpu") -> FIDInception:
    """Load the TorchScript file from `path`, else env SJVAE_INCEPTION (a file, or a folder holding it)."""
    file = resolve_file(path, INCEPTION_ENV, INCEPTION_OPTION, "FID Inception network (TorchScript)",
                        names=(INCEPTION_FILE,))
    try:
        net = torch.jit.load(str(file), map_location=device).eval()
    except Exception as e:  # a wrong or truncated file
        raise MetricUnavailable(f"could not load the FID Inception TorchScript {str(file)!r} "
                                f"(given by {INCEPTION_OPTION} / {INCEPTION_ENV}): {e}") from e
    return FIDInception(net, file)


@torch.no_grad()
def inception_features(batches, inception: FIDInception, mode: str = "clean", *, num: int | None = None,
                       device=None, chunk: int = 64, progress: bool = False) -> np.ndarray:
    """Pool3 features [M, 2048] (float64) of the images in `batches` ([-1, 1]); the first `num` only."""
    if mode not in FID_MODES:
        raise ValueError(f"unknown FID mode {mode!r}; choose one of {', '.join(FID_MODES)}")
    device = torch.device(device or next(iter(inception.net.parameters())).device)
    feats, have = [], 0
    bar = progress_bar(total=num, desc=f"FID features ({mode})", unit="img", enabled=progress)
    for batch in batches:
        if num is not None:
            batch = batch[:num - have]
        for i in range(0, batch.shape[0], chunk):
            x = to_pixels(batch[i:i + chunk], rgb=False)  # resizing grey once = resizing 3 copies
            x = clean_resize(x) if mode == "clean" else fast_resize(x.to(device))
            x = x.to(device)
            feats.append(inception(x.expand(-1, 3, -1, -1)).double().cpu().numpy())
        have += batch.shape[0]
        bar.update(batch.shape[0])
        if num is not None and have >= num:
            break
    bar.close()
    if not feats:
        raise ValueError("no images reached the FID feature extractor")
    return np.concatenate(feats)


def _stats_protocol(dataset, split, mode, num, inception, data_root, size) -> dict:
    return {"metric": "fid", "version": STATS_VERSION, "dataset": dataset, "split": split, "mode": mode,
            "num": "all" if num is None else int(num), "dataset_size": int(size),
            "data_root": str(Path(data_root).resolve()) if data_root else None,
            "inception_sha256": inception.sha256,
            "pipeline": "x[-1,1] -> (x+1)/2*255, grey->RGB, resize 299, (p-128)/128"}


def fid_reference_stats(dataset: str, split: str, inception: FIDInception, mode: str = "clean", *,
                        root=None, cache_dir=None, num: int | None = None, batch_size: int = 128,
                        device=None, progress: bool = False) -> dict:
    """mu, sigma of a dataset split (first `num` images, all by default), cached as npz.

    The cache file holds `mu`, `sigma`, `count` and `protocol` (JSON); its name carries a hash of the
    protocol (dataset, split, mode, count, data root, network checksum), and a file whose protocol
    differs is never reused. Returns {'mu', 'sigma', 'count', 'protocol', 'path', 'cached'}."""
    from ..data import EMBEDDED, load_dataset, resolve_data_root
    data = load_dataset(dataset, split, root=root, cache_dir=cache_dir, augment=False)
    source = EMBEDDED[dataset] if dataset in EMBEDDED else resolve_data_root(root)
    protocol = _stats_protocol(dataset, split, mode, num, inception, source, len(data))
    path = resolve_cache_dir(cache_dir) / "fid_stats" / (
        f"{dataset}_{split}_{mode}_{protocol['num']}_{protocol_key(protocol)}.npz")
    z = load_npz_cache(path, json.loads(json.dumps(protocol)))
    if z is not None:
        return {"mu": z["mu"], "sigma": z["sigma"], "count": int(z["count"]),
                "protocol": protocol, "path": str(path), "cached": True}
    from .sources import dataset_batches
    feats = inception_features(dataset_batches(data, batch_size, num), inception, mode, device=device,
                               progress=progress)
    mu, sigma = gaussian_stats(feats)
    save_npz_atomic(path, mu=mu, sigma=sigma, count=np.int64(len(feats)),
                    protocol=np.array(json.dumps(protocol, sort_keys=True)))
    return {"mu": mu, "sigma": sigma, "count": len(feats), "protocol": protocol, "path": str(path),
            "cached": False}


def compute_fid(batches, reference: dict, inception: FIDInception, mode: str = "clean", *,
                num: int | None = 5000, device=None, progress: bool = False) -> dict:
    """FID of the images in `batches` against `reference` ({'mu', 'sigma'}, e.g. fid_reference_stats).

    Reference protocol: 40 batches of 128 samples with the features cut to the first 5,000 (clean-fid)."""
    feats = inception_features(batches, inception, mode, num=num, device=device, progress=progress)
    mu, sigma = gaussian_stats(feats)
    return {"fid": frechet_distance(mu, sigma, reference["mu"], reference["sigma"]),
            "num_images": int(len(feats)), "mode": mode,
            "reference_count": int(reference.get("count", -1))}
