"""`sjvae evaluate`: all Table I metrics of a checkpoint, with protocol, counts and checksums.

Sampling: one pool of ceil(num_samples / 128) batches of 128 generated images (5,120 for 5,000)
feeds both FID (first `num_samples`, as clean-fid) and FAD (all 5,120 in their batches of 128, as the
reference); the reference code draws two such pools, which has the same distribution. IS draws its
own `is_batches` batches of `is_batch` (reference: 10 x 256, one split per batch).
Generated images come from the model's learned prior (the paper's protocol), or for ESVAE from the rate
prior `options.prior` ("gmm:PATH" or "diffusion:PATH", spikingjelly_vae.prior): still Poisson spikes
through the decoder, only the rate source differs. The result records the prior's name under "prior".
A metric whose weights are missing is reported as unavailable with the reason, never as a number.
"""
from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass, fields
from typing import Callable, Optional

import torch

from ..atomic import sha256_file
from ..runtime import progress_bar
from .fad import compute_fad, load_fad_model
from .fid import compute_fid, fid_reference_stats, load_fid_inception
from .inception_score import compute_inception_score, load_is_inception
from .reconstruction import reconstruction_mse
from .resources import MetricUnavailable
from .sources import collect, sample_batches, tensor_batches

__all__ = ["METRICS", "PROTOCOLS", "EvalOptions", "EvalSources", "split_eval_kwargs", "evaluate_checkpoint",
           "requested_failures", "format_table"]

METRICS = ("mse", "fid", "is", "fad")
PROTOCOLS = ("reference", "standard")


@dataclass(frozen=True)
class EvalOptions:
    """What `evaluate_checkpoint` measures and how (the `sjvae evaluate` settings; defaults: the paper's)."""

    metrics: tuple = METRICS
    protocol: str = "reference"        # reference | standard (docs/metrics.md)
    fid_mode: str = "clean"            # clean | fast resize to 299
    num_samples: int = 5000            # generated images for FID (FAD takes all ceil(n/batch) x batch drawn)
    sample_batch: int = 128            # sampling batch of FID/FAD
    is_batch: int = 256
    is_batches: int = 10
    mse_batch: Optional[int] = None    # default: the dataset's DatasetSpec.mse_batch
    mse_num: Optional[int] = None      # first N test images only
    fid_ref_num: Optional[int] = None  # FID reference statistics from the first N images only
    seed: int = 0
    prior: str = "learned"             # learned | gmm:PATH | diffusion:PATH (`sjvae prior fit`)

    def check(self) -> None:
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown or not self.metrics:
            raise ValueError(f"unknown metrics {unknown or self.metrics}; choose from {', '.join(METRICS)}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; choose one of {', '.join(PROTOCOLS)}")


@dataclass(frozen=True)
class EvalSources:
    """Where the data, the metric weights and the caches are (None: the environment variables / defaults)."""

    data_root: Optional[str] = None
    cache_dir: Optional[str] = None
    inception_weights: Optional[str] = None  # FID TorchScript Inception (env SJVAE_INCEPTION)
    is_weights: Optional[str] = None         # torchvision inception_v3 weights (env SJVAE_IS_WEIGHTS)
    fad_dir: Optional[str] = None            # official FAD files (env SJVAE_FAD)
    fad_checkpoint: Optional[str] = None     # a feature AE of `sjvae fad-ae train` instead


def split_eval_kwargs(**kwargs) -> tuple:
    """Flat keyword options (as `compare(..., evaluate=True, **kwargs)` takes them) ->
    ``(EvalOptions, EvalSources, rest)``; ``rest`` holds the others (dataset, device, progress, log)."""
    groups = []
    for cls in (EvalOptions, EvalSources):
        names = {f.name for f in fields(cls)}
        groups.append(cls(**{k: kwargs.pop(k) for k in list(kwargs) if k in names}))
    return groups[0], groups[1], kwargs


@dataclass
class _Run:
    """One evaluation in progress: the model, its settings and the result dict being filled."""

    model: torch.nn.Module
    dataset: str
    device: torch.device
    options: EvalOptions
    sources: EvalSources
    progress: bool
    log: Callable[[str], None]
    res: dict
    pool: Optional[torch.Tensor] = None  # generated images shared by FID and FAD
    prior: Optional[object] = None       # a prior.RatePrior; None: model.sample (the learned prior)

    def generator(self, offset: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self.options.seed + offset)

    def samples(self, num: int, batch_size: int, offset: int):
        """Batches of generated images from the chosen prior (`sample_batches` for the learned one)."""
        if self.prior is None:
            return sample_batches(self.model, num, batch_size, self.generator(offset))
        from ..prior import prior_batches
        return prior_batches(self.model, num, batch_size, prior=self.prior, generator=self.generator(offset))


