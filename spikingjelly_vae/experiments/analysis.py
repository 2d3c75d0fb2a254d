"""Latent firing-rate analysis (paper Fig. 4, 6, 7) and per-layer rates / synaptic operations / energy.

posterior (training) rates: r = (1/T) sum_t z_t with z = posterior_spikes(x) of test images
prior (generation) rates:   r = (1/T) sum_t z_t with z = prior_spikes(n) (or spikes of a GMM prior's rates)
Both take values k/T, so their histograms have T + 1 bins. The overlap of two histograms p, q is
sum_k min(p_k, q_k) (1 = identical). Operation counts and energy: see ``energy.py``.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from .common import generator_for, pyplot, save_figure
from .energy import E_AC_PJ, E_MAC_PJ, OpCounter, dense_macs_per_image, per_image

MMD_SAMPLES = 256  # rbf_mmd builds a (2n)^2 x L tensor: cap n


@torch.no_grad()
def latent_rates(model, loader, *, seed: int = 0, device=None, count_ops: bool = False,
                 num_raster: int = 4, progress: bool = False, rate_prior=None) -> Dict:
    """Posterior and prior latent firing rates ``[N, L]`` over ``loader``'s images (as many prior samples).

    With ``count_ops`` also the per-layer operation counts of reconstruction (posterior spikes -> decode)
    and generation (prior spikes -> decode), as :func:`energy.per_image` dicts. ``raster`` holds the first
    ``num_raster`` latent spike trains ``[T, k, L]`` of each stage.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    post, prior, raster_post, raster_prior = [], [], [], []
    rec_counter, gen_counter = OpCounter(model), OpCounter(model)
    count = 0
    for b, (x, _) in enumerate(loader):
        x = x.to(device)
        n = x.shape[0]
        with rec_counter if count_ops else nullcontext():
            z_p = model.posterior_spikes(x, generator=generator_for(seed, "posterior", b, device))
            if count_ops:
                model.decode(z_p)
        with gen_counter if count_ops else nullcontext():
            g = generator_for(seed, "prior", b, device)  # rate_prior: a prior.RatePrior (None: learned)
            z_q = (model.prior_spikes(n, generator=g) if rate_prior is None
                   else model.latent(rate_prior.sample_rates(n, generator=g, device=device), generator=g))
            if count_ops:
                model.decode(z_q)
        post.append(z_p.float().mean(0).cpu())
        prior.append(z_q.float().mean(0).cpu())
        if count < num_raster:
            raster_post.append(z_p[:, :num_raster - count].cpu())
            raster_prior.append(z_q[:, :num_raster - count].cpu())
        count += n
        if progress:
            print(f"  rates: batch {b + 1}/{len(loader)}", flush=True)
    if count == 0:
        raise ValueError("the data loader gave no images")
    out = {"posterior": torch.cat(post), "prior": torch.cat(prior), "T": int(raster_post[0].shape[0]),
           "num_images": count,
           "raster": {"posterior": torch.cat(raster_post, 1), "prior": torch.cat(raster_prior, 1)}}
    if count_ops:
        out["ops"] = {"reconstruction": rec_counter, "generation": gen_counter}
    return out


def rate_histogram(rates: torch.Tensor, T: int) -> torch.Tensor:
    """Share of entries at each rate k/T, k = 0..T (sums to 1)."""
    k = torch.round(rates.flatten() * T).long().clamp(0, T)
    return torch.bincount(k, minlength=T + 1).double() / k.numel()


def rate_summary(posterior: torch.Tensor, prior: torch.Tensor, T: int) -> Dict:
    """Means, extreme shares (rate 0 or 1), histogram overlap and RBF-MMD^2 of posterior vs prior rates."""
    from ..functional import rbf_mmd

    hp, hq = rate_histogram(posterior, T), rate_histogram(prior, T)
    m = min(MMD_SAMPLES, len(posterior), len(prior))
    summary = {"T": T, "latent_dim": posterior.shape[1], "overlap": torch.minimum(hp, hq).sum().item(),
               "rbf_mmd2": rbf_mmd(posterior[:m].double(), prior[:m].double()).item(), "mmd_samples": m,
               "rate_values": [k / T for k in range(T + 1)]}
    for name, r, h in (("posterior", posterior, hp), ("prior", prior, hq)):
        summary[name] = {"mean_rate": r.mean().item(), "share_silent": h[0].item(),
                         "share_saturated": h[-1].item(),
                         "neuron_mean_rate_std": r.mean(0).std().item() if r.shape[1] > 1 else 0.0,
                         "histogram": h.tolist()}
    return summary


