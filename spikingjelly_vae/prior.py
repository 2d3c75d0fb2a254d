"""Rate priors for ESVAE generation: where the Poisson firing rates of a sample come from.

ESVAE generates with r_q = sigmoid(W z_n + b), z_n ~ N(0, I) (its learned bottleneck, pulled towards the
posterior rates only by the MMD term of Eq. 11). An ex-post density prior (Ghosh et al., ICLR 2020,
"From Variational to Deterministic Autoencoders", Sec. 4) instead fits a Gaussian mixture to the
posterior rates r_p = mean_t x_e (Eq. 5) of the training images after training:

    y = logit(clamp(r_p, eps, 1 - eps)),   p(y) = sum_k pi_k N(y; mu_k, Sigma_k),   r = sigmoid(y).

Either way the rates then go through the model's PoissonLatent (Eqs. 7, 8) and the spiking decoder, so
generation stays a spiking pass; only the rate source differs.
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from . import __version__
from .atomic import atomic_write, sha256_file

__all__ = ["PriorError", "RatePrior", "LearnedPrior", "GaussianMixturePrior", "GMMFit", "fit_gmm",
           "fit_rate_mixture", "posterior_rates", "fit_gmm_prior", "load_prior", "default_prior_path",
           "sample_images", "prior_batches"]

FORMAT = "spikingjelly_vae.gmm_prior"
FORMAT_VERSION = 1
COVARIANCES = ("full", "diag")
INITS = ("kmeans++", "random")


class PriorError(ValueError):
    """A prior cannot be built, loaded or used with this model; the message says what to do."""


def _check_esvae(model) -> None:
    from .models.esvae import ESVAE
    if not isinstance(model, ESVAE):
        raise PriorError(f"rate priors apply to ESVAE only (its latent is Poisson firing rates); got "
                         f"{type(model).__name__}. FSVAE and the ANN VAE have no rate prior: "
                         "use their learned prior (--prior learned, model.sample)")


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
        _check_esvae(model)
        self.model, self.latent_dim = model, model.latent_dim

    def sample_rates(self, n, *, generator=None, device=None):
        return self.model.prior_rate(n, generator, device)


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


def _log_gauss(x, means, cov, covariance):
    """log N(x_n; mu_k, Sigma_k), shape [N, K] (diag via matmuls, full via Cholesky solves)."""
    d = x.shape[1]
    const = d * math.log(2 * math.pi)
    if covariance == "diag":
        prec = 1.0 / cov
        maha = (x * x) @ prec.T - 2 * x @ (means * prec).T + (means * means * prec).sum(1)
        return -0.5 * (maha + torch.log(cov).sum(1) + const)
    chol = torch.linalg.cholesky(cov)
    out = []
    for k in range(means.shape[0]):
        y = torch.linalg.solve_triangular(chol[k], (x - means[k]).T, upper=False)
        logdet = 2 * torch.log(torch.diagonal(chol[k])).sum()
        out.append(-0.5 * ((y * y).sum(0) + logdet + const))
    return torch.stack(out, 1)


def _m_step(x, resp, covariance, reg_covar):
    """Weights, means and (regularised) covariances from responsibilities resp [N, K]."""
    nk = resp.sum(0) + 10 * torch.finfo(x.dtype).eps
    means = resp.T @ x / nk[:, None]
    if covariance == "diag":
        var = resp.T @ (x * x) / nk[:, None] - means * means
        return nk / x.shape[0], means, var.clamp_min(0) + reg_covar
    eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    cov = torch.stack([((resp[:, k, None] * (x - means[k])).T @ (x - means[k])) / nk[k]
                       for k in range(means.shape[0])])
    return nk / x.shape[0], means, cov + reg_covar * eye


def _init_resp(x, k, init, generator):
    """Hard responsibilities [N, K] from k-means++ seeding or K distinct random points."""
    n = x.shape[0]
    if init == "random":
        centers = x[torch.randperm(n, generator=generator, device="cpu")[:k].to(x.device)]
    else:
        idx = [int(torch.randint(n, (1,), generator=generator))]
        d2 = ((x - x[idx[0]]) ** 2).sum(1)
        for _ in range(1, k):
            p = (d2 / d2.sum()).cpu() if d2.sum() > 0 else torch.full((n,), 1.0 / n, dtype=torch.float64)
            idx.append(int(torch.multinomial(p, 1, generator=generator)))
            d2 = torch.minimum(d2, ((x - x[idx[-1]]) ** 2).sum(1))
        centers = x[idx]
    nearest = torch.cdist(x, centers).argmin(1)
    return torch.nn.functional.one_hot(nearest, k).to(x.dtype)


def fit_gmm(x: torch.Tensor, *, components: int, covariance: str = "full", seed: int = 0,
            max_iter: int = 200, tol: float = 1e-4, reg_covar: float = 1e-4,
            init: str = "kmeans++") -> GMMFit:
    """EM for a K-component Gaussian mixture on x [N, D] (float64 on x's device; deterministic for a seed).

    Stops when the mean log-likelihood gains less than ``tol`` per iteration; ``reg_covar`` is added to
    every covariance diagonal (keeps components on constant dimensions positive definite)."""
    if covariance not in COVARIANCES:
        raise PriorError(f"covariance must be one of {', '.join(COVARIANCES)}, got {covariance!r}")
    if init not in INITS:
        raise PriorError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    if x.dim() != 2 or not 1 <= components <= x.shape[0]:
        raise PriorError(f"need data [N, D] with N >= components ({components}), got {tuple(x.shape)}")
    x = x.to(torch.float64)
    generator = torch.Generator().manual_seed(int(seed))
    weights, means, cov = _m_step(x, _init_resp(x, components, init, generator), covariance, reg_covar)
    prev, ll, converged, it = -math.inf, -math.inf, False, 0
    for it in range(1, max_iter + 1):
        log_p = _log_gauss(x, means, cov, covariance) + torch.log(weights)
        norm = torch.logsumexp(log_p, 1, keepdim=True)
        ll = float(norm.mean())
        if ll - prev < tol:
            converged = True
            break
        prev = ll
        weights, means, cov = _m_step(x, torch.exp(log_p - norm), covariance, reg_covar)
    return GMMFit(weights, means, cov, covariance, ll, it, converged)


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
        """log p(y) [N] of logit-space points under the mixture."""
        log_p = _log_gauss(y.to(torch.float64), self.means, self.covariances, self.covariance)
        return torch.logsumexp(log_p + torch.log(self.weights), 1)

    def _payload(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "covariance": self.covariance,
                "eps": self.eps, "weights": self.weights, "means": self.means,
                "covariances": self.covariances, "provenance": self.provenance}

    def save(self, path) -> Path:
        """Write a weights_only torch file with the mixture, its provenance and a sha256 of both."""
        payload = self._payload()
        payload["digest"] = _digest(payload)
        return atomic_write(path, lambda tmp: torch.save(payload, tmp))

    @classmethod
    def load(cls, path, *, latent_dim: Optional[int] = None) -> "GaussianMixturePrior":
        """Read a file written by ``save``; anything else (or an edited file) raises PriorError."""
        return _load_gmm(Path(path), latent_dim)


def _digest(payload: dict) -> str:
    """sha256 over the mixture tensors and the provenance (everything but the digest itself)."""
    h = hashlib.sha256()
    for key in ("format", "format_version", "covariance", "eps"):
        h.update(repr((key, payload[key])).encode())
    for key in ("weights", "means", "covariances"):
        h.update(payload[key].detach().cpu().contiguous().numpy().tobytes())
    h.update(repr(sorted(payload["provenance"].items())).encode())
    return h.hexdigest()


def _load_gmm(path: Path, latent_dim: Optional[int]) -> GaussianMixturePrior:
    what = (f"{path} is not a GMM prior written by spikingjelly_vae.prior (fit one with "
            "fit_gmm_prior(...).save(path))")
    if not path.is_file():
        raise PriorError(f"GMM prior file {path} does not exist; fit one with fit_gmm_prior(...).save(path)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        from .schemas import load_error_line
        raise PriorError(f"{what}: unreadable ({load_error_line(err)})") from None
    from .schemas import GMMPriorFile, check
    try:
        check(GMMPriorFile, payload, path, "refit it with `sjvae prior fit`")
    except ValueError as err:
        raise PriorError(str(err)) from None
    if payload["format_version"] != FORMAT_VERSION:
        raise PriorError(f"{what}: format version {payload['format_version']} (this package reads "
                         f"{FORMAT_VERSION})")
    if not all(isinstance(payload[k], torch.Tensor) for k in ("weights", "means", "covariances")) \
            or not isinstance(payload["provenance"], dict) or payload["digest"] != _digest(payload):
        raise PriorError(f"{what}: its contents do not match its digest (edited or corrupted); refit it")
    prior = GaussianMixturePrior(payload["weights"], payload["means"], payload["covariances"],
                                 covariance=payload["covariance"], eps=payload["eps"],
                                 provenance=payload["provenance"])
    if latent_dim is not None and prior.latent_dim != latent_dim:
        raise PriorError(f"{path} was fitted to {prior.latent_dim} latent rates, the model has {latent_dim}")
    return prior


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
    _check_esvae(model)
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


def fit_rate_mixture(rates: torch.Tensor, *, components: int = 10, covariance: str = "full", seed: int = 0,
                     eps: float = 1e-4, checkpoint=None, reg_covar: float = 1e-4, max_iter: int = 200,
                     tol: float = 1e-4, init: str = "kmeans++") -> GaussianMixturePrior:
    """GMM prior of posterior rates [N, L]: EM on logit(clamp(rates, eps, 1 - eps)) on the rates' device.

    ``checkpoint`` (the model's file) goes into the provenance with its sha256."""
    if not 0 < eps < 0.5:
        raise PriorError(f"eps must lie in (0, 0.5), got {eps}")
    y = torch.logit(rates.to(torch.float64).clamp(eps, 1 - eps))
    t0 = time.perf_counter()
    fit = fit_gmm(y, components=components, covariance=covariance, seed=seed, max_iter=max_iter, tol=tol,
                  reg_covar=reg_covar, init=init)
    fit_s = time.perf_counter() - t0
    prov = {"checkpoint": str(Path(checkpoint).resolve()) if checkpoint else "",
            "checkpoint_sha256": sha256_file(checkpoint) if checkpoint else "",
            "components": int(components), "covariance": covariance, "images": int(rates.shape[0]),
            "seed": int(seed), "init": init, "reg_covar": float(reg_covar), "tol": float(tol),
            "iterations": int(fit.iterations), "converged": bool(fit.converged),
            "log_likelihood": float(fit.log_likelihood), "fit_seconds": float(fit_s),
            "package_version": __version__, "torch_version": str(torch.__version__)}
    return GaussianMixturePrior(fit.weights.cpu(), fit.means.cpu(), fit.covariances.cpu(),
                                covariance=covariance, eps=eps, provenance=prov)


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


def default_prior_path(checkpoint, components: int, covariance: str) -> Path:
    """Where a GMM prior of ``checkpoint`` is saved by default: ``<stem>.gmm-k<K>-<cov>.pt`` beside it."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}.gmm-k{components}-{covariance}.pt")


def load_prior(spec: str, model, *, checkpoint=None) -> RatePrior:
    """``"learned"`` -> LearnedPrior(model); ``"gmm:PATH"`` -> the saved GaussianMixturePrior.

    With ``checkpoint`` given, a GMM fitted to another checkpoint (sha256 differs) is refused."""
    _check_esvae(model)
    if spec == "learned":
        return LearnedPrior(model)
    if not isinstance(spec, str) or not spec.startswith("gmm:") or len(spec) == 4:
        raise PriorError(f"unknown prior {spec!r}; use 'learned' or 'gmm:PATH' (a file from fit_gmm_prior)")
    prior = GaussianMixturePrior.load(spec[4:], latent_dim=model.latent_dim)
    if checkpoint is not None:
        fitted = prior.provenance.get("checkpoint_sha256")
        if fitted != sha256_file(checkpoint):
            raise PriorError(f"{spec[4:]} was fitted to checkpoint {prior.provenance.get('checkpoint')!r} "
                             f"(sha256 {fitted or 'not recorded'}), not to {checkpoint}; refit it")
    return prior


@torch.no_grad()
def sample_images(model, n: int, *, prior: RatePrior, generator: Optional[torch.Generator] = None
                  ) -> torch.Tensor:
    """n images: prior rates -> model.latent (Poisson spikes) -> spiking decoder (``model.sample`` with
    the rate source swapped; with LearnedPrior it is ``model.sample`` draw for draw)."""
    _check_esvae(model)
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
