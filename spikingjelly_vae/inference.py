"""Using a trained model: generate images, reconstruct a dataset split, summarise a model."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Optional

import torch

from .atomic import atomic_write
from .checkpoint import checkpoint_dataset, load_model
from .data import dataset_info, load_dataset, to_unit_range
from .runtime import eval_mode, progress_bar, resolve_device
from .train.outputs import save_recon_grid

__all__ = ["sample_to_file", "reconstruct_to_file", "model_summary", "kernel_backend_of"]


def _output_path(out, suffixes, force: bool) -> Path:
    from .overwrite import claim_output
    out = Path(out)
    if out.suffix.lower() not in suffixes:
        raise ValueError(f"output {str(out)!r} must end in {' or '.join(suffixes)}")
    claim_output(out, "PNG image" if out.suffix.lower() == ".png" else "tensor file", force=force)
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def sample_to_file(checkpoint, n: int, out, *, seed: int = 0, device: str = "auto", batch_size: int = 256,
                   nrow: int = 8, force: bool = False, prior: str = "learned", progress: bool = False) -> dict:
    """Generate `n` images with `model.sample` (`prior="learned"`) or, for ESVAE, from the rate prior
    `prior` ("gmm:PATH" or "diffusion:PATH", `prior.load_prior`); write a PNG grid (`.png`, the prior's
    name in its text chunks) or the tensor `[n, C, H, W]` in [-1, 1] (`.pt`). Draws come from one
    generator seeded with `seed`, so a repeat gives the same images. `progress`: a bar over the batches."""
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be >= 1, got {n}, {batch_size}")
    out = _output_path(out, (".png", ".pt"), force)
    dev = resolve_device(device)
    model, ckpt = load_model(checkpoint, map_location=dev)
    model.eval()
    draw, prior_name = model.sample, "learned"
    if prior != "learned":
        from .prior import load_prior, sample_images
        rate_prior = load_prior(prior, model, checkpoint=checkpoint)
        prior_name = rate_prior.name

        def draw(k, generator):
            return sample_images(model, k, prior=rate_prior, generator=generator)
    _check_memory(n, model.config, out)
    gen = torch.Generator(device=dev).manual_seed(seed)
    starts = progress_bar(range(0, n, batch_size), desc="sampling", unit="batch", enabled=progress)
    with torch.no_grad():
        images = torch.cat([draw(min(batch_size, n - i), generator=gen).float().cpu() for i in starts])
    meta = {"checkpoint": str(checkpoint), "prior": prior_name, "seed": str(seed)}
    if out.suffix.lower() == ".pt":
        atomic_write(out, lambda p: torch.save(images, p))
    else:
        atomic_write(out, lambda p: _save_png(images, p, nrow, meta))
    return {"out": str(out), "n": n, "shape": list(images.shape), "model": model.config.get("model"),
            "epoch": ckpt.get("epoch"), "seed": seed, "device": str(dev), "prior": prior_name}


def _check_memory(n: int, config: dict, out) -> None:
    """ValueError before any sampling when `n` images (held in memory, then written whole) would not fit in
    the memory that is free now (a grid PNG needs about 3 times the images' size again)."""
    import os
    side, channels = int(config.get("image_size") or 32), int(config.get("in_channels") or 3)
    need = n * channels * side * side * 4 * (4 if str(out).lower().endswith(".png") else 1)
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): no check
        return
    if need > free:
        raise ValueError(f"-n {n} images of {channels}x{side}x{side} need about {need / 1e9:,.1f} GB of memory, "
                         f"{free / 1e9:,.1f} GB are free; lower -n (or write several files with other --seed)")


def _save_png(images: torch.Tensor, path, nrow: int, meta: dict) -> None:
    """A PNG grid of images in [-1, 1] with `meta` as PNG text chunks."""
    from PIL import Image, PngImagePlugin
    from torchvision.utils import make_grid
    grid = make_grid(to_unit_range(images), nrow=nrow, padding=2, pad_value=1.0)
    info = PngImagePlugin.PngInfo()
    for key, value in meta.items():
        info.add_text(key, value)
    array = grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()
    Image.fromarray(array).save(path, format="PNG", pnginfo=info)  # as torchvision's save_image, plus text


