"""The ex-post Gaussian-mixture rate prior (Ghosh et al., ICLR 2020, "From Variational to Deterministic
Autoencoders", Sec. 4): a mixture fitted to the posterior rates r_p = mean_t x_e (Eq. 5) of the training
images after training,

    y = logit(clamp(r_p, eps, 1 - eps)),   p(y) = sum_k pi_k N(y; mu_k, Sigma_k),   r = sigmoid(y).

EM is scikit-learn's ``GaussianMixture`` (the optional ``[prior]`` extra); sampling and log-probability
are torch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .. import __version__
from ..atomic import sha256_file
from .base import PriorError, RatePrior, check_latent_dim, posterior_rates
from .files import load_payload, save_payload

__all__ = ["GaussianMixturePrior", "GMMFit", "fit_gmm", "fit_rate_mixture", "fit_gmm_prior"]

FORMAT = "spikingjelly_vae.gmm_prior"
FORMAT_VERSION = 1
SCALARS, TENSORS = ("covariance", "eps"), ("weights", "means", "covariances")
COVARIANCES = ("full", "diag")
INITS = {"kmeans++": "k-means++", "random": "random_from_data"}  # ours -> scikit-learn's init_params
FIT_HOW = "fit one with `sjvae prior fit` or fit_gmm_prior(...).save(path)"


@dataclass
class GMMFit:
    """Result of ``fit_gmm``: weights [K], means [K, D], covariances [K, D, D] (full) or [K, D] (diag)."""
    weights: torch.Tensor
    means: torch.Tensor
    covariances: torch.Tensor
    covariance: str
    log_likelihood: float  # mean per-sample log-likelihood of the fitted data
    iterations: int
    converged: bool


def _gaussian_mixture():
    try:
        from sklearn.mixture import GaussianMixture
        from threadpoolctl import threadpool_limits  # a scikit-learn dependency
    except ImportError:
        raise PriorError("fitting a GMM prior needs scikit-learn: pip install 'spikingjelly-vae[prior]' "
                         "(loading and sampling a fitted one does not)") from None
    return GaussianMixture, threadpool_limits


def fit_gmm(x: torch.Tensor, *, components: int, covariance: str = "full", seed: int = 0,
            max_iter: int = 200, tol: float = 1e-4, reg_covar: float = 1e-4,
            init: str = "kmeans++") -> GMMFit:
    """EM (scikit-learn, float64 on the CPU) for a K-component mixture on x [N, D]; deterministic for a seed.

    Stops when the mean log-likelihood gains less than ``tol`` per iteration; ``reg_covar`` is added to
    every covariance diagonal (keeps components on constant dimensions positive definite); ``init``:
    EM starts from K k-means++ seeds or K random data points."""
    if covariance not in COVARIANCES:
        raise PriorError(f"covariance must be one of {', '.join(COVARIANCES)}, got {covariance!r}")
    if init not in INITS:
        raise PriorError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    if x.dim() != 2 or not 1 <= components <= x.shape[0]:
        raise PriorError(f"need data [N, D] with N >= components ({components}), got {tuple(x.shape)}")
    mixture, threadpool_limits = _gaussian_mixture()
    data = x.detach().to("cpu", torch.float64).numpy()
    with threadpool_limits(torch.get_num_threads()):  # BLAS threads as torch's: unset, a busy CPU thrashed
        gm = mixture(components, covariance_type=covariance, tol=tol, reg_covar=reg_covar, max_iter=max_iter,
                     init_params=INITS[init], random_state=int(seed)).fit(data)
    return GMMFit(torch.from_numpy(gm.weights_).double(), torch.from_numpy(gm.means_).double(),
                  torch.from_numpy(gm.covariances_).double(), covariance, float(gm.score(data)),
                  int(gm.n_iter_), bool(gm.converged_))


class GaussianMixturePrior(RatePrior):
    """r = sigmoid(y), y ~ sum_k pi_k N(mu_k, Sigma_k) in logit space (fitted by ``fit_gmm_prior``)."""

    def __init__(self, weights, means, covariances, *, covariance: str, eps: float,
                 provenance: Optional[dict] = None):
        if covariance not in COVARIANCES:
            raise PriorError(f"covariance must be one of {', '.join(COVARIANCES)}, got {covariance!r}")
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.covariances = torch.as_tensor(covariances, dtype=torch.float64)
        self.covariance, self.eps = covariance, float(eps)
        self.provenance = dict(provenance or {})
        k, d = self.means.shape
        shape = (k, d, d) if covariance == "full" else (k, d)
        if self.weights.shape != (k,) or tuple(self.covariances.shape) != shape:
            raise PriorError(f"inconsistent mixture: weights {tuple(self.weights.shape)}, means {(k, d)}, "
                             f"covariances {tuple(self.covariances.shape)} (expected {shape})")
        if not (self.weights >= 0).all() or abs(float(self.weights.sum()) - 1) > 1e-6:
            raise PriorError("mixture weights must be non-negative and sum to 1")
        try:
            self._scale = (torch.linalg.cholesky(self.covariances) if covariance == "full"
                           else self.covariances.sqrt())
        except RuntimeError as err:
            raise PriorError(f"a mixture covariance is not positive definite: {err}") from None
        if not torch.isfinite(self._scale).all():
            raise PriorError("mixture covariances must be positive and finite")
        self.components, self.latent_dim = k, d
        self.name = f"gmm-k{k}-{covariance}"

    def sample_logits(self, n: int, *, generator=None, device=None) -> torch.Tensor:
        """y [n, D] (float64): a component index k ~ pi, then y = mu_k + chol(Sigma_k) e, e ~ N(0, I)."""
        device = torch.device(device) if device is not None else (
            generator.device if generator is not None else torch.device("cpu"))
        w, mu, scale = self.weights.to(device), self.means.to(device), self._scale.to(device)
        k = torch.multinomial(w, n, replacement=True, generator=generator)
        e = torch.randn(n, self.latent_dim, generator=generator, device=device, dtype=torch.float64)
        if self.covariance == "diag":
            return mu[k] + scale[k] * e
        return mu[k] + (scale[k] @ e.unsqueeze(-1)).squeeze(-1)

    def sample_rates(self, n, *, generator=None, device=None):
        """sigmoid(y) clamped to [eps, 1 - eps], the range of the fitted rates (so a float32 rate is never
        exactly 0 or 1, which a far tail draw would otherwise round to)."""
        y = self.sample_logits(n, generator=generator, device=device)
        return torch.sigmoid(y).clamp(self.eps, 1 - self.eps).float()

    def log_prob_logits(self, y: torch.Tensor) -> torch.Tensor:
        """log p(y) [N] of logit-space points under the mixture (torch.distributions)."""
        dist = torch.distributions
        comp = (dist.MultivariateNormal(self.means, scale_tril=self._scale) if self.covariance == "full"
                else dist.Independent(dist.Normal(self.means, self._scale), 1))
        return dist.MixtureSameFamily(dist.Categorical(self.weights), comp).log_prob(y.to(torch.float64))

    def save(self, path) -> Path:
        """Write a weights_only torch file with the mixture, its provenance and a sha256 of both."""
        payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "covariance": self.covariance,
                   "eps": self.eps, "weights": self.weights, "means": self.means,
                   "covariances": self.covariances, "provenance": self.provenance}
        return save_payload(path, payload, ("format", "format_version", *SCALARS), TENSORS)

    @classmethod
    def load(cls, path, *, latent_dim: Optional[int] = None) -> "GaussianMixturePrior":
        """Read a file written by ``save``; anything else (or an edited file) raises PriorError."""
        p = load_payload(path, kind="GMM", fmt=FORMAT, version=FORMAT_VERSION, scalars=SCALARS,
                         tensors=TENSORS, how=FIT_HOW)
        from ..schemas import GMMPriorFile, check  # types and ranges (the digest alone can be recomputed)
        try:
            check(GMMPriorFile, p, path, FIT_HOW)
        except ValueError as err:
            raise PriorError(str(err)) from None
        prior = cls(p["weights"], p["means"], p["covariances"], covariance=p["covariance"], eps=p["eps"],
                    provenance=p["provenance"])
        return check_latent_dim(prior, path, latent_dim)


def fit_rate_mixture(rates: torch.Tensor, *, components: int = 10, covariance: str = "full", seed: int = 0,
                     eps: float = 1e-4, checkpoint=None, reg_covar: float = 1e-4, max_iter: int = 200,
                     tol: float = 1e-4, init: str = "kmeans++") -> GaussianMixturePrior:
    """GMM prior of posterior rates [N, L]: EM on logit(clamp(rates, eps, 1 - eps)).

    ``checkpoint`` (the model's file) goes into the provenance with its sha256."""
    if not 0 < eps < 0.5:
        raise PriorError(f"eps must lie in (0, 0.5), got {eps}")
    y = torch.logit(rates.to(torch.float64).clamp(eps, 1 - eps))
    t0 = time.perf_counter()
    fit = fit_gmm(y, components=components, covariance=covariance, seed=seed, max_iter=max_iter, tol=tol,
                  reg_covar=reg_covar, init=init)
    fit_s = time.perf_counter() - t0
    prov = {**checkpoint_provenance(checkpoint),
            "components": int(components), "covariance": covariance, "images": int(rates.shape[0]),
            "seed": int(seed), "init": init, "reg_covar": float(reg_covar), "tol": float(tol),
            "iterations": int(fit.iterations), "converged": bool(fit.converged),
            "log_likelihood": float(fit.log_likelihood), "fit_seconds": float(fit_s),
            "package_version": __version__, "torch_version": str(torch.__version__)}
    return GaussianMixturePrior(fit.weights, fit.means, fit.covariances, covariance=covariance, eps=eps,
                                provenance=prov)


def checkpoint_provenance(checkpoint) -> dict:
    """The fitted checkpoint's resolved path and sha256 (empty strings without one)."""
    return {"checkpoint": str(Path(checkpoint).resolve()) if checkpoint else "",
            "checkpoint_sha256": sha256_file(checkpoint) if checkpoint else ""}


def fit_gmm_prior(model, images_or_loader, *, components: int = 10, covariance: str = "full",
                  max_images: Optional[int] = None, seed: int = 0, device=None, checkpoint=None,
                  eps: float = 1e-4, batch_size: int = 256, **em) -> GaussianMixturePrior:
    """Fit the ex-post GMM prior to the posterior rates of ``images_or_loader`` (the training images).

    The first ``max_images`` images are encoded on ``device`` (default: the model's), rates clamped to
    [eps, 1 - eps] and fitted in logit space by ``fit_rate_mixture`` (``em``: reg_covar, max_iter, tol,
    init). Posterior rates are multiples of 1/T, most of them exactly 0 or 1; eps must be small against
    1/T, since a sampled rate eps still fires T * eps spikes on average (docs/prior.md)."""
    t0 = time.perf_counter()
    rates = posterior_rates(model, images_or_loader, max_images=max_images, batch_size=batch_size,
                            device=device)
    encode_s = time.perf_counter() - t0
    prior = fit_rate_mixture(rates, components=components, covariance=covariance, seed=seed,
                             eps=float(eps), checkpoint=checkpoint, **em)
    prior.provenance["encode_seconds"] = float(encode_s)
    return prior
