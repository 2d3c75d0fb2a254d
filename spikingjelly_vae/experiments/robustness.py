"""Decoder robustness to perturbed latent spikes (ESVAE paper Sec. II-B and IV-D: Table II, Fig. 5, Fig. 12).

z = posterior_spikes(x) ``[T, N, L]`` (seeded), x_clean = decode(z), x' = decode(perturb(z)):
  shuffle:   z'[:, n, l] = z[pi_nl, n, l], pi_nl an independent uniform permutation of the T steps
  flip a:    z' = z XOR m,                m ~ Bernoulli(a) per spike bit
  gaussian a: z' = 1[z + m * eps > 0.5],  m ~ Bernoulli(a), eps ~ N(0, 1)
Reported: MSE(x', x) ("vs original") and MSE(x', x_clean) ("vs clean reconstruction"), images in [-1, 1].

All perturbation draws are made on the CPU from generators seeded by (seed, stream, batch index) only, so
every model with the same T, L, batch size and image count gets identical permutations and masks, on any
device. The masks of one batch share their uniforms across levels (u < a), so the flipped bits at a level
include those at every lower level.
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence

import torch

from .common import generator_for, pyplot, save_figure

KINDS = ("shuffle", "flip", "gaussian")
DEFAULT_LEVELS = (0.05, 0.10, 0.15, 0.20, 0.25, 0.30)


def _check_level(level: float) -> float:
    level = float(level)
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"noise level must be a probability in [0, 1], got {level}")
    return level


def time_shuffle(z: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Permute each neuron's spike train over time (dim 0), independently for every sample and neuron.

    The permutation of z[:, i] is the argsort of T CPU uniforms, so it is uniform over the T! orders.
    """
    keys = torch.rand(z.shape, generator=generator)
    order = keys.argsort(dim=0).to(z.device)
    return z.gather(0, order)


