"""`sjvae evaluate`: all Table I metrics of a checkpoint, with protocol, counts and checksums.

Sampling: one pool of ceil(num_samples / 128) batches of 128 generated images (5,120 for 5,000)
feeds both FID (first `num_samples`, as clean-fid) and FAD (all 5,120 in their batches of 128, as the
reference); the reference code draws two such pools, which has the same distribution. IS draws its
own `is_batches` batches of `is_batch` (reference: 10 x 256, one split per batch).
A metric whose weights are missing is reported as unavailable with the reason, never as a number.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from ..atomic import atomic_write_text
from .fad import compute_fad, load_fad_model
from .fid import compute_fid, fid_reference_stats, load_fid_inception
from .inception_score import compute_inception_score, load_is_inception
from .reconstruction import REFERENCE_DROP_LAST, reconstruction_mse
from .resources import MetricUnavailable, sha256_file
from .sources import collect, sample_batches, tensor_batches

__all__ = ["METRICS", "PROTOCOLS", "FID_SPLIT", "evaluate_checkpoint", "format_table", "write_json"]

METRICS = ("mse", "fid", "is", "fad")
PROTOCOLS = ("reference", "standard")
FID_SPLIT = {"mnist": "test", "fashion": "test", "cifar10": "test", "celeba": "valid"}  # as the reference


def _checkpoint_dataset(ckpt: dict):
    for src in (ckpt, ckpt.get("config") or {}, ckpt.get("args") or {}, ckpt.get("train_config") or {}):
        if isinstance(src, dict) and isinstance(src.get("dataset"), str):
            return src["dataset"]
    return None


def evaluate_checkpoint(checkpoint, metrics=METRICS, dataset=None, data_root=None, protocol="reference",
                        fid_mode="clean", inception_weights=None, is_weights=None, fad_dir=None,
                        fad_checkpoint=None, cache_dir=None, num_samples=5000, sample_batch=128,
                        is_batch=256, is_batches=10, mse_batch=None, mse_num=None, fid_ref_num=None, seed=0, device=None,
                        progress=False, log=lambda msg: None) -> dict:
    """Compute `metrics` for the model in `checkpoint`; returns the JSON-ready result dict."""
    from .. import __version__
    from ..checkpoint import load_model
    from ..data import load_dataset
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"unknown metrics {unknown or metrics}; choose from {', '.join(METRICS)}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, ckpt = load_model(checkpoint, map_location=device)
    dataset = dataset or _checkpoint_dataset(ckpt)
    if dataset is None:
        raise ValueError(f"{checkpoint} does not say which dataset it was trained on; pass --dataset")
    if dataset not in FID_SPLIT:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(FID_SPLIT)}")
    res = {"checkpoint": str(checkpoint), "checkpoint_sha256": sha256_file(checkpoint),
           "epoch": ckpt.get("epoch"), "model": ckpt.get("config"), "dataset": dataset, "protocol": protocol,
           "seed": seed, "device": str(device), "metrics": {}, "unavailable": {}, "weights": {},
           "seconds": {}, "versions": {"spikingjelly_vae": __version__, "torch": torch.__version__,
                                       "python": platform.python_version()}}
    model.eval()
    gen = lambda offset: torch.Generator(device=device).manual_seed(seed + offset)  # noqa: E731

    if "mse" in metrics:
        t = time.time()
        log("reconstruction MSE on the test split ...")
        test = load_dataset(dataset, "test", root=data_root, cache_dir=cache_dir, augment=False)
        mse_batch = mse_batch or (128 if dataset == "celeba" else 512)  # ESVAE's test batch: 2 x train batch
        r = reconstruction_mse(model, test, mse_batch, gen(0), device, REFERENCE_DROP_LAST[dataset], num=mse_num)
        res["metrics"]["mse"] = {**r, "split": "test",
                                 "protocol": "per-image mean over the whole test set (mse); the reference's "
                                             "mean of batch means (mse_batch_mean)"}
        res["seconds"]["mse"] = time.time() - t

    pool = None
    if "fid" in metrics or "fad" in metrics:
        t = time.time()
        log(f"sampling {num_samples} images in batches of {sample_batch} ...")
        pool = collect(sample_batches(model, num_samples, sample_batch, gen(1)))
        res["num_generated"] = int(pool.shape[0])
        res["seconds"]["sampling"] = time.time() - t

    if "fid" in metrics:
        t = time.time()
        try:
            inception = load_fid_inception(inception_weights, device)
            res["weights"]["fid_inception"] = {"path": str(inception.path), "sha256": inception.sha256}
            split = FID_SPLIT[dataset]
            log(f"FID reference statistics of {dataset} {split} ({fid_mode}) ...")
            ref = fid_reference_stats(dataset, split, inception, fid_mode, root=data_root, cache_dir=cache_dir,
                                      num=fid_ref_num, device=device, progress=progress)
            log("FID of the samples ...")
            r = compute_fid(tensor_batches(pool, sample_batch), ref, inception, fid_mode, num_samples, device,
                            progress=progress)
            res["metrics"]["fid"] = {**r, "reference_split": split, "reference_stats": ref["path"],
                                     "reference_stats_cached": ref["cached"],
                                     "protocol": f"TF-Inception pool3, {fid_mode} resize"
                                                 + (" (clean-fid, the reference)" if fid_mode == "clean" else "")}
        except MetricUnavailable as e:
            res["unavailable"]["fid"] = str(e)
        res["seconds"]["fid"] = time.time() - t

    if "fad" in metrics:
        t = time.time()
        try:
            fad = load_fad_model(dataset, fad_dir, cache_dir, checkpoint=fad_checkpoint, device=device)
            res["weights"]["fad_ae"] = fad.describe()
            log(f"FAD ({protocol}, {fad.source} autoencoder) ...")
            r = compute_fad(tensor_batches(pool, sample_batch), fad, protocol, root=data_root, cache_dir=cache_dir)
            res["metrics"]["fad"] = r
        except MetricUnavailable as e:
            res["unavailable"]["fad"] = str(e)
        res["seconds"]["fad"] = time.time() - t

    if "is" in metrics:
        t = time.time()
        try:
            net, info = load_is_inception(is_weights, device)
            res["weights"]["is_inception"] = info
            log(f"Inception Score ({protocol}) on {is_batches} x {is_batch} samples ...")
            batches = sample_batches(model, is_batch * is_batches, is_batch, gen(2))
            r = compute_inception_score(batches, net, protocol,
                                        splits=is_batches if protocol == "reference" else 10, device=device)
            if not info["torchvision_imagenet"]:
                r["note"] = "weights file is not torchvision's published inception_v3_google-0cc3c7bd.pth"
            res["metrics"]["is"] = r
        except MetricUnavailable as e:
            res["unavailable"]["is"] = str(e)
        res["seconds"]["is"] = time.time() - t
    return res


def _fmt(v):
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def format_table(res: dict) -> str:
    """A plain-text table of the result dict (one row per metric)."""
    rows = [("metric", "value", "images", "protocol / note")]
    m = res["metrics"]
    if "mse" in m:
        rows.append(("MSE", _fmt(m["mse"]["mse"]), str(m["mse"]["num_images"]), "per-image mean, test split"))
        rows.append(("MSE (ref.)", _fmt(m["mse"]["mse_batch_mean"]), "",
                     f"mean of {m['mse']['num_batches_reference']} batch means (reference)"))
    if "fid" in m:
        rows.append(("FID", _fmt(m["fid"]["fid"]), str(m["fid"]["num_images"]),
                     f"{m['fid']['mode']} vs {res['dataset']} {m['fid']['reference_split']}"))
    if "is" in m:
        rows.append(("IS", f"{m['is']['is']:.4f} +- {m['is']['is_std']:.4f}", str(m["is"]["num_images"]),
                     f"{m['is']['protocol']}, {m['is']['splits']} splits" + (f"; {m['is']['note']}" if "note" in m["is"] else "")))
    if "fad" in m:
        f = m["fad"]
        rows.append(("FAD", _fmt(f["fad"]), str(f["num_images"]),
                     f"{f['protocol']}, {f['source']} AE" + (f"; {f['note']}" if "note" in f else "")))
    for k, why in res["unavailable"].items():
        rows.append((k.upper(), "unavailable", "", why))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows)


def write_json(res: dict, path) -> Path:
    """Write the result dict as JSON (temp file + rename)."""
    return atomic_write_text(path, json.dumps(res, indent=2, default=str))