def evaluate_checkpoint(checkpoint, options: EvalOptions = EvalOptions(), sources: EvalSources = EvalSources(),
                        *, dataset: Optional[str] = None, device="auto", progress: bool = False,
                        log: Optional[Callable[[str], None]] = None, allow_dataset_mismatch: bool = False) -> dict:
    """Compute `options.metrics` for the model in `checkpoint` (dataset: given, else the one it records);
    returns the JSON-ready result dict. A dataset other than the checkpoint's own is refused (ValueError)
    unless `allow_dataset_mismatch`; the result then records `dataset_mismatch`."""
    from .. import __version__
    from ..checkpoint import checkpoint_dataset, load_model
    from ..data import DATASETS
    from ..runtime import resolve_device
    options.check()
    _check_cache_outside_data_root(sources)
    device = resolve_device(device)
    model, ckpt = load_model(checkpoint, map_location=device)
    dataset = dataset or checkpoint_dataset(ckpt)
    if dataset is None:
        raise ValueError(f"{checkpoint} does not say which dataset it was trained on; pass --dataset")
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    own = checkpoint_dataset(ckpt)
    if own is not None and own != dataset and not allow_dataset_mismatch:
        raise ValueError(f"{checkpoint} was trained on {own}, not {dataset}; drop --dataset, or pass "
                         "--allow-dataset-mismatch to measure it on another dataset (the result is marked)")
    res = {"checkpoint": str(checkpoint), "checkpoint_sha256": sha256_file(checkpoint),
           "epoch": ckpt.get("epoch"), "model": ckpt.get("config"), "dataset": dataset,
           "checkpoint_dataset": own, "dataset_mismatch": own is not None and own != dataset,
           "protocol": options.protocol, "seed": options.seed, "device": str(device), "metrics": {},
           "unavailable": {}, "weights": {}, "seconds": {}, "prior": "learned",
           "versions": {"spikingjelly_vae": __version__, "torch": torch.__version__,
                        "python": platform.python_version()}}
    run = _Run(model.eval(), dataset, device, options, sources, progress, log or (lambda msg: None), res)
    if options.prior != "learned":
        _use_prior(run, checkpoint)
    wanted = set(options.metrics) | ({"sampling"} if {"fid", "fad"} & set(options.metrics) else set())
    for name, step in (("mse", _mse), ("sampling", _sample_pool), ("fid", _fid), ("fad", _fad),
                       ("is", _inception_score)):
        if name in wanted:
            _timed(run, name, step)
    return res


def _use_prior(run: _Run, checkpoint) -> None:
    """Sample from the rate prior `options.prior` (refused unless ESVAE and fitted to this checkpoint)."""
    from ..prior import load_prior
    run.prior = load_prior(run.options.prior, run.model, checkpoint=checkpoint)
    path = run.options.prior.partition(":")[2]
    run.res["prior"] = run.prior.name
    run.res["prior_file"] = {"path": path, "sha256": sha256_file(path),
                             "provenance": getattr(run.prior, "provenance", {})}


def _check_cache_outside_data_root(sources: EvalSources) -> None:
    """ValueError when the cache folder lies inside the data root (nothing is written under the data)."""
    import os
    from pathlib import Path

    from ..data import resolve_cache_dir
    root = Path(sources.data_root or os.environ.get("SJVAE_DATA") or "data").expanduser()
    cache = resolve_cache_dir(sources.cache_dir)
    if root.is_dir() and cache.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"cache folder {str(cache)!r} lies inside the data root {str(root)!r}; pass --cache-dir "
                         "(or set SJVAE_CACHE) to a folder outside it")


def requested_failures(res: dict, requested) -> dict:
    """The metrics of `requested` that the result could not compute, and any metric whose value came out
    non-finite (name -> reason)."""
    failed = set(requested) | set(res.get("non_finite") or ())
    return {k: v for k, v in (res.get("unavailable") or {}).items() if k in failed}


def _timed(run: _Run, name: str, step: Callable) -> None:
    """Run one step; a result dict goes to res["metrics"][name], a MetricUnavailable to res["unavailable"],
    its seconds to res["seconds"][name]."""
    t = time.time()
    try:
        out = step(run)
        bad = sorted(k for k, v in (out or {}).items() if isinstance(v, float) and not math.isfinite(v))
        if bad:
            run.res["non_finite"] = [*run.res.get("non_finite", []), name]
            raise MetricUnavailable(f"the model gave a non-finite {', '.join(bad)} (NaN or infinite), which is "
                                    "not a result; check the checkpoint's weights and the data")
        if out is not None:
            run.res["metrics"][name] = out
    except MetricUnavailable as e:
        run.res["unavailable"][name] = str(e)
    run.res["seconds"][name] = time.time() - t


