"""Rate priors for ESVAE generation: where the Poisson firing rates of a sample come from.

``base``: the interface (``RatePrior``), the learned bottleneck, posterior rates and image sampling;
``gmm``: the ex-post Gaussian mixture; ``diffusion``: a DDPM over the rates; ``files``: the prior file
format (weights_only, provenance, digest); ``spec``: ``load_prior("learned" | "gmm:PATH" |
"diffusion:PATH")``. See docs/prior.md.
"""
from .base import LearnedPrior, PriorError, RatePrior, posterior_rates, prior_batches, sample_images
from .diffusion import Denoiser, DiffusionPrior, fit_diffusion, fit_diffusion_prior
from .gmm import GaussianMixturePrior, GMMFit, fit_gmm, fit_gmm_prior, fit_rate_mixture
from .spec import KINDS, default_prior_path, load_prior

__all__ = ["PriorError", "RatePrior", "LearnedPrior", "GaussianMixturePrior", "GMMFit", "fit_gmm",
           "fit_rate_mixture", "posterior_rates", "fit_gmm_prior", "load_prior", "default_prior_path",
           "sample_images", "prior_batches", "DiffusionPrior", "Denoiser", "fit_diffusion",
           "fit_diffusion_prior", "KINDS"]
