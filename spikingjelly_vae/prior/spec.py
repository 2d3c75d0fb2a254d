"""Choosing a prior by name: ``learned``, ``gmm:PATH`` or ``diffusion:PATH``, and default file names."""
from __future__ import annotations

from pathlib import Path

from ..atomic import sha256_file
from .base import LearnedPrior, PriorError, RatePrior, check_esvae
from .diffusion import DiffusionPrior
from .gmm import GaussianMixturePrior

__all__ = ["KINDS", "load_prior", "default_prior_path"]

KINDS = {"gmm": GaussianMixturePrior, "diffusion": DiffusionPrior}


def default_prior_path(checkpoint, components: int = 10, covariance: str = "full", *,
                       kind: str = "gmm", name: str = "") -> Path:
    """Where a prior of ``checkpoint`` is saved by default, beside it: ``<stem>.gmm-k<K>-<cov>.pt`` for a
    GMM, ``<stem>.<name>.pt`` for another kind (``name``: the prior's name, e.g. diffusion-logit)."""
    checkpoint = Path(checkpoint)
    suffix = f"gmm-k{components}-{covariance}" if kind == "gmm" else name or kind
    return checkpoint.with_name(f"{checkpoint.stem}.{suffix}.pt")


def load_prior(spec: str, model, *, checkpoint=None) -> RatePrior:
    """``"learned"`` -> LearnedPrior(model); ``"gmm:PATH"`` / ``"diffusion:PATH"`` -> the saved prior.

    With ``checkpoint`` given, a prior fitted to another checkpoint (sha256 differs) is refused."""
    check_esvae(model)
    if spec == "learned":
        return LearnedPrior(model)
    kind, _, path = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if kind not in KINDS or not path:
        raise PriorError(f"unknown prior {spec!r}; use 'learned', 'gmm:PATH' or 'diffusion:PATH' "
                         "(a file from `sjvae prior fit`)")
    prior = KINDS[kind].load(path, latent_dim=model.latent_dim)
    if checkpoint is not None:
        fitted = prior.provenance.get("checkpoint_sha256")
        if fitted != sha256_file(checkpoint):
            raise PriorError(f"{path} was fitted to checkpoint {prior.provenance.get('checkpoint')!r} "
                             f"(sha256 {fitted or 'not recorded'}), not to {checkpoint}; refit it")
    return prior
