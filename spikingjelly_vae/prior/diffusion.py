"""A diffusion rate prior: DDPM (Ho et al., NeurIPS 2020) over the posterior rates r_p = mean_t x_e (Eq. 5)
of the training images, with DDIM (Song et al., ICLR 2021) or ancestral sampling.

The rates are mapped to x0 in [-1, 1], either linearly (space "rate": x0 = 2 r - 1) or through the GMM's
clamped logit (space "logit": x0 = logit(clamp(r, eps, 1 - eps)) / logit(1 - eps)). Training (Ho et al.,
Eq. 14): x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) e, minimise |e - e_theta(x_t, t)|^2 with the cosine
schedule abar_t (Nichol & Dhariwal 2021). Sampling (Song et al., Eq. 12) from x_T ~ N(0, I) down a
subsequence of the timesteps; eta = 1 over every step is DDPM's ancestral sampler, eta = 0 is DDIM.
e_theta is a small MLP with a sinusoidal timestep embedding.
"""
from __future__ import annotations

import math
import time
from typing import Optional

import torch
from torch import nn

from .. import __version__
from .base import PriorError, RatePrior, check_latent_dim, posterior_rates
from .files import load_payload, save_payload
from .gmm import checkpoint_provenance

__all__ = ["Denoiser", "DiffusionPrior", "fit_diffusion", "fit_diffusion_prior", "SPACES"]

FORMAT = "spikingjelly_vae.diffusion_prior"
FORMAT_VERSION = 1
SCALARS, TENSORS = ("config",), ("state",)
SPACES = ("logit", "rate")
CONFIG = {"latent_dim": int, "space": str, "eps": float, "steps": int, "width": int, "depth": int,
          "sample_steps": int, "eta": float}
FIT_HOW = "fit one with `sjvae prior fit --kind diffusion` or fit_diffusion_prior(...).save(path)"


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding [n, dim] of integer timesteps t [n] (Vaswani et al. 2017, as in Ho et al.)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], 1)


class Denoiser(nn.Module):
    """e_theta(x_t, t): residual MLP blocks of ``width`` units, each fed the timestep embedding."""

    def __init__(self, latent_dim: int, width: int = 256, depth: int = 3):
        super().__init__()
        self.width = width
        self.inp = nn.Linear(latent_dim, width)
        self.time = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, width),
                                                  nn.SiLU(), nn.Linear(width, width)) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, latent_dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        steps, index = t.unique(return_inverse=True)  # the embedding MLP once per distinct timestep
        emb = self.time(timestep_embedding(steps, self.width))[index]
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h + emb)
        return self.out(h)


def cosine_alpha_bar(steps: int) -> torch.Tensor:
    """abar_t for t = 0..steps (float64, abar_0 = 1): cos^2 schedule, betas clipped to 0.999."""
    s = 0.008
    f = torch.cos((torch.arange(steps + 1, dtype=torch.float64) / steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])


def _check_config(config: dict) -> dict:
    if not isinstance(config, dict) or set(config) != set(CONFIG) \
            or not all(isinstance(config[k], t) for k, t in CONFIG.items()):
        raise PriorError(f"a diffusion prior's config needs {sorted(CONFIG)} with types "
                         f"{[t.__name__ for t in CONFIG.values()]}, got {config!r}")
    if config["space"] not in SPACES:
        raise PriorError(f"space must be one of {', '.join(SPACES)}, got {config['space']!r}")
    if not 0 < config["eps"] < 0.5 or min(config["steps"], config["width"], config["sample_steps"],
                                              config["latent_dim"]) < 1 or config["depth"] < 0:
        raise PriorError(f"out-of-range diffusion prior config {config!r}")
    if config["sample_steps"] > config["steps"] or not 0 <= config["eta"] <= 1:
        raise PriorError("sample_steps must lie in [1, steps] and eta in [0, 1]")
    from ..schemas import MAX_MODEL_ELEMENTS  # a file must not ask for a denoiser larger than a model may be
    size = (config["depth"] + 2) * config["width"] * (config["width"] + config["latent_dim"])
    if size > MAX_MODEL_ELEMENTS or config["steps"] > 100_000:
        raise PriorError(f"a diffusion prior of width {config['width']}, depth {config['depth']} and "
                         f"{config['steps']} steps is larger than this package builds")
    return dict(config)