def _mse(run: _Run) -> dict:
    from ..data import dataset_spec, load_dataset
    run.log("reconstruction MSE on the test split ...")
    spec, o = dataset_spec(run.dataset), run.options
    test = load_dataset(run.dataset, "test", root=run.sources.data_root, cache_dir=run.sources.cache_dir,
                        augment=False)
    r = reconstruction_mse(run.model, test, o.mse_batch or spec.mse_batch, run.generator(0), device=run.device,
                           drop_last_reference=spec.drop_last, num=o.mse_num, progress=run.progress)
    return {**r, "split": "test", "protocol": "per-image mean over the whole test set (mse); the reference's "
                                              "mean of batch means (mse_batch_mean)"}


def _sample_pool(run: _Run) -> None:
    """One pool of generated images for FID and FAD (run.pool)."""
    o = run.options
    run.log(f"sampling {o.num_samples} images in batches of {o.sample_batch} ({run.res['prior']} prior) ...")
    batches = run.samples(o.num_samples, o.sample_batch, 1)
    run.pool = collect(progress_bar(batches, total=math.ceil(o.num_samples / o.sample_batch), desc="sampling",
                                    unit="batch", enabled=run.progress))
    run.res["num_generated"] = int(run.pool.shape[0])


def _fid(run: _Run) -> dict:
    from ..data import dataset_spec
    o, src = run.options, run.sources
    inception = load_fid_inception(src.inception_weights, run.device)
    run.res["weights"]["fid_inception"] = {"path": str(inception.path), "sha256": inception.sha256}
    split = dataset_spec(run.dataset).fid_split
    run.log(f"FID reference statistics of {run.dataset} {split} ({o.fid_mode}) ...")
    ref = fid_reference_stats(run.dataset, split, inception, o.fid_mode, root=src.data_root,
                              cache_dir=src.cache_dir, num=o.fid_ref_num, device=run.device, progress=run.progress)
    run.log("FID of the samples ...")
    r = compute_fid(tensor_batches(run.pool, o.sample_batch), ref, inception, o.fid_mode, num=o.num_samples,
                    device=run.device, progress=run.progress)
    return {**r, "reference_split": split, "reference_stats": ref["path"], "reference_stats_cached": ref["cached"],
            "protocol": f"TF-Inception pool3, {o.fid_mode} resize"
                        + (" (clean-fid, the reference)" if o.fid_mode == "clean" else "")}


def _fad(run: _Run) -> dict:
    src = run.sources
    fad = load_fad_model(run.dataset, src.fad_dir, src.cache_dir, checkpoint=src.fad_checkpoint, device=run.device)
    run.res["weights"]["fad_ae"] = fad.describe()
    run.log(f"FAD ({run.options.protocol}, {fad.source} autoencoder) ...")
    batches = tensor_batches(run.pool, run.options.sample_batch)
    return compute_fad(progress_bar(batches, total=math.ceil(len(run.pool) / run.options.sample_batch),
                                    desc="FAD features", unit="batch", enabled=run.progress),
                       fad, run.options.protocol, root=src.data_root, cache_dir=src.cache_dir)


def _inception_score(run: _Run) -> dict:
    o = run.options
    net, info = load_is_inception(run.sources.is_weights, run.device)
    run.res["weights"]["is_inception"] = info
    run.log(f"Inception Score ({o.protocol}) on {o.is_batches} x {o.is_batch} samples ...")
    batches = progress_bar(run.samples(o.is_batch * o.is_batches, o.is_batch, 2), total=o.is_batches,
                           desc="IS samples", unit="batch", enabled=run.progress)
    r = compute_inception_score(batches, net, o.protocol, splits=o.is_batches if o.protocol == "reference" else 10,
                                device=run.device)
    if not info["torchvision_imagenet"]:
        r["note"] = "weights file is not torchvision's published inception_v3_google-0cc3c7bd.pth"
    return r


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
                     f"{m['is']['protocol']}, {m['is']['splits']} splits"
                     + (f"; {m['is']['note']}" if "note" in m["is"] else "")))
    if "fad" in m:
        f = m["fad"]
        rows.append(("FAD", _fmt(f["fad"]), str(f["num_images"]),
                     f"{f['protocol']}, {f['source']} AE" + (f"; {f['note']}" if "note" in f else "")))
    for k, why in res["unavailable"].items():
        rows.append((k.upper(), "unavailable", "", why))
    if res.get("prior", "learned") != "learned" and {"fid", "is", "fad"} & set(m):
        rows.append(("prior", res["prior"], "", "samples of FID/IS/FAD from this rate prior, not the "
                                                "model's learned one (not the paper's protocol)"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows)

