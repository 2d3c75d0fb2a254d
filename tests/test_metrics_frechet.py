"""Frechet distance and Gaussian statistics against hand computations."""
import numpy as np
import pytest

from spikingjelly_vae.metrics.frechet import frechet_distance, gaussian_stats


def test_frechet_2d_diagonal_by_hand():
    # ||(0,0)-(1,2)||^2 = 5; Tr S1 + Tr S2 = 2 + 13; sqrt(S1 S2) = diag(2, 3) -> 2 * 5 = 10; d^2 = 10
    assert frechet_distance([0, 0], np.eye(2), [1, 2], np.diag([4.0, 9.0])) == pytest.approx(10.0, abs=1e-12)


def test_frechet_2d_rotated_covariance_by_hand():
    # S1 = R diag(1, 4) R^T, S2 = R diag(9, 16) R^T share eigenvectors: sqrt(S1 S2) has eigenvalues 3, 8.
    c, s = np.cos(0.3), np.sin(0.3)
    r = np.array([[c, -s], [s, c]])
    s1, s2 = r @ np.diag([1.0, 4.0]) @ r.T, r @ np.diag([9.0, 16.0]) @ r.T
    mu1, mu2 = np.array([0.5, -1.0]), np.array([2.0, 1.0])
    want = (1.5 ** 2 + 2.0 ** 2) + (1 + 4) + (9 + 16) - 2 * (3 + 8)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, abs=1e-10)


def test_frechet_1d_is_gaussian_w2():
    # 1-d: (m1 - m2)^2 + (s1 - s2)^2 with standard deviations s
    assert frechet_distance([1.0], [[4.0]], [3.0], [[0.25]]) == pytest.approx(4.0 + 1.5 ** 2)


def test_frechet_identical_is_zero_and_symmetric():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 5))
    mu, sig = gaussian_stats(a)
    assert abs(frechet_distance(mu, sig, mu, sig)) < 1e-8
    mu2, sig2 = gaussian_stats(rng.normal(size=(50, 5)) * 2 + 1)
    assert frechet_distance(mu, sig, mu2, sig2) == pytest.approx(frechet_distance(mu2, sig2, mu, sig), rel=1e-8)


def test_singular_covariances_use_the_fallback():
    # rank-1 covariances (fewer samples than dimensions): still a finite, non-negative number
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 6)), rng.normal(size=(2, 6)) + 3
    d = frechet_distance(*gaussian_stats(a), *gaussian_stats(b))
    assert np.isfinite(d) and d > 0


def test_gaussian_stats_matches_plain_formula():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(7, 3)).astype(np.float32)
    mu, sig = gaussian_stats(x)
    xd = x.astype(np.float64)
    c = xd - xd.mean(0)
    np.testing.assert_allclose(mu, xd.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sig, c.T @ c / (len(x) - 1), rtol=1e-12)
    assert mu.dtype == np.float64


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        frechet_distance([0, 0], np.eye(2), [0, 0, 0], np.eye(3))
    with pytest.raises(ValueError):
        gaussian_stats(np.zeros((1, 4)))