def _bar_hist(ax, values, T, colour, label, shift):
    h = rate_histogram(values, T).numpy()
    xs = [k / T + shift for k in range(T + 1)]
    ax.bar(xs, h, width=0.4 / T, color=colour, label=label, alpha=0.85)


def plot_rate_distributions(rates: Dict, path, title: str = "") -> None:
    """Fig. 6: posterior (training) vs prior (generation) rate histograms: all images x neurons, the
    per-neuron mean over images, and a single image / single generated sample."""
    plt = pyplot()
    T, post, prior = rates["T"], rates["posterior"], rates["prior"]
    colours = ("tab:red", "tab:blue")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = (("(a) all images x latent neurons", post, prior),
              ("(b) per-neuron mean over images", None, None),
              ("(c) one image / one generated sample", post[:1], prior[:1]))
    for ax, (name, p, q) in zip(axes, panels):
        if p is None:
            bins = torch.linspace(0, 1, 21).numpy()
            ax.hist(post.mean(0).numpy(), bins=bins, color=colours[0], alpha=0.6,
                    label="training (posterior)")
            ax.hist(prior.mean(0).numpy(), bins=bins, color=colours[1], alpha=0.6, label="generation (prior)")
            ax.set_ylabel("number of latent neurons")
        else:
            _bar_hist(ax, p, T, colours[0], "training (posterior)", -0.2 / T)
            _bar_hist(ax, q, T, colours[1], "generation (prior)", 0.2 / T)
            ax.set_ylabel("fraction of (image, neuron) pairs" if len(p) > 1 else "fraction of neurons")
        ax.set_xlabel("firing rate (spikes / step)")
        ax.set_title(name, fontsize=10)
        ax.set_xlim(-0.06, 1.06)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title or "latent firing-rate distributions", fontsize=10)
    save_figure(fig, path)


