"""`sjvae prior fit`: a GMM or diffusion rate prior of an ESVAE checkpoint (spikingjelly_vae.prior)."""
from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource

from .main import main
from .options import count, finite  # bounded option types
from .options import (data_options, dataset_option, device_option, force_option, reports_value_errors,
                      seed_option)

GMM_ONLY, DIFFUSION_ONLY = ("components", "covariance"), ("steps", "epochs", "width", "space")


@main.group("prior")
def prior_group():
    """Rate priors for ESVAE generation (docs/prior.md); use one with --prior gmm:PATH or diffusion:PATH."""


@prior_group.command("fit")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False),
              help="ESVAE checkpoint written by `sjvae train`.")
@click.option("--kind", type=click.Choice(["gmm", "diffusion"]), default="gmm", show_default=True,
              help="Gaussian mixture (EM, needs scikit-learn) or a diffusion model (DDPM) over the rates.")
@click.option("--components", default=10, show_default=True, type=count(1),
              help="gmm: mixture components K.")
@click.option("--covariance", type=click.Choice(["full", "diag"]), default="full", show_default=True,
              help="gmm: covariance of each component in logit space.")
@click.option("--steps", default=100, show_default=True, type=count(1),
              help="diffusion: timesteps of the noise schedule (DDIM samples over 50 of them).")
@click.option("--epochs", default=20, show_default=True, type=count(1),
              help="diffusion: passes over the rates.")
@click.option("--width", default=512, show_default=True, type=count(2),
              help="diffusion: units per layer of the denoiser MLP.")
@click.option("--space", type=click.Choice(["logit", "rate"]), default="logit", show_default=True,
              help="diffusion: run on the clamped logits of the rates or on the rates themselves.")
@click.option("--max-images", default=None, type=count(1),
              help="Fit to the posterior rates of the first N training images [default: all].")
@dataset_option("Dataset the model was trained on (default: read from the checkpoint).")
@data_options()
@click.option("--eps", default=1e-4, show_default=True,
              type=finite(0, 0.5, min_open=True, max_open=True),
              help="Rates are clamped to [eps, 1 - eps] (keep it small against 1/T).")
@click.option("--batch-size", default=256, show_default=True, type=count(1), help="Encoder batch.")
@seed_option(0, "Seed of the fit (gmm: k-means++ seeding; diffusion: initial weights and training draws).",
             count(0, 2 ** 32 - 1))  # scikit-learn's random_state takes 0..2**32-1
@device_option
@click.option("--progress/--no-progress", default=True, show_default=True, help="diffusion: a progress bar.")
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="Output file [default: <checkpoint stem>.gmm-k<K>-<covariance>.pt or "
                   "<checkpoint stem>.diffusion-<space>.pt beside the checkpoint].")
@force_option
@reports_value_errors
def prior_fit(*, checkpoint, kind, max_images, dataset, data_root, cache_dir, out, force, device, **fit):
    """Fit a rate prior to the posterior firing rates of the training images (a Gaussian mixture in logit
    space, Ghosh et al. 2020, or a DDPM); write it for --prior gmm:PATH / diffusion:PATH."""
    from torch.utils.data import Subset

    from ..checkpoint import load_model
    from ..data import load_dataset
    from ..experiments.common import choose_dataset
    from ..prior import default_prior_path
    from ..runtime import resolve_device
    from ..overwrite import claim_output
    ctx = click.get_current_context()
    wrong = [n for n in (DIFFUSION_ONLY if kind == "gmm" else GMM_ONLY)
             if ctx.get_parameter_source(n) == ParameterSource.COMMANDLINE]
    if wrong:
        raise ValueError(f"--{wrong[0]} does not apply to --kind {kind}")
    out = claim_output(Path(out) if out else default_prior_path(checkpoint, fit["components"], fit["covariance"],
                                                                 kind=kind, name=f"diffusion-{fit['space']}"),
                       "GMM prior" if kind == "gmm" else "diffusion prior", force=force)
    dev = resolve_device(device)
    model, ckpt = load_model(checkpoint, map_location=dev)
    dataset = choose_dataset(dataset, [ckpt], [checkpoint])
    train = load_dataset(dataset, "train", root=data_root, cache_dir=cache_dir, augment=False)
    if max_images is not None:
        train = Subset(train, range(min(max_images, len(train))))
    click.echo(f"encoding {len(train)} {dataset} training images ...")
    prior = (_fit_gmm if kind == "gmm" else _fit_diffusion)(model, train, dev, checkpoint, fit)
    prior.save(out)
    click.echo(f"wrote {out}; use it with --prior {kind}:{out}")


def _fit_gmm(model, train, dev, checkpoint, fit):
    from ..prior import fit_gmm_prior
    opts = {k: v for k, v in fit.items() if k not in DIFFUSION_ONLY + ("progress",)}
    prior = fit_gmm_prior(model, train, device=dev, checkpoint=checkpoint, **opts)
    p = prior.provenance
    click.echo(f"fitted {prior.name} to the posterior rates of {p['images']} training images: "
               f"{p['iterations']} EM iterations ({'converged' if p['converged'] else 'not converged'}), "
               f"mean log-likelihood {p['log_likelihood']:.4g}; encode {p['encode_seconds']:.1f} s, "
               f"fit {p['fit_seconds']:.1f} s")
    return prior


def _fit_diffusion(model, train, dev, checkpoint, fit):
    from ..prior import fit_diffusion_prior
    opts = {k: v for k, v in fit.items() if k not in GMM_ONLY}
    prior = fit_diffusion_prior(model, train, device=dev, checkpoint=checkpoint, **opts)
    p = prior.provenance
    click.echo(f"fitted {prior.name} (width {prior.config['width']}, {prior.config['steps']} steps) to the "
               f"posterior rates of {p['images']} training images: {p['epochs']} epochs, final loss "
               f"{p['final_loss']:.4g}; encode {p['encode_seconds']:.1f} s, fit {p['fit_seconds']:.1f} s")
    return prior
