"""FSVAE (Kamata et al., AAAI 2022): a fully spiking VAE with autoregressive Bernoulli latents.

Same spiking backbone as ESVAE (ESVAE paper Sec. IV-B). The latent (FSVAE paper, Sec. 3), k = 20, L = latent_dim:
posterior  q(z_t | x_<=t, z_<t): MLP 2L -> 2L -> 4L -> kL on concat(x_e[t], z_{t-1}) (z_{-1} = 0);
           z_t = one of the k output spikes of unit l, picked uniformly at random (gradient through it)
prior      p(z_t | z_<t): MLP L -> 2L -> 4L -> kL on z_{t-1} (detached; scheduled sampling in training)
loss       MSE(x_hat, x) + mean_{t,n,l} (PSP(q_bar) - PSP(p_bar))^2,  q_bar / p_bar = mean over the k spikes,
           PSP: s_t = s_{t-1}/2 + x_t/2;  or MSE + 1e-4 * Bernoulli-KL(q_bar || p_bar)  (``distance="kld"``)
Every MLP layer is TemporalLinear -> tdBN (alpha 2) -> LIF.

Autoregression and cost. The official code re-runs each MLP on every prefix z_<t (O(T^2) steps).
- Training mode: tdBN normalises with the batch statistics of the steps it is given, so the prefix pass t is
  NOT a slice of a longer pass; we keep the reference's prefix passes (under no_grad, as the reference), and
  with them the reference's quirk that every prefix pass also updates the tdBN running statistics.
- Eval mode: tdBN is a fixed per-element affine map, each Linear acts per step and the LIF is causal, so the
  prefix pass t equals step t of one incremental pass; we step the MLP once per time step (O(T)), with the
  same random draws in the same order.
Randomness (the k-index per unit and step, the scheduled-sampling coin, its 1e-3 noise) uses ``generator``.
"""
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional as sj_functional
from torch import nn

from ..functional import bernoulli_kld, psp_distance
from ..layer import TemporalLinear
from .backbone import SpikingBackbone, SpikingDecoder, SpikingEncoder, check_model_args
from .interface import FSVAEOutput, init_config

SCHEDULE_START, SCHEDULE_END, SCHEDULE_FIRST_STEP = 0.1, 0.3, 5
KLD_WEIGHT = 1e-4
DISTANCES = ("mmd", "kld")


def bernoulli_mlp(in_features: int, latent_dim: int, k: int, kernel_backend: str = "auto",
                  fuse_bn_lif: bool = False) -> nn.Sequential:
    """The FSVAE latent MLP: in -> 2L -> 4L -> kL, each TemporalLinear -> tdBN(alpha=2) -> LIF."""
    L = latent_dim
    opts = dict(alpha=2.0, kernel_backend=kernel_backend, fuse_bn_lif=fuse_bn_lif)
    return nn.Sequential(TemporalLinear(in_features, 2 * L, **opts), TemporalLinear(2 * L, 4 * L, **opts),
                         TemporalLinear(4 * L, k * L, **opts))


def run_prefix(mlp: nn.Sequential, x_seq: torch.Tensor) -> torch.Tensor:
    """A full multi-step pass from the reset state: ``[t, N, in] -> [t, N, kL]``."""
    sj_functional.reset_net(mlp)
    return mlp(x_seq)