def plot_raster(rates: Dict, path, title: str = "") -> None:
    """Fig. 4: latent spikes ``[T, L]`` (x: latent neuron, y: time step) of a few images in training
    (posterior) and generation (prior); black = spike."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    post, prior = rates["raster"]["posterior"], rates["raster"]["prior"]
    k, (T, L) = post.shape[1], (post.shape[0], post.shape[2])
    panel_w = 6.5
    panel_h = min(3.0, max(0.9, panel_w * T / L))
    fig, axes = plt.subplots(k, 2, figsize=(2 * panel_w + 1.0, k * (panel_h + 0.55) + 0.6), squeeze=False)
    for j, (name, z) in enumerate((("training (posterior spikes of test image i)", post),
                                   ("generation (prior spikes of sample i)", prior))):
        for i in range(k):
            ax = axes[i][j]
            ax.imshow(z[:, i].numpy(), cmap="Greys", vmin=0, vmax=1, aspect="auto", interpolation="nearest",
                      extent=(-0.5, L - 0.5, T - 0.5, -0.5))
            r = z[:, i].float().mean(0)
            head = f"{name}\n" if i == 0 else ""
            ax.set_title(f"{head}i = {i}: mean rate {r.mean():.2f}, silent {(r == 0).float().mean():.0%}, "
                         f"always firing {(r == 1).float().mean():.0%}", fontsize=8)
            ax.set_ylabel("time step", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            if i == k - 1:
                ax.set_xlabel("latent neuron", fontsize=8)
    fig.suptitle(title or "latent spike trains", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def plot_history(history: List[Dict], T: int, path) -> None:
    """Fig. 7: posterior (left) and prior (right) rate histograms per checkpoint, coloured by epoch."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    cmap = plt.get_cmap("viridis")
    xs = [k / T for k in range(T + 1)]
    for i, h in enumerate(history):
        colour = cmap(i / max(len(history) - 1, 1))
        for ax, stage in zip(axes, ("posterior", "prior")):
            ax.plot(xs, h[stage], "-o", ms=3, color=colour, label=f"epoch {h['epoch']}")
    for ax, name in zip(axes, ("training (posterior)", "generation (prior)")):
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("firing rate (spikes / step)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("frequency")
    axes[1].legend(fontsize=8, ncol=1 + len(history) // 8)
    fig.suptitle("latent firing-rate distributions during training", fontsize=10)
    save_figure(fig, path)


def plot_layers(energy: Dict, path, title: str = "") -> None:
    """Per-layer firing rates (left), per-layer synaptic operations per image (middle), energy (right)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6), gridspec_kw={"width_ratios": [1.2, 1.2, 0.8]})
    rec, gen = energy["reconstruction"], energy["generation"]
    names = [r["layer"] for r in rec["neurons"]]
    gen_rates = {r["layer"]: r["firing_rate"] for r in gen["neurons"]}
    ys = range(len(names))
    axes[0].barh([y - 0.2 for y in ys], [r["firing_rate"] for r in rec["neurons"]], 0.4, color="tab:red",
                 label="reconstruction")
    axes[0].barh([y + 0.2 for y in ys], [gen_rates.get(n, 0.0) for n in names], 0.4, color="tab:blue",
                 label="generation")
    axes[0].set_yticks(list(ys), names, fontsize=7)
    axes[0].invert_yaxis()
    axes[0].set_xlabel("firing rate (spikes / neuron / step)")
    axes[0].legend(fontsize=8)
    layers = rec["layers"]
    ys = range(len(layers))
    axes[1].barh(list(ys), [max(r["ac_per_image"], r["mac_per_image"]) for r in layers],
                 color=["tab:green" if r["op"] == "AC" else "tab:orange" for r in layers])
    from matplotlib.patches import Patch

    axes[1].legend(handles=[Patch(color="tab:green", label="AC (spike input)"),
                            Patch(color="tab:orange", label="MAC (analog input)")], fontsize=8)
    axes[1].set_yticks(list(ys), [r["layer"] for r in layers], fontsize=7)
    axes[1].invert_yaxis()
    axes[1].set_xscale("log")
    axes[1].set_xlabel("operations per image (reconstruction)")
    bars = [("SNN recon.", rec), ("ANN recon.", energy["ann"]["reconstruction"]),
            ("SNN gen.", gen), ("ANN gen.", energy["ann"]["generation"])]
    e_ac, e_mac = energy["e_ac_pj"], energy["e_mac_pj"]
    ac = [b["ac_per_image"] * e_ac / 1e6 for _, b in bars]
    mac = [b["mac_per_image"] * e_mac / 1e6 for _, b in bars]
    xs = range(len(bars))
    axes[2].bar(list(xs), mac, color="tab:orange", label=f"MAC x {e_mac:g} pJ")
    axes[2].bar(list(xs), ac, bottom=mac, color="tab:green", label=f"AC x {e_ac:g} pJ")
    for x, a, m in zip(xs, ac, mac):
        axes[2].text(x, a + m, f"{a + m:.2f}", ha="center", va="bottom", fontsize=8)
    axes[2].set_xticks(list(xs), [b for b, _ in bars], rotation=20, fontsize=8)
    axes[2].set_ylabel("energy per image (uJ, 45 nm estimate)")
    axes[2].legend(fontsize=8)
    fig.suptitle(title or "per-layer activity and energy", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


@torch.no_grad()
def ann_operations(spiking_model, x: torch.Tensor, seed: int = 0) -> Dict:
    """MACs per image of the ANN VAE with the same architecture (``models.ann_vae``), measured by the same
    hooks on a reconstruction and a generation pass; falls back to the spiking model's weight layers run
    once per image as dense layers when the ANN VAE cannot be built."""
    cfg = spiking_model.config
    try:
        from ..models import build_model

        ann = build_model({"model": "ann-vae", "in_channels": cfg["in_channels"],
                           "image_size": cfg["image_size"], "latent_dim": cfg["latent_dim"],
                           "kld_weight": 1.0}).to(x.device).eval()
    except (ImportError, KeyError, TypeError, ValueError):
        return {}
    n = x.shape[0]
    out = {"source": "models.ann_vae (same conv stack, BN + LeakyReLU, Gaussian latent)"}
    with OpCounter(ann, analog=True) as rec:
        ann(x, generator=torch.Generator(device=x.device).manual_seed(seed))
    with OpCounter(ann, analog=True) as gen:
        ann.sample(n, generator=torch.Generator(device=x.device).manual_seed(seed))
    out["reconstruction"] = per_image(rec, n)
    out["generation"] = per_image(gen, n)
    return out


def energy_report(rates: Dict, ann: Dict, e_ac: float = E_AC_PJ, e_mac: float = E_MAC_PJ) -> Dict:
    """Per-image operations and energy of reconstruction and generation, SNN vs ANN."""
    n = rates["num_images"]
    rec = per_image(rates["ops"]["reconstruction"], n, e_ac, e_mac)
    gen = per_image(rates["ops"]["generation"], n, e_ac, e_mac)
    if not ann:
        ann = {"source": "dense MACs of the spiking model's own weight layers, once per image "
                         "(ANN VAE unavailable)",
               "reconstruction": {"ac_per_image": 0.0, "mac_per_image": dense_macs_per_image(rec["layers"])},
               "generation": {"ac_per_image": 0.0, "mac_per_image": dense_macs_per_image(gen["layers"])}}
    for stage in ("reconstruction", "generation"):
        a = ann[stage]
        a["energy_pj_per_image"] = a["ac_per_image"] * e_ac + a["mac_per_image"] * e_mac
    first_mac = sum(r["mac_per_image"] for r in rec["layers"] if r["op"] == "MAC")
    return {"e_ac_pj": e_ac, "e_mac_pj": e_mac, "reconstruction": rec, "generation": gen, "ann": ann,
            "snn_over_ann_energy": {"reconstruction": rec["energy_pj_per_image"]
                                    / ann["reconstruction"]["energy_pj_per_image"],
                                    "generation": gen["energy_pj_per_image"]
                                    / ann["generation"]["energy_pj_per_image"]},
            "note": ("analog-input layers (the first conv on the repeated image, the prior's linear layer) "
                     "are "
                     "counted once per image, as this implementation computes them; hardware that recomputes "
                     f"them at each of the T={rates['T']} steps pays T x their MACs "
                     f"({first_mac:.4g} MACs per reconstructed image here)")}


def history_rates(checkpoints: Sequence, loader, seed: int, device, config: dict) -> List[Dict]:
    """Posterior/prior rate histograms of each checkpoint of a run, sorted by epoch; ValueError for a
    checkpoint whose model differs from `config` (the analysed checkpoint's): another run's."""
    from .common import load_spiking_model, require_same_model

    out = []
    for path in checkpoints:
        model, ckpt = load_spiking_model(path, device)
        require_same_model(ckpt, config, f"--history {path}")
        r = latent_rates(model, loader, seed=seed, device=device)
        out.append({"checkpoint": str(path), "epoch": ckpt.get("epoch"), "T": r["T"],
                    "posterior": rate_histogram(r["posterior"], r["T"]).tolist(),
                    "prior": rate_histogram(r["prior"], r["T"]).tolist()})
    out.sort(key=lambda h: (h["epoch"] is None, h["epoch"] if h["epoch"] is not None else 0, h["checkpoint"]))
    return out


def expand_history(paths: Sequence) -> List[Path]:
    """Files as given; a folder gives its ``*.pt`` files."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("*.pt"))
            if not found:
                raise ValueError(f"--history folder {p} holds no .pt checkpoints")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise ValueError(f"--history {p} is neither a checkpoint file nor a folder of them")
    return files


def run_analysis(checkpoint, *, out_dir="results/analysis", dataset: Optional[str] = None, data_root=None,
                 num_images: Optional[int] = 1000, batch_size: int = 256, seed: int = 0, device="auto",
                 history: Sequence = (), e_ac: float = E_AC_PJ, e_mac: float = E_MAC_PJ, num_raster: int = 4,
                 progress: bool = False, prior: str = "learned") -> Dict:
    """Fig. 4/6/7 and the energy table for one checkpoint; writes into ``out_dir``:
    ``analysis.json``, ``firing_rates.csv``/``.png`` (Fig. 6), ``spike_raster.png`` (Fig. 4),
    ``layer_rates.csv``, ``layer_ops.csv``, ``layers.png`` and, with ``history``,
    ``firing_rates_history.csv``/``.png`` (Fig. 7)."""
    from ..atomic import write_json
    from ..runtime import resolve_device
    from .common import choose_dataset, image_loader, load_spiking_model, model_label, provenance, write_csv

    started = time.time()
    if e_ac < 0 or e_mac < 0:
        raise ValueError(f"energies per operation must be >= 0 pJ, got AC {e_ac}, MAC {e_mac}")
    device = resolve_device(device)
    history = expand_history(history)
    model, ckpt = load_spiking_model(checkpoint, device)
    dataset = choose_dataset(dataset, [ckpt], [checkpoint])
    label = model_label(ckpt, checkpoint)
    from ..prior import load_prior  # --prior gmm:PATH / diffusion:PATH: ESVAE only, fitted to this checkpoint
    rate_prior = None if prior == "learned" else load_prior(prior, model, checkpoint=checkpoint)
    loader = image_loader(dataset, "test", root=data_root, num_images=num_images, batch_size=batch_size)
    out_dir = Path(out_dir)
    rates = latent_rates(model, loader, seed=seed, device=device, count_ops=True, num_raster=num_raster,
                         progress=progress, rate_prior=rate_prior)
    T = rates["T"]
    summary = rate_summary(rates["posterior"], rates["prior"], T)
    x0 = next(iter(loader))[0].to(device)
    energy = energy_report(rates, ann_operations(model, x0, seed), e_ac, e_mac)

    # another run's --history checkpoint is refused before anything is written
    hist = history_rates(history, loader, seed, device, ckpt["config"]) if history else []
    _write_tables(out_dir, T, summary, energy)
    plot_rate_distributions(rates, out_dir / "firing_rates.png",
                            f"{label} on {dataset}: latent firing rates, {rates['num_images']} test images "
                            f"(T={T}, overlap {summary['overlap']:.2f})")
    plot_raster(rates, out_dir / "spike_raster.png", f"{label} on {dataset}: latent spikes")
    plot_layers(energy, out_dir / "layers.png",
                f"{label} on {dataset}: per-layer firing rates, operations and energy per image "
                f"({rates['num_images']} test images)")
    if hist:
        write_csv(out_dir / "firing_rates_history.csv",
                  [{"checkpoint": h["checkpoint"], "epoch": h["epoch"], "stage": st, "rate": k / T,
                    "frequency": v}
                   for h in hist for st in ("posterior", "prior") for k, v in enumerate(h[st])],
                  ("checkpoint", "epoch", "stage", "rate", "frequency"))
        plot_history(hist, T, out_dir / "firing_rates_history.png")

    result = {
        "experiment": "analysis", "checkpoint": str(checkpoint), "label": label, "config": ckpt["config"],
        "epoch": ckpt.get("epoch"), "dataset": dataset, "split": "test", "num_images": rates["num_images"],
        "seed": seed, "rates": summary, "energy": _energy_json(energy),
        "history": [{k: h[k] for k in ("checkpoint", "epoch", "posterior", "prior")} for h in hist],
        "provenance": provenance(device, started), "prior": getattr(rate_prior, "name", "learned"),
    }
    write_json(out_dir / "analysis.json", result)
    return result


def _write_tables(out_dir: Path, T: int, summary: Dict, energy: Dict) -> None:
    """firing_rates.csv (Fig. 6 histograms), layer_rates.csv and layer_ops.csv."""
    from .common import write_csv

    write_csv(out_dir / "firing_rates.csv",
              [{"rate": k / T, "posterior": summary["posterior"]["histogram"][k],
                "prior": summary["prior"]["histogram"][k]} for k in range(T + 1)],
              ("rate", "posterior", "prior"))
    write_csv(out_dir / "layer_rates.csv",
              [{"phase": ph, **r} for ph in ("reconstruction", "generation") for r in energy[ph]["neurons"]],
              ("phase", "layer", "type", "neurons", "steps", "firing_rate", "spikes_per_image"))
    op_rows = [{"model": "snn", "phase": ph, **r} for ph in ("reconstruction", "generation")
               for r in energy[ph]["layers"]]
    op_rows += [{"model": "ann", "phase": ph, **r} for ph in ("reconstruction", "generation")
                for r in energy["ann"][ph].get("layers", [])]
    write_csv(out_dir / "layer_ops.csv", op_rows,
              ("model", "phase", "layer", "type", "op", "ac_per_image", "mac_per_image", "synapses_per_step",
               "input_rate", "energy_pj_per_image"))


def _energy_json(energy: Dict) -> Dict:
    """The energy report without its per-layer lists (those are in the CSVs)."""
    def strip(d):
        return {k: v for k, v in d.items() if k not in ("layers", "neurons")}

    return {**{k: v for k, v in energy.items() if k not in ("reconstruction", "generation", "ann")},
            "reconstruction": strip(energy["reconstruction"]), "generation": strip(energy["generation"]),
            "ann": {k: strip(v) if isinstance(v, dict) else v for k, v in energy["ann"].items()},
            "definition": "see spikingjelly_vae/experiments/energy.py and docs/experiments.md"}
