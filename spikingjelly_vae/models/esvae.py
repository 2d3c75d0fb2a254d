"""ESVAE (Zhan et al.): a spiking VAE whose latent space is Poisson firing rates.

encode:  x -> x_e in {0,1}^{T x L},  posterior_rate r_p = mean_t x_e          (paper Eq. 5)
latent:  z_t = 1[u_t < r_p]  (PoissonLatent, reparameterised gradient)        (Eqs. 7, 8)
prior:   z_n ~ N(0, I_L),  prior_rate r_q = sigmoid(W z_n + b)  (the bottleneck layer, Alg. 1)
loss:    MSE(x_hat, x) + lambda * RBF-MMD^2(r_p, r_q)                          (Eqs. 10, 11)
The builders ``esvae`` and ``esvae_large`` (64x64) are registered in ``models/__init__.py``.
"""
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..functional import rbf_mmd
from ..neuron import PoissonLatent
from .backbone import SpikingBackbone, SpikingDecoder, SpikingEncoder, check_model_args
from .interface import ESVAEOutput, init_config


class ESVAE(SpikingBackbone):
    """ESVAE; 32x32 images by default (MNIST, Fashion-MNIST: 1 channel; CIFAR-10: 3), 64x64 (CelebA) with
    ``image_size=64`` (the builder ``esvae_large``). ``hidden``: conv channels per stage (default
    ``HIDDEN[image_size]``; a smaller tuple builds a small backbone for ``2 * 2**len(hidden)`` pixel images).
    ``kernel_backend``: our LIF/Poisson kernel switch ("auto", "cupy", "torch"). ``fuse_bn_lif``: run each
    tdBN -> LIF as one fused kernel (less memory for backward, same spikes and gradients; default off).

    ``forward(x)`` returns an ``ESVAEOutput(reconstruction, posterior_rate, prior_rate)``.
    """

    name = "esvae"

    def __init__(self, in_channels: int = 1, latent_dim: int = 128, T: int = 16, image_size: int = 32, *,
                 hidden: Optional[Sequence[int]] = None, mmd_lambda: float = 1e-3, half_width: float = 0.5,
                 kernel_backend: str = "auto", fuse_bn_lif: bool = False):
        super().__init__()
        hidden = check_model_args(in_channels, image_size, hidden)
        self.in_channels, self.image_size, self.latent_dim, self.T = in_channels, image_size, latent_dim, int(T)
        self.mmd_lambda = float(mmd_lambda)
        self.config = init_config(self, locals(), T=int(T), hidden=list(hidden), mmd_lambda=float(mmd_lambda),
                                  half_width=float(half_width), fuse_bn_lif=bool(fuse_bn_lif))
        self.encoder = SpikingEncoder(in_channels, latent_dim, hidden, kernel_backend, bool(fuse_bn_lif))
        self.latent = PoissonLatent(T=T, half_width=half_width, kernel_backend=kernel_backend)
        self.prior_layer = nn.Linear(latent_dim, latent_dim)  # the "bottleneck" (reference: sample_layer)
        self.decoder = SpikingDecoder(in_channels, latent_dim, hidden, kernel_backend, bool(fuse_bn_lif))

    def bottleneck(self, z_n: torch.Tensor) -> torch.Tensor:
        """The prior rate of given normal draws: r_q = sigmoid(W z_n + b), ``[n, L] -> [n, L]`` (the
        official ``sample_layer``)."""
        return torch.sigmoid(self.prior_layer(z_n))

    def prior_rate(self, n: int, generator: Optional[torch.Generator] = None,
                   device: Optional[torch.device] = None) -> torch.Tensor:
        """r_q = bottleneck(z_n), z_n ~ N(0, I), shape ``[n, L]`` (the PRIOR of the paper's Alg. 1)."""
        weight = self.prior_layer.weight
        z_n = torch.randn(n, self.latent_dim, generator=generator, device=device or weight.device,
                          dtype=weight.dtype)
        return self.bottleneck(z_n)

    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None):
        _, posterior_rate = self.encode(x)
        z = self.latent(posterior_rate, generator=generator)
        reconstruction = self.decode(z)
        prior_rate = self.prior_rate(x.shape[0], generator)
        return ESVAEOutput(reconstruction, posterior_rate, prior_rate)

    def loss(self, x: torch.Tensor, out: ESVAEOutput) -> Dict[str, torch.Tensor]:
        """L = MSE(x_hat, x) + lambda * MMD^2(posterior_rate, prior_rate)  (paper Eq. 11; MMD^2 is Eq. 10)."""
        out = ESVAEOutput(*out)
        recon = F.mse_loss(out.reconstruction, x)
        mmd = rbf_mmd(out.posterior_rate, out.prior_rate)
        return {"loss": recon + self.mmd_lambda * mmd, "recon": recon, "mmd": mmd}

    def posterior_spikes(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Latent spikes z_p ``[T, N, L]`` sampled from the posterior of images ``x`` (Eqs. 5, 7)."""
        return self.latent(self.encode(x)[1], generator=generator)

    def prior_spikes(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Latent spikes z_q ``[T, n, L]`` of the generation path (prior rate -> Poisson spikes)."""
        return self.latent(self.prior_rate(n, generator), generator=generator)

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Generate ``n`` images: z_n -> prior rate -> Poisson spikes -> decoder."""
        return self.decode(self.prior_spikes(n, generator))

    def param_groups(self, lr: float, bottleneck_lr_mult: float = 10.0):
        """AdamW groups of the reference: the bottleneck at ``bottleneck_lr_mult`` x lr."""
        prior = list(self.prior_layer.parameters())
        ids = {id(p) for p in prior}
        rest = [p for p in self.parameters() if id(p) not in ids]
        return [{"params": rest, "lr": lr}, {"params": prior, "lr": lr * bottleneck_lr_mult}]
