"""The rate-prior interface, the learned bottleneck, posterior rates, and sampling images from any prior.

ESVAE generates with r_q = sigmoid(W z_n + b), z_n ~ N(0, I) (its learned bottleneck). Any other rate
source (a Gaussian mixture, a diffusion model) only swaps r_q: the rates still go through the model's
PoissonLatent (Eqs. 7, 8) and the spiking decoder, so generation stays a spiking pass.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

__all__ = ["PriorError", "RatePrior", "LearnedPrior", "posterior_rates", "sample_images", "prior_batches",
           "check_esvae", "check_latent_dim"]


class PriorError(ValueError):
    """A prior cannot be built, loaded or used with this model; the message says what to do."""


def check_esvae(model) -> None:
    from ..models.esvae import ESVAE
    if not isinstance(model, ESVAE):
        raise PriorError(f"rate priors apply to ESVAE only (its latent is Poisson firing rates); got "
                         f"{type(model).__name__}. FSVAE and the ANN VAE have no rate prior: "
                         "use their learned prior (--prior learned, model.sample)")


def check_latent_dim(prior, path, latent_dim: Optional[int]):
    """``prior`` if it draws ``latent_dim`` rates (or latent_dim is None), else a PriorError."""
    if latent_dim is not None and prior.latent_dim != latent_dim:
        raise PriorError(f"{path} was fitted to {prior.latent_dim} latent rates, the model has {latent_dim}")
    return prior


class RatePrior:
    """Draws firing rates ``[n, L]`` in [0, 1]; ``name`` labels outputs."""

    name: str = "prior"
    latent_dim: int

    def sample_rates(self, n: int, *, generator: Optional[torch.Generator] = None,
                     device=None) -> torch.Tensor:
        raise NotImplementedError


class LearnedPrior(RatePrior):
    """The model's own bottleneck: r_q = sigmoid(W z_n + b) (exactly ``model.prior_rate``)."""

    name = "learned"

    def __init__(self, model):
        check_esvae(model)
        self.model, self.latent_dim = model, model.latent_dim

    def sample_rates(self, n, *, generator=None, device=None):
        return self.model.prior_rate(n, generator, device)


def _image_batches(images_or_loader, batch_size: int):
    """Image batches from a tensor [N, C, H, W], a dataset of (image, label), or an iterable of batches."""
    if isinstance(images_or_loader, torch.Tensor):
        yield from images_or_loader.split(batch_size)
        return
    if isinstance(images_or_loader, torch.utils.data.Dataset) and hasattr(images_or_loader, "__len__"):
        images_or_loader = torch.utils.data.DataLoader(images_or_loader, batch_size=batch_size)
    for item in images_or_loader:
        yield item[0] if isinstance(item, (list, tuple)) else item


@torch.no_grad()
def posterior_rates(model, images_or_loader, *, max_images: Optional[int] = None, batch_size: int = 256,
                    device=None) -> torch.Tensor:
    """r_p = mean_t x_e (Eq. 5) of the first ``max_images`` images, the model in eval mode, ``[N, L]``."""
    check_esvae(model)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training, out, have = model.training, [], 0
    model.eval()
    try:
        for x in _image_batches(images_or_loader, batch_size):
            if max_images is not None:
                x = x[:max_images - have]
            out.append(model.encode(x.to(device, torch.float32))[1].double())
            have += x.shape[0]
            if max_images is not None and have >= max_images:
                break
    finally:
        model.train(was_training)
    if not out:
        raise PriorError("no images reached the encoder; pass a tensor, dataset or loader of images")
    return torch.cat(out)


@torch.no_grad()
def sample_images(model, n: int, *, prior: RatePrior, generator: Optional[torch.Generator] = None
                  ) -> torch.Tensor:
    """n images: prior rates -> model.latent (Poisson spikes) -> spiking decoder (``model.sample`` with
    the rate source swapped; with LearnedPrior it is ``model.sample`` draw for draw)."""
    check_esvae(model)
    if prior.latent_dim != model.latent_dim:
        raise PriorError(f"the prior draws {prior.latent_dim} rates, the model's latent has "
                         f"{model.latent_dim}")
    device = next(model.parameters()).device
    rates = prior.sample_rates(n, generator=generator, device=device).to(model.prior_layer.weight.dtype)
    return model.decode(model.latent(rates, generator=generator))


def prior_batches(model, num: int, batch_size: int, *, prior: RatePrior,
                  generator: Optional[torch.Generator] = None):
    """ceil(num / batch_size) batches of ``sample_images`` in eval mode (as metrics.sample_batches)."""
    was_training = model.training
    model.eval()
    try:
        for _ in range(math.ceil(num / batch_size)):
            yield sample_images(model, batch_size, prior=prior, generator=generator)
    finally:
        model.train(was_training)
