"""`sjvae prior fit`: the ex-post GMM rate prior of an ESVAE checkpoint, logic in spikingjelly_vae.prior."""
from __future__ import annotations

from pathlib import Path

import click

from .main import main
from .options import (data_options, dataset_option, device_option, force_option, reports_value_errors,
                      seed_option)


@main.group("prior")
def prior_group():
    """Rate priors for ESVAE generation (docs/prior.md); use one with --prior gmm:PATH."""


@prior_group.command("fit")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False),
              help="ESVAE checkpoint written by `sjvae train`.")
@click.option("--components", default=10, show_default=True, type=click.IntRange(1),
              help="Mixture components K.")
@click.option("--covariance", type=click.Choice(["full", "diag"]), default="full", show_default=True,
              help="Covariance of each component in logit space.")
@click.option("--max-images", default=None, type=click.IntRange(1),
              help="Fit to the posterior rates of the first N training images (default: all).")
@dataset_option("Dataset the model was trained on (default: read from the checkpoint).")
@data_options()
@click.option("--eps", default=1e-4, show_default=True,
              type=click.FloatRange(0, 0.5, min_open=True, max_open=True),
              help="Rates are clamped to [eps, 1 - eps] before the logit (keep it small against 1/T).")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(1), help="Encoder batch.")
@seed_option(0, "Seed of the EM initialisation (k-means++).")
@device_option
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="Output file [default: <checkpoint stem>.gmm-k<K>-<covariance>.pt beside the checkpoint].")
@force_option
@reports_value_errors
def prior_fit(*, checkpoint, components, covariance, max_images, dataset, data_root, cache_dir, out, force,
              device, **fit):
    """Fit a Gaussian mixture to the logit posterior firing rates of the training images
    (ex-post density estimation, Ghosh et al. 2020); write it for --prior gmm:PATH."""
    from torch.utils.data import Subset

    from ..checkpoint import load_model
    from ..data import load_dataset
    from ..experiments.common import choose_dataset
    from ..prior import default_prior_path, fit_gmm_prior
    from ..runtime import resolve_device
    from ..overwrite import claim_output
    out = claim_output(Path(out) if out else default_prior_path(checkpoint, components, covariance), "GMM prior",
                       force=force)
    dev = resolve_device(device)
    model, ckpt = load_model(checkpoint, map_location=dev)
    dataset = choose_dataset(dataset, [ckpt], [checkpoint])
    train = load_dataset(dataset, "train", root=data_root, cache_dir=cache_dir, augment=False)
    if max_images is not None:
        train = Subset(train, range(min(max_images, len(train))))
    prior = fit_gmm_prior(model, train, components=components, covariance=covariance, device=dev,
                          checkpoint=checkpoint, **fit)
    prior.save(out)
    p = prior.provenance
    click.echo(f"fitted {prior.name} to the posterior rates of {p['images']} {dataset} training images: "
               f"{p['iterations']} EM iterations ({'converged' if p['converged'] else 'not converged'}), "
               f"mean log-likelihood {p['log_likelihood']:.4g}; encode {p['encode_seconds']:.1f} s, "
               f"fit {p['fit_seconds']:.1f} s")
    click.echo(f"wrote {out}; use it with --prior gmm:{out}")