def _check_state(net: nn.Module, state) -> None:
    """PriorError unless `state` holds exactly the denoiser's tensors, float, of its shapes and finite (NaN
    weights would give NaN rates; integer ones would be cast without a word)."""
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    if not isinstance(state, dict) or set(state) != set(shapes):
        raise PriorError("the denoiser weights do not fit its config (other tensor names); refit it")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or tuple(value.shape) != shapes[key]:
            raise PriorError(f"the denoiser weight {key!r} is not a float tensor of shape {shapes[key]}; refit it")
        if not torch.isfinite(value).all():
            raise PriorError(f"the denoiser weight {key!r} holds NaN or infinite values; refit it")


class DiffusionPrior(RatePrior):
    """Rates from a DDPM over the posterior rates (fitted by ``fit_diffusion_prior``)."""

    def __init__(self, config: dict, state: Optional[dict] = None, *, provenance: Optional[dict] = None):
        self.config = _check_config(config)
        self.net = Denoiser(config["latent_dim"], config["width"], config["depth"]).eval()
        if state is not None:
            _check_state(self.net, state)
            self.net.load_state_dict(state)
        self.net.requires_grad_(False)
        self.alpha_bar = cosine_alpha_bar(config["steps"])
        self.provenance = dict(provenance or {})
        self.latent_dim, self.eps = config["latent_dim"], config["eps"]
        self.name = f"diffusion-{config['space']}"
        self._scale = math.log((1 - self.eps) / self.eps)  # logit(1 - eps): logit space -> [-1, 1]

    def to_x0(self, rates: torch.Tensor) -> torch.Tensor:
        """Rates [n, L] -> x0 in [-1, 1] (the space the diffusion runs in)."""
        r = rates.to(torch.float32).clamp(self.eps, 1 - self.eps)
        return torch.logit(r) / self._scale if self.config["space"] == "logit" else 2 * r - 1

    def to_rates(self, x0: torch.Tensor) -> torch.Tensor:
        """x0 -> rates clamped to [eps, 1 - eps] (never exactly 0 or 1, as the GMM's)."""
        r = torch.sigmoid(x0 * self._scale) if self.config["space"] == "logit" else (x0 + 1) / 2
        return r.clamp(self.eps, 1 - self.eps)

    @torch.no_grad()
    def sample_x0(self, n: int, *, generator=None, device=None, sample_steps: Optional[int] = None,
                  eta: Optional[float] = None) -> torch.Tensor:
        """x0 [n, L]: Song et al. Eq. 12 from x_T ~ N(0, I) over ``sample_steps`` evenly spaced timesteps
        (default: the config's); the predicted x0 is clipped to [-1, 1] at every step."""
        device = torch.device(device) if device is not None else (
            generator.device if generator is not None else torch.device("cpu"))
        steps, k = self.config["steps"], sample_steps or self.config["sample_steps"]
        eta = self.config["eta"] if eta is None else float(eta)
        if not 1 <= k <= steps:
            raise PriorError(f"sample_steps must lie in [1, {steps}], got {k}")
        net = self.net.to(device)
        ab = self.alpha_bar.to(device)
        times = torch.linspace(steps, 0, k + 1).round().long().tolist()
        x = torch.randn(n, self.latent_dim, generator=generator, device=device)
        for t, s in zip(times[:-1], times[1:]):
            e = net(x, torch.full((n,), t, device=device))
            x0 = ((x - (1 - ab[t]).sqrt() * e) / ab[t].sqrt()).clamp(-1, 1).float()
            e = ((x - ab[t].sqrt() * x0) / (1 - ab[t]).sqrt()).float()
            sigma = eta * ((1 - ab[s]) / (1 - ab[t]) * (1 - ab[t] / ab[s])).sqrt()
            x = (ab[s].sqrt() * x0 + (1 - ab[s] - sigma ** 2).clamp(min=0).sqrt() * e).float()
            if s > 0 and eta > 0:
                x = x + float(sigma) * torch.randn(x.shape, generator=generator, device=device)
        return x

    def sample_rates(self, n, *, generator=None, device=None):
        return self.to_rates(self.sample_x0(n, generator=generator, device=device)).float()

    def save(self, path):
        """Write a weights_only torch file with the config, the denoiser, the provenance and their digest."""
        payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": self.config,
                   "state": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
                   "provenance": self.provenance}
        return save_payload(path, payload, ("format", "format_version", *SCALARS), TENSORS)

    @classmethod
    def load(cls, path, *, latent_dim: Optional[int] = None) -> "DiffusionPrior":
        """Read a file written by ``save``; anything else (or an edited file) raises PriorError."""
        p = load_payload(path, kind="diffusion", fmt=FORMAT, version=FORMAT_VERSION, scalars=SCALARS,
                         tensors=TENSORS, how=FIT_HOW)
        try:
            prior = cls(p["config"], p["state"], provenance=p["provenance"])
        except PriorError as err:
            raise PriorError(f"{path}: {err}") from None
        return check_latent_dim(prior, path, latent_dim)


