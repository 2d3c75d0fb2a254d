"""The ANN VAE baseline of Table I ("ANN"): the ESVAE/FSVAE conv stack with BatchNorm + LeakyReLU, Gaussian latent.

encode:  h = conv stack(x);  mu = W_mu h + b,  logvar = W_var h + b                       ([N, L] each)
latent:  z = mu + exp(logvar / 2) * eps,  eps ~ N(0, I)  (fresh at every call, also in eval mode)
decode:  Linear L -> C*2*2 (no activation), ConvT stages (BN, LeakyReLU 0.01), ConvT s1, tanh
loss:    MSE(x_hat, x) + w * mean_n [ -1/2 sum_l (1 + logvar - mu^2 - exp(logvar)) ],   w = 1 / len(train_loader)

As the official ``main_ann_vae.py``: latent 128, batch 250, AdamW lr 1e-3 with its default weight decay 0.01,
150 epochs. ``kld_weight="auto"`` takes w from ``set_num_train_batches(len(train_loader))``, which the
training loop calls; the value is then kept in ``config`` so a checkpoint rebuilds the same loss.
Not spiking (not a ``SpikingVAE``: no ``posterior_spikes`` / ``prior_spikes``); ``encode`` returns ``(mu, logvar)`` and the
encoder probe (Table III) uses ``mu``.
"""
from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..functional import gaussian_kld
from .backbone import check_images, check_model_args
from .interface import ANNVAEOutput, init_config

def _conv_block(conv: nn.Module, channels: int) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm2d(channels), nn.LeakyReLU(0.01))


class ANNVAE(nn.Module):
    """Gaussian VAE on the same conv architecture; ``image_size=64`` (CelebA) is the builder ``ann_vae_large``;
    ``hidden`` as ESVAE's.

    ``forward(x)`` returns an ``ANNVAEOutput(reconstruction, mu, logvar)``. Not a ``SpikingVAE``: it has no
    ``posterior_spikes`` / ``prior_spikes``.
    """

    name = "ann-vae"

    def __init__(self, in_channels: int = 1, latent_dim: int = 128, image_size: int = 32, *,
                 hidden: Optional[Sequence[int]] = None, kld_weight: Union[str, float] = "auto"):
        super().__init__()
        hidden = check_model_args(in_channels, image_size, hidden)
        if int(latent_dim) < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        if kld_weight != "auto" and (isinstance(kld_weight, str) or kld_weight < 0):
            raise ValueError(f"kld_weight must be 'auto' or a number >= 0, got {kld_weight!r}")
        self.in_channels, self.image_size, self.latent_dim = in_channels, image_size, int(latent_dim)
        self.kld_weight = kld_weight if kld_weight == "auto" else float(kld_weight)
        self._kld_auto = kld_weight == "auto"
        self.config = init_config(self, locals(), latent_dim=int(latent_dim), hidden=list(hidden),
                                  kld_weight=self.kld_weight)
        chans = (in_channels, *hidden)
        self.encoder = nn.Sequential(*[_conv_block(nn.Conv2d(a, b, 3, 2, 1), b) for a, b in zip(chans, chans[1:])])
        self.fc_mu = nn.Linear(hidden[-1] * 4, latent_dim)
        self.fc_var = nn.Linear(hidden[-1] * 4, latent_dim)
        rev = tuple(reversed(hidden))
        self.top = rev[0]
        self.decoder_input = nn.Linear(latent_dim, rev[0] * 4)
        stages = [_conv_block(nn.ConvTranspose2d(a, b, 3, 2, 1, 1), b) for a, b in zip(rev, rev[1:])]
        stages.append(_conv_block(nn.ConvTranspose2d(rev[-1], rev[-1], 3, 2, 1, 1), rev[-1]))
        self.decoder = nn.Sequential(*stages)
        self.to_image = nn.ConvTranspose2d(rev[-1], in_channels, 3, 1, 1)

    def set_num_train_batches(self, n: int) -> None:
        """KL weight 1 / len(train_loader) (reference); only when ``kld_weight`` was left at "auto"."""
        if int(n) < 1:
            raise ValueError(f"the number of training batches must be >= 1, got {n}")
        if self._kld_auto:
            self.kld_weight = 1.0 / int(n)
            self.config["kld_weight"] = self.kld_weight

    def encode(self, x: torch.Tensor):
        """Return ``(mu, logvar)`` of q(z | x), each ``[N, L]``."""
        check_images(x, self.in_channels, self.image_size)
        h = self.encoder(x).flatten(1)
        return self.fc_mu(h), self.fc_var(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent codes ``[N, L]`` -> images ``[N, C, H, W]`` in (-1, 1)."""
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"expected latent codes [N, {self.latent_dim}], got {tuple(z.shape)}")
        h = self.decoder_input(z).unflatten(1, (self.top, 2, 2))
        return torch.tanh(self.to_image(self.decoder(h)))

    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None):
        mu, logvar = self.encode(x)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps
        return ANNVAEOutput(self.decode(z), mu, logvar)

    def loss(self, x: torch.Tensor, out: ANNVAEOutput) -> Dict[str, torch.Tensor]:
        """MSE + w * KL(N(mu, exp(logvar)) || N(0, I)), KL summed over L and averaged over N."""
        out = ANNVAEOutput(*out)
        if self.kld_weight == "auto":
            raise ValueError("the ANN VAE's KL weight is 1/len(train_loader): call "
                             "model.set_num_train_batches(len(train_loader)) first, or build it with kld_weight=")
        recon = F.mse_loss(out.reconstruction, x)
        kld = gaussian_kld(out.mu, out.logvar)
        return {"loss": recon + self.kld_weight * kld, "recon": recon, "kld": kld}

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Generate ``n`` images from z ~ N(0, I)."""
        weight = self.fc_mu.weight
        z = torch.randn(n, self.latent_dim, generator=generator, device=weight.device, dtype=weight.dtype)
        return self.decode(z)

    def param_groups(self, lr: float):
        """One AdamW group at ``lr`` (the preset's weight decay is 0.01, AdamW's default, as the official script)."""
        return [{"params": list(self.parameters()), "lr": lr}]