def bit_flip(z: torch.Tensor, level: float, generator: Optional[torch.Generator] = None,
             uniform: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Flip each spike bit with probability ``level``: z' = where(u < a, 1 - z, z), u ~ U[0, 1) on the CPU."""
    level = _check_level(level)
    u = torch.rand(z.shape, generator=generator) if uniform is None else uniform
    flip = (u < level).to(z.device)
    return torch.where(flip, 1.0 - z, z)


def gaussian_noise(z: torch.Tensor, level: float, generator: Optional[torch.Generator] = None, *,
                   uniform: Optional[torch.Tensor] = None,
                   noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Add N(0, 1) noise to a fraction ``level`` of the bits and re-binarise at 0.5.

    z' = where(u < a, 1[z + eps > 0.5], z); u ~ U[0, 1), eps ~ N(0, 1), both drawn on the CPU.
    """
    level = _check_level(level)
    u = torch.rand(z.shape, generator=generator) if uniform is None else uniform
    eps = torch.randn(z.shape, generator=generator) if noise is None else noise
    select = (u < level).to(z.device)
    noisy = (z + eps.to(device=z.device, dtype=z.dtype) > 0.5).to(z.dtype)
    return torch.where(select, noisy, z)


def perturbations(z: torch.Tensor, kind: str, levels: Sequence[float], seed: int, batch_index: int):
    """Yield ``(level, z')`` for one batch; draws depend only on (seed, kind, batch index, z.shape)."""
    if kind == "shuffle":
        yield None, time_shuffle(z, generator_for(seed, "shuffle", batch_index))
        return
    if kind not in KINDS:
        raise ValueError(f"unknown robustness kind {kind!r}; choose one of {', '.join(KINDS)}")
    uniform = torch.rand(z.shape, generator=generator_for(seed, f"{kind}-mask", batch_index))
    noise = None
    if kind == "gaussian":
        noise = torch.randn(z.shape, generator=generator_for(seed, "gaussian-noise", batch_index))
    for level in levels:
        if kind == "flip":
            yield level, bit_flip(z, level, uniform=uniform)
        else:
            yield level, gaussian_noise(z, level, uniform=uniform, noise=noise)


@torch.no_grad()
def evaluate_robustness(model, loader, kind: str, levels: Sequence[float] = DEFAULT_LEVELS, *, seed: int = 0,
                        device=None, num_examples: int = 8, progress: bool = False) -> Dict:
    """Decode perturbed posterior spikes of every image in ``loader``; return MSEs per level.

    Returns a dict with ``kind``, ``levels`` ([None] for shuffle), ``mse_vs_original``, ``mse_vs_clean``,
    ``changed_fraction`` (share of spike bits that differ from z), ``clean_mse`` (MSE(x_clean, x)),
    ``latent_rate`` (mean spike rate of z), ``num_images`` and ``examples`` (first ``num_examples`` images:
    ``original``, ``clean`` and ``perturbed`` [levels, k, C, H, W], all on the CPU).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown robustness kind {kind!r}; choose one of {', '.join(KINDS)}")
    levels = [None] if kind == "shuffle" else [_check_level(a) for a in levels]
    if not levels:
        raise ValueError("give at least one noise level, e.g. 0.05,0.1,0.15,0.2,0.25,0.3")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    sq_orig = torch.zeros(len(levels), dtype=torch.float64)
    sq_clean = torch.zeros(len(levels), dtype=torch.float64)
    changed = torch.zeros(len(levels), dtype=torch.float64)
    clean_sq, spikes, bits, pixels, count = 0.0, 0.0, 0, 0, 0
    examples = {"original": [], "clean": [], "perturbed": [[] for _ in levels]}
    start = time.time()
    for b, (x, _) in enumerate(loader):
        x = x.to(device)
        z = model.posterior_spikes(x, generator=generator_for(seed, "posterior", b, device))
        clean = model.decode(z)
        clean_sq += (clean - x).double().pow(2).sum().item()
        spikes += z.double().sum().item()
        bits += z.numel()
        pixels += x.numel()
        take = max(0, num_examples - count)
        if take:
            examples["original"].append(x[:take].cpu())
            examples["clean"].append(clean[:take].cpu())
        for i, (_, z_noisy) in enumerate(perturbations(z, kind, levels, seed, b)):
            out = model.decode(z_noisy)
            sq_orig[i] += (out - x).double().pow(2).sum().item()
            sq_clean[i] += (out - clean).double().pow(2).sum().item()
            changed[i] += (z_noisy != z).double().sum().item()
            if take:
                examples["perturbed"][i].append(out[:take].cpu())
        count += x.shape[0]
        if progress:
            print(f"  [{kind}] batch {b + 1}: {count} images, {time.time() - start:.1f} s", flush=True)
    if count == 0:
        raise ValueError("the data loader gave no images")
    return {
        "kind": kind, "levels": levels, "num_images": count,
        "mse_vs_original": (sq_orig / pixels).tolist(), "mse_vs_clean": (sq_clean / pixels).tolist(),
        "changed_fraction": (changed / bits).tolist(), "clean_mse": clean_sq / pixels,
        "latent_rate": spikes / bits,
        "examples": {"original": torch.cat(examples["original"]), "clean": torch.cat(examples["clean"]),
                     "perturbed": torch.stack([torch.cat(p) for p in examples["perturbed"]])},
    }


def result_rows(label: str, result: Dict) -> List[Dict]:
    """CSV rows (one per level) of one model's result."""
    return [{"model": label, "kind": result["kind"], "level": level, "num_images": result["num_images"],
             "mse_vs_original": result["mse_vs_original"][i], "mse_vs_clean": result["mse_vs_clean"][i],
             "changed_fraction": result["changed_fraction"][i], "clean_mse_vs_original": result["clean_mse"],
             "latent_rate": result["latent_rate"]}
            for i, level in enumerate(result["levels"])]


ROW_FIELDS = ("model", "kind", "level", "num_images", "mse_vs_original", "mse_vs_clean", "changed_fraction",
              "clean_mse_vs_original", "latent_rate")
KIND_TITLES = {"shuffle": "time shuffle of the latent spikes", "flip": "latent spike bit flips",
               "gaussian": "Gaussian noise on latent spikes (re-binarised at 0.5)"}
LEVEL_AXIS = {"flip": "flip probability a", "gaussian": "fraction a of latent bits given N(0,1) noise"}


def plot_curves(results: Dict[str, Dict], path) -> None:
    """Fig. 5 style: MSE vs level, one colour per model; solid vs original, dashed vs clean reconstruction.

    Level 0 is the unperturbed reconstruction (vs original: the clean MSE; vs clean: 0).
    For the time shuffle (no level) a grouped bar chart of the two MSEs per model (Table II).
    """
    plt = pyplot()
    kind = next(iter(results.values()))["kind"]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if kind == "shuffle":
        fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(results), 3.6))
        xs = range(len(results))
        orig = [r["mse_vs_original"][0] for r in results.values()]
        clean = [r["mse_vs_clean"][0] for r in results.values()]
        base = [r["clean_mse"] for r in results.values()]
        w = 0.27
        ax.bar([x - w for x in xs], base, w, label="clean recon. vs original", color="0.75")
        ax.bar(list(xs), orig, w, label="shuffled vs original", color=colours[0])
        ax.bar([x + w for x in xs], clean, w, label="shuffled vs clean recon.", color=colours[1])
        ax.set_xticks(list(xs), list(results), rotation=15)
        ax.set_ylabel("MSE (images in [-1, 1])")
        ax.legend(fontsize=8)
    else:
        fig, ax = plt.subplots(figsize=(5.2, 3.8))
        for (label, r), c in zip(results.items(), colours * 4):
            xs = [0.0, *r["levels"]]
            ax.plot(xs, [r["clean_mse"], *r["mse_vs_original"]], "-o", color=c, ms=4,
                    label=f"{label} vs original")
            ax.plot(xs, [0.0, *r["mse_vs_clean"]], "--s", color=c, ms=4, label=f"{label} vs clean recon.")
        ax.set_xlabel(LEVEL_AXIS[kind])
        ax.set_ylabel("MSE (images in [-1, 1])")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    n = next(iter(results.values()))["num_images"]
    ax.set_title(f"{KIND_TITLES[kind]} ({n} test images)", fontsize=10)
    save_figure(fig, path)


def plot_examples(result: Dict, label: str, path) -> None:
    """Fig. 12 style grid: rows original, clean reconstruction, then one row per level; columns images."""
    from ..data import to_unit_range

    plt = pyplot()
    ex = result["examples"]
    rows = [("original", ex["original"]), ("clean recon.", ex["clean"])]
    for level, imgs in zip(result["levels"], ex["perturbed"]):
        rows.append(("shuffled" if level is None else f"a = {level:g}", imgs))
    k = ex["original"].shape[0]
    fig, axes = plt.subplots(len(rows), k, figsize=(0.9 * k + 1.0, 0.95 * len(rows)), squeeze=False)
    for r, (name, imgs) in enumerate(rows):
        for c in range(k):
            ax = axes[r][c]
            img = to_unit_range(imgs[c]).permute(1, 2, 0).numpy()
            ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    height = fig.get_size_inches()[1]
    fig.subplots_adjust(wspace=0.05, hspace=0.05, top=1 - 0.3 / height)
    fig.suptitle(f"{label}: {KIND_TITLES[result['kind']]}", fontsize=10, y=1 - 0.05 / height)
    save_figure(fig, path)


def run_robustness(checkpoints: Sequence, kind: str, levels: Sequence[float] = DEFAULT_LEVELS, *,
                   out_dir="results/robustness", dataset: Optional[str] = None, data_root=None,
                   num_images: Optional[int] = None, batch_size: int = 256, seed: int = 0, device="auto",
                   labels: Optional[Sequence[str]] = None, num_examples: int = 8,
                   progress: bool = False) -> Dict:
    """Load each checkpoint, run :func:`evaluate_robustness` on the test split, write CSV/JSON/PNGs.

    Files in ``out_dir``: ``robustness_<kind>.csv`` / ``.json`` / ``.png`` (curves or bars) and
    ``robustness_<kind>_images_<label>.png`` (grids). Returns the JSON summary.
    """
    from pathlib import Path

    from ..atomic import write_json
    from ..runtime import resolve_device
    from .common import (choose_dataset, image_loader, load_spiking_model, model_label, provenance, safe_name,
                         unique_labels, write_csv)

    started = time.time()
    if not checkpoints:
        raise ValueError("give at least one --checkpoint")
    if kind not in KINDS:
        raise ValueError(f"unknown robustness kind {kind!r}; choose one of {', '.join(KINDS)}")
    if labels and len(labels) != len(checkpoints):
        raise ValueError(f"got {len(labels)} labels for {len(checkpoints)} checkpoints; "
                         "give one per checkpoint")
    device = resolve_device(device)
    loaded = [load_spiking_model(p, device) for p in checkpoints]
    dataset = choose_dataset(dataset, [c for _, c in loaded], checkpoints)
    labels = unique_labels(labels or [model_label(c, p) for (_, c), p in zip(loaded, checkpoints)])
    loader = image_loader(dataset, "test", root=data_root, num_images=num_images, batch_size=batch_size)
    out_dir = Path(out_dir)
    results, rows = {}, []
    for (model, _), label in zip(loaded, labels):
        result = evaluate_robustness(model, loader, kind, levels, seed=seed, device=device,
                                     num_examples=num_examples, progress=progress)
        results[label] = result
        rows += result_rows(label, result)
        plot_examples(result, label, out_dir / f"robustness_{kind}_images_{safe_name(label)}.png")
    write_csv(out_dir / f"robustness_{kind}.csv", rows, ROW_FIELDS)
    plot_curves(results, out_dir / f"robustness_{kind}.png")
    summary = {
        "experiment": "robustness", "kind": kind, "dataset": dataset, "split": "test", "seed": seed,
        "batch_size": batch_size, "definition": __doc__.split("\n\n")[1],
        "models": {label: {"checkpoint": str(p), "config": c["config"], "epoch": c.get("epoch"),
                           **{k: v for k, v in r.items() if k != "examples"}}
                   for (label, r), p, (_, c) in zip(results.items(), checkpoints, loaded)},
        "provenance": provenance(device, started),
    }
    write_json(out_dir / f"robustness_{kind}.json", summary)
    return summary