def reconstruct_to_file(checkpoint, out, *, n: int = 32, dataset: Optional[str] = None, data_root=None,
                        cache_dir=None, split: str = "test", seed: int = 0, device: str = "auto", nrow: int = 8,
                        force: bool = False) -> dict:
    """PNG of the first `n` images of a split (rows of originals) above their reconstructions; also
    returns their per-image mean MSE."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out = _output_path(out, (".png",), force)
    dev = resolve_device(device)
    model, ckpt = load_model(checkpoint, map_location=dev)
    dataset = dataset or checkpoint_dataset(ckpt)
    if dataset is None:
        raise ValueError(f"{checkpoint} does not say which dataset it was trained on; pass --dataset")
    info = dataset_info(dataset)
    want = (model.config.get("in_channels"), model.config.get("image_size"))
    if want != (info["in_channels"], info["image_size"]):
        raise ValueError(f"the model of {checkpoint} takes {want[0]}x{want[1]}x{want[1]} images but {dataset} has "
                         f"{info['in_channels']}x{info['image_size']}x{info['image_size']}; pass the right --dataset")
    data = load_dataset(dataset, split, data_root, cache_dir, augment=False)
    x = torch.stack([data[i][0] for i in range(min(n, len(data)))]).to(dev)
    gen = torch.Generator(device=dev).manual_seed(seed)
    atomic_write(out, lambda p: save_recon_grid(model, x, p, torch.Generator(device=dev).manual_seed(seed), nrow=nrow))
    with torch.no_grad(), eval_mode(model):
        mse = (model(x, generator=gen)[0].double() - x.double()).pow(2).flatten(1).mean(1).mean().item()
    return {"out": str(out), "n": x.shape[0], "dataset": dataset, "split": split, "mse": mse,
            "epoch": ckpt.get("epoch"), "seed": seed, "device": str(dev)}


def kernel_backend_of(config: dict) -> Optional[str]:
    """The kernel switch of a model config: `kernel_backend`, or `backend` in older configs; None if absent."""
    return config.get("kernel_backend", config.get("backend"))


def model_summary(model, device="cpu", checkpoint: Optional[dict] = None) -> dict:
    """Parameters (total, trainable, per top-level block), layer types and counts, latent size, T,
    device and the kernel backend our neurons would use there."""
    device = torch.device(device)
    cfg = dict(getattr(model, "config", {}))
    blocks = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    containers = (torch.nn.Sequential, torch.nn.ModuleList, torch.nn.ModuleDict)
    layers = Counter(type(m).__name__ for m in list(model.modules())[1:] if not isinstance(m, containers))
    requested = kernel_backend_of(cfg)
    try:
        from .kernels import select_backend
        chosen = (select_backend(torch.empty(1, device=device), requested) if requested is not None
                  else "n/a (no spiking layers)")
    except Exception as err:  # kernels unavailable: report why rather than fail the summary
        chosen = f"unknown ({type(err).__name__}: {err})"
    res = {"model": cfg.get("model", type(model).__name__), "class": type(model).__name__, "config": cfg,
           "parameters": sum(p.numel() for p in model.parameters()),
           "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
           "blocks": blocks, "layers": dict(sorted(layers.items())), "latent_dim": cfg.get("latent_dim"),
           "T": cfg.get("T"), "image_shape": [cfg.get("in_channels"), cfg.get("image_size"), cfg.get("image_size")],
           "device": str(device), "kernel_backend": {"requested": requested, "on_this_device": chosen}}
    if checkpoint is not None:
        res["checkpoint"] = {k: checkpoint.get(k) for k in ("epoch", "step", "dataset", "version", "best_test_loss")}
        res["checkpoint"]["metrics"] = checkpoint.get("metrics")
    return res
