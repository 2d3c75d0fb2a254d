"""Frechet distance between two Gaussians fitted to feature sets (shared by FID and FAD).

    d^2 = ||mu_1 - mu_2||^2 + Tr(S_1) + Tr(S_2) - 2 Tr((S_1 S_2)^(1/2))

The matrix square root is scipy's `sqrtm`; when it is not finite (a near-singular product) both
covariances get eps on the diagonal and it is taken again (the usual TTUR / clean-fid fallback);
a small imaginary part from rounding is dropped, a large one is an error.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg

__all__ = ["gaussian_stats", "frechet_distance"]


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """(mean, unbiased covariance) of features [N, D] as float64 (np.cov, rows are samples)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need features of shape [N >= 2, D], got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _sqrtm(a: np.ndarray) -> np.ndarray:
    """scipy sqrtm; its singular-matrix warning is handled by the caller's eps fallback."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        return linalg.sqrtm(a)


def frechet_distance(mu1, sigma1, mu2, sigma2, *, eps: float = 1e-6) -> float:
    """Squared Frechet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"mismatched statistics: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {s1.shape} vs {s2.shape}")
    covmean = _sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = _sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm gave an imaginary part of {np.abs(covmean.imag).max():.3g}")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))