def _train(prior: DiffusionPrior, x0: torch.Tensor, *, epochs: int, batch_size: int, lr: float, ema: float,
           generator: torch.Generator, progress: bool) -> float:
    """Ho et al.'s Algorithm 1 for ``epochs`` passes over x0 (Adam, cosine-annealed lr, EMA weights into
    ``prior.net``); returns the last epoch's mean loss."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    from tqdm.auto import tqdm
    net = prior.net.train().requires_grad_(True)
    average = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(ema))
    batches = math.ceil(len(x0) / batch_size)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs * batches))
    ab, steps, loss_sum = prior.alpha_bar.float(), prior.config["steps"], float("nan")
    for _ in tqdm(range(epochs), desc=f"fit {prior.name}", unit="epoch", disable=not progress):
        loss_sum = 0.0
        for idx in torch.randperm(len(x0), generator=generator).split(batch_size):
            x = x0[idx]
            t = torch.randint(1, steps + 1, (len(x),), generator=generator)
            e = torch.randn(x.shape, generator=generator)
            a = ab[t][:, None]
            loss = nn.functional.mse_loss(net(a.sqrt() * x + (1 - a).sqrt() * e, t), e)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            average.update_parameters(net)
            loss_sum += float(loss.detach()) * len(x)
        loss_sum /= len(x0)
    if epochs:
        net.load_state_dict(average.module.state_dict())
    net.eval().requires_grad_(False)
    return loss_sum


def fit_diffusion(rates: torch.Tensor, *, space: str = "logit", steps: int = 100, epochs: int = 20,
                  width: int = 512, depth: int = 3, train_batch: int = 256, lr: float = 2e-3,
                  ema: float = 0.995, sample_steps: Optional[int] = 50, eta: float = 0.0, seed: int = 0,
                  eps: float = 1e-4, checkpoint=None, progress: bool = False) -> DiffusionPrior:
    """DDPM prior of posterior rates [N, L] (on the CPU). ``seed`` fixes the initial weights and every
    training draw; ``checkpoint`` (the model's file) goes into the provenance with its sha256. Sampling
    defaults to DDIM (eta = 0) over ``sample_steps`` of the ``steps`` (None: all of them)."""
    if rates.dim() != 2 or len(rates) < 1:
        raise PriorError(f"need rates [N, L], got {tuple(rates.shape)}")
    config = {"latent_dim": int(rates.shape[1]), "space": space, "eps": float(eps), "steps": int(steps),
              "width": int(width), "depth": int(depth), "eta": float(eta),
              "sample_steps": int(min(sample_steps or steps, steps))}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        prior = DiffusionPrior(_check_config(config))
    generator = torch.Generator().manual_seed(int(seed))
    t0 = time.perf_counter()
    loss = _train(prior, prior.to_x0(rates.cpu()), epochs=int(epochs), batch_size=int(train_batch), lr=lr,
                  ema=ema, generator=generator, progress=progress)
    prior.provenance = {**checkpoint_provenance(checkpoint), "images": int(rates.shape[0]), "seed": int(seed),
                        "epochs": int(epochs), "train_batch": int(train_batch), "lr": float(lr),
                        "ema": float(ema), "final_loss": float(loss), "fit_seconds": time.perf_counter() - t0,
                        "torch_threads": torch.get_num_threads(), "package_version": __version__,
                        "torch_version": str(torch.__version__)}
    return prior


def fit_diffusion_prior(model, images_or_loader, *, max_images: Optional[int] = None, device=None,
                        batch_size: int = 256, **fit) -> DiffusionPrior:
    """Encode the first ``max_images`` images (``posterior_rates``), then ``fit_diffusion(rates, **fit)``."""
    t0 = time.perf_counter()
    rates = posterior_rates(model, images_or_loader, max_images=max_images, batch_size=batch_size,
                            device=device)
    encode_s = time.perf_counter() - t0
    prior = fit_diffusion(rates, **fit)
    prior.provenance["encode_seconds"] = float(encode_s)
    return prior