def run_step(mlp: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """One time step ``[N, in] -> [N, kL]`` keeping each LIF's membrane between calls (eval-mode tdBN only)."""
    for block in mlp:
        x = block.step(x)
    return x


def random_index(n: int, latent_dim: int, k: int, *, generator: Optional[torch.Generator],
                 device: torch.device) -> torch.Tensor:
    """Which of the k spikes each (sample, unit) takes: uniform integers in [0, k), shape ``[n, L]``."""
    return torch.randint(0, k, (n, latent_dim), generator=generator, device=device)


def pick(spikes: torch.Tensor, index: torch.Tensor, k: int) -> torch.Tensor:
    """z[..., l] = spikes[..., l*k + index[..., l]]: ``[..., kL]`` and ``[..., L]`` -> ``[..., L]``."""
    return spikes.unflatten(-1, (-1, k)).gather(-1, index.unsqueeze(-1)).squeeze(-1)


class BernoulliPosterior(nn.Module):
    """q(z_t | x_<=t, z_<t) (reference PosteriorBernoulliSTBP); ``forward(x_e)`` -> ``(z [T,N,L], q_z [T,N,L,k])``."""

    def __init__(self, latent_dim: int, k: int = 20, kernel_backend: str = "auto", fuse_bn_lif: bool = False):
        super().__init__()
        self.latent_dim, self.k = latent_dim, k
        self.mlp = bernoulli_mlp(2 * latent_dim, latent_dim, k, kernel_backend, fuse_bn_lif)

    def forward(self, x_e: torch.Tensor, generator: Optional[torch.Generator] = None):
        if self.training:
            return self._forward_prefix(x_e, generator)
        return self._forward_stepwise(x_e, generator)

    def _forward_prefix(self, x_e, generator):
        """Reference: no-grad prefix passes draw z_0..z_{T-2}; one full pass with grad gives q_z; z re-read."""
        T, N, L = x_e.shape
        indices = []
        z_prev = x_e.new_zeros(T, N, L)  # z_prev[t] = z_{t-1}, z_{-1} = 0
        with torch.no_grad():
            for t in range(T - 1):
                out = run_prefix(self.mlp, torch.cat([x_e[:t + 1], z_prev[:t + 1]], dim=2))[-1]
                indices.append(random_index(N, L, self.k, generator=generator, device=x_e.device))
                z_prev[t + 1] = pick(out, indices[-1], self.k)
        q = run_prefix(self.mlp, torch.cat([x_e, z_prev], dim=2))  # [T, N, kL]
        indices.append(random_index(N, L, self.k, generator=generator, device=x_e.device))
        z = pick(q, torch.stack(indices), self.k)
        return z, q.unflatten(2, (L, self.k))

    def _forward_stepwise(self, x_e, generator):
        """Eval mode: one incremental pass (equal to the prefix passes when tdBN uses running statistics)."""
        T, N, L = x_e.shape
        sj_functional.reset_net(self.mlp)
        z_prev = x_e.new_zeros(N, L)
        zs, qs = [], []
        for t in range(T):
            out = run_step(self.mlp, torch.cat([x_e[t], z_prev.detach()], dim=1))
            zs.append(pick(out, random_index(N, L, self.k, generator=generator, device=x_e.device), self.k))
            qs.append(out)
            z_prev = zs[-1]
        return torch.stack(zs), torch.stack(qs).unflatten(2, (L, self.k))


class BernoulliPrior(nn.Module):
    """p(z_t | z_<t) (reference PriorBernoulliSTBP): ``forward(z)`` -> ``p_z [T,N,L,k]``; ``generate(n)``."""

    def __init__(self, latent_dim: int, k: int = 20, kernel_backend: str = "auto", fuse_bn_lif: bool = False):
        super().__init__()
        self.latent_dim, self.k = latent_dim, k
        self.mlp = bernoulli_mlp(latent_dim, latent_dim, k, kernel_backend, fuse_bn_lif)

    def forward(self, z: torch.Tensor, sampling_prob: float = 0.0, scheduled: bool = True,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Teacher forcing on [0, z_0..z_{T-2}] (detached); in training with ``scheduled``, for t >= 5 and
        with probability ``sampling_prob`` z_t is replaced by 1[mean_k p(z_t | z_<t) + 1e-3 N(0,1) > 0.5]."""
        T, N, L = z.shape
        inputs = torch.cat([z.new_zeros(1, N, L), z[:-1].detach()], dim=0)  # inputs[t] = z_{t-1}
        if self.training and scheduled:
            with torch.no_grad():
                for t in range(SCHEDULE_FIRST_STEP, T - 1):
                    coin = torch.rand((), generator=generator, device=z.device)
                    if coin.item() < sampling_prob:
                        out = run_prefix(self.mlp, inputs[:t + 1])[-1]  # p(z_t | z_<t)
                        prob = out.unflatten(-1, (L, self.k)).mean(-1)
                        noise = torch.randn((N, L), generator=generator, device=z.device, dtype=z.dtype)
                        inputs[t + 1] = (prob + 1e-3 * noise > 0.5).to(z.dtype)
        return run_prefix(self.mlp, inputs).unflatten(2, (L, self.k))

    @torch.no_grad()
    def generate(self, n: int, generator: Optional[torch.Generator] = None,
                 device: Optional[torch.device] = None, T: int = 16) -> torch.Tensor:
        """Autoregressive sampling of z ``[T, n, L]``: z_t = a random one of the k spikes of p(z_t | z_<t)."""
        device = device or next(self.parameters()).device
        dtype = next(self.parameters()).dtype
        L = self.latent_dim
        z_prev = torch.zeros(n, L, device=device, dtype=dtype)
        zs = []
        if self.training:  # reference prefix re-runs (batch statistics of each prefix)
            inputs = torch.zeros(T + 1, n, L, device=device, dtype=dtype)
            for t in range(T):
                out = run_prefix(self.mlp, inputs[:t + 1])[-1]
                inputs[t + 1] = pick(out, random_index(n, L, self.k, generator=generator, device=device), self.k)
            return inputs[1:]
        sj_functional.reset_net(self.mlp)
        for t in range(T):
            out = run_step(self.mlp, z_prev)
            z_prev = pick(out, random_index(n, L, self.k, generator=generator, device=device), self.k)
            zs.append(z_prev)
        return torch.stack(zs)


class FSVAE(SpikingBackbone):
    """FSVAE; 32x32 images by default (MNIST, Fashion-MNIST: 1 channel; CIFAR-10: 3), 64x64 (CelebA) with
    ``image_size=64`` (the builder ``fsvae_large``). ``hidden``, ``kernel_backend`` and ``fuse_bn_lif`` as ESVAE's.

    ``forward(x)`` returns an ``FSVAEOutput(reconstruction, q_z [T,N,L,k], p_z [T,N,L,k], z [T,N,L])``; ``encode(x)`` gives the
    encoder spikes x_e and their firing rate, before the posterior network (the input of the Table III probe).
    ``set_epoch(epoch, max_epochs)`` sets the scheduled-sampling probability p = 0.1 + 0.2 * epoch / max_epochs
    (0.1 until it is called).
    """

    name = "fsvae"

    def __init__(self, in_channels: int = 1, latent_dim: int = 128, T: int = 16, image_size: int = 32, *,
                 hidden: Optional[Sequence[int]] = None, k: int = 20, scheduled: bool = True,
                 distance: str = "mmd", kernel_backend: str = "auto", fuse_bn_lif: bool = False):
        super().__init__()
        hidden = check_model_args(in_channels, image_size, hidden)
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
        if int(k) < 1 or int(T) < 1 or int(latent_dim) < 1:
            raise ValueError(f"k, T and latent_dim must be >= 1, got k={k}, T={T}, latent_dim={latent_dim}")
        self.in_channels, self.image_size, self.latent_dim = in_channels, image_size, int(latent_dim)
        self.T, self.k, self.scheduled, self.distance = int(T), int(k), bool(scheduled), distance
        self.sampling_prob = SCHEDULE_START
        self.config = init_config(self, locals(), latent_dim=int(latent_dim), T=int(T), hidden=list(hidden),
                                  k=int(k), scheduled=bool(scheduled), fuse_bn_lif=bool(fuse_bn_lif))
        fuse = bool(fuse_bn_lif)
        self.encoder = SpikingEncoder(in_channels, latent_dim, hidden, kernel_backend, fuse)
        self.posterior = BernoulliPosterior(latent_dim, k, kernel_backend, fuse)
        self.prior = BernoulliPrior(latent_dim, k, kernel_backend, fuse)
        self.decoder = SpikingDecoder(in_channels, latent_dim, hidden, kernel_backend, fuse)

    def set_epoch(self, epoch: int, max_epochs: int) -> float:
        """Scheduled-sampling probability p = 0.1 + 0.2 * epoch / max_epochs (reference update_p)."""
        if max_epochs < 1 or epoch < 0:
            raise ValueError(f"need epoch >= 0 and max_epochs >= 1, got {epoch}, {max_epochs}")
        self.sampling_prob = SCHEDULE_START + (SCHEDULE_END - SCHEDULE_START) * epoch / max_epochs
        return self.sampling_prob

    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None):
        x_e, _ = self.encode(x)
        z, q_z = self.posterior(x_e, generator)
        p_z = self.prior(z, self.sampling_prob, self.scheduled, generator)
        return FSVAEOutput(self.decode(z), q_z, p_z, z)

    def loss(self, x: torch.Tensor, out: FSVAEOutput) -> Dict[str, torch.Tensor]:
        """MSE + mean (PSP(q_bar) - PSP(p_bar))^2  (or MSE + 1e-4 * Bernoulli KL with ``distance='kld'``)."""
        out = FSVAEOutput(*out)
        recon = F.mse_loss(out.reconstruction, x)
        q_bar, p_bar = out.q_z.mean(-1), out.p_z.mean(-1)  # [T, N, L]
        if self.distance == "mmd":
            mmd = psp_distance(q_bar, p_bar)
            return {"loss": recon + mmd, "recon": recon, "mmd": mmd}
        kld = bernoulli_kld(q_bar, p_bar)
        return {"loss": recon + KLD_WEIGHT * kld, "recon": recon, "kld": kld}

    def posterior_spikes(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Latent spikes z ``[T, N, L]`` sampled from q(z | x) (what ``decode`` gets in reconstruction)."""
        return self.posterior(self.encode(x)[0], generator)[0]

    def prior_spikes(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Latent spikes ``[T, n, L]`` generated autoregressively from the prior."""
        sj_functional.reset_net(self)
        return self.prior.generate(n, generator, T=self.T)

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Generate ``n`` images: autoregressive prior spikes -> decoder."""
        return self.decode(self.prior_spikes(n, generator))

    def param_groups(self, lr: float):
        """One AdamW group at ``lr`` (the reference FSVAE has no per-module learning rates)."""
        return [{"params": list(self.parameters()), "lr": lr}]
