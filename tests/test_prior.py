"""Rate priors (spikingjelly_vae/prior/): the GMM's EM against known mixtures, sampling, files, the ESVAE
wiring."""
import math

import pytest
import torch

from spikingjelly_vae.models import ESVAE, FSVAE
from spikingjelly_vae.prior import (GaussianMixturePrior, LearnedPrior, PriorError, default_prior_path,
                                    fit_gmm, fit_gmm_prior, load_prior, posterior_rates, prior_batches,
                                    sample_images)

MEANS = torch.tensor([[-4.0, 0.0], [3.0, 3.0], [2.0, -4.0]], dtype=torch.float64)
FULL = torch.tensor([[[1.0, 0.6], [0.6, 0.8]], [[0.5, -0.2], [-0.2, 0.4]], [[0.3, 0.0], [0.0, 1.2]]],
                    dtype=torch.float64)
WEIGHTS = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
N = 6000


def _mixture_data(covs, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = torch.multinomial(WEIGHTS, N, replacement=True, generator=g)
    e = torch.randn(N, 2, generator=g, dtype=torch.float64)
    return MEANS[k] + (torch.linalg.cholesky(covs)[k] @ e.unsqueeze(-1)).squeeze(-1)


def _match(fit):
    """Order fitted components like MEANS (nearest fitted mean to each true mean)."""
    order = torch.cdist(MEANS, fit.means).argmin(1)
    assert len(set(order.tolist())) == 3
    return order


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_em_recovers_known_mixture(covariance):
    # Tolerances: with >= 1,200 points per component the sampling error of a mean is < 0.03 (std) and of a
    # covariance entry < 0.04, so 0.1 / 0.12 / 0.03 are 3+ standard errors; a wrong EM misses by far more.
    covs = FULL if covariance == "full" else torch.diag_embed(torch.diagonal(FULL, dim1=1, dim2=2))
    fit = fit_gmm(_mixture_data(covs), components=3, covariance=covariance, seed=1, reg_covar=1e-6)
    assert fit.converged
    o = _match(fit)
    assert torch.allclose(fit.means[o], MEANS, atol=0.1)
    got = fit.covariances[o] if covariance == "full" else torch.diag_embed(fit.covariances[o])
    assert torch.allclose(got, covs, atol=0.12)
    assert torch.allclose(fit.weights[o], WEIGHTS, atol=0.03)
    # log-likelihood of the fit is at least that of the true parameters on the same data (EM maximises it)
    true_prior = GaussianMixturePrior(WEIGHTS, MEANS, covs if covariance == "full" else torch.diagonal(
        covs, dim1=1, dim2=2), covariance=covariance, eps=0.01)
    assert fit.log_likelihood >= float(true_prior.log_prob_logits(_mixture_data(covs)).mean()) - 1e-9


def test_log_prob_matches_torch_distributions():
    x = _mixture_data(FULL)[:50]
    prior = GaussianMixturePrior(WEIGHTS, MEANS, FULL, covariance="full", eps=0.01)
    mix = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(WEIGHTS),
                                                torch.distributions.MultivariateNormal(MEANS, FULL))
    assert torch.allclose(prior.log_prob_logits(x), mix.log_prob(x), atol=1e-10)


def test_sample_matches_mixture_moments():
    prior = GaussianMixturePrior(WEIGHTS, MEANS, FULL, covariance="full", eps=0.01)
    y = prior.sample_logits(40000, generator=torch.Generator().manual_seed(0))
    mean = (WEIGHTS[:, None] * MEANS).sum(0)
    second = (WEIGHTS[:, None, None] * (FULL + MEANS[:, :, None] * MEANS[:, None, :])).sum(0)
    assert torch.allclose(y.mean(0), mean, atol=0.05)
    assert torch.allclose(torch.cov(y.T), second - mean[:, None] * mean[None], atol=0.15)


@pytest.mark.filterwarnings("ignore:Best performing initialization did not converge")  # max_iter=1 on purpose
def test_em_is_deterministic_and_seed_matters():
    x = _mixture_data(FULL)
    a, b = (fit_gmm(x, components=4, seed=3) for _ in range(2))
    c = fit_gmm(x, components=4, seed=4, max_iter=1)
    assert torch.equal(a.means, b.means) and torch.equal(a.covariances, b.covariances)
    assert not torch.equal(fit_gmm(x, components=4, seed=3, max_iter=1).means, c.means)


def test_fit_gmm_rejects_bad_arguments():
    x = torch.randn(10, 2)
    with pytest.raises(PriorError, match="covariance"):
        fit_gmm(x, components=2, covariance="spherical")
    with pytest.raises(PriorError, match="N >= components"):
        fit_gmm(x, components=11)
    with pytest.raises(PriorError, match="init"):
        fit_gmm(x, components=2, init="bogus")


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_fit_gmm_prior_rates_in_open_unit_interval(untrained_esvae, covariance, tmp_path):
    model, images = untrained_esvae
    ckpt = tmp_path / "model.pt"
    torch.save({"model": model.state_dict()}, ckpt)
    prior = fit_gmm_prior(model, images, components=3, covariance=covariance, max_images=40, seed=0,
                          checkpoint=ckpt)
    r = prior.sample_rates(2000, generator=torch.Generator().manual_seed(0))
    assert r.shape == (2000, 8) and r.dtype == torch.float32
    assert (r > 0).all() and (r < 1).all()
    far = GaussianMixturePrior(torch.ones(1), torch.zeros(1, 2), torch.full((1, 2), 400.0), covariance="diag",
                               eps=1e-4)  # std 20 in logit space: float32 sigmoid would give exact 0 and 1
    r = far.sample_rates(4000, generator=torch.Generator().manual_seed(0))
    assert r.min() == torch.tensor(1e-4, dtype=torch.float32) and r.max() == torch.tensor(1 - 1e-4).float()
    assert (r > 0).all() and (r < 1).all()
    p = prior.provenance
    assert p["images"] == 40 and p["components"] == 3 and p["covariance"] == covariance
    assert len(p["checkpoint_sha256"]) == 64 and p["fit_seconds"] >= 0 and math.isfinite(p["log_likelihood"])
    assert prior.eps == 1e-4 and prior.name == f"gmm-k3-{covariance}"


def test_posterior_rates_are_the_encoder_rates(untrained_esvae):
    model, images = untrained_esvae
    with torch.no_grad():
        want = model.encode(images[:10])[1]
    got = posterior_rates(model, [(images[:6], None), (images[6:20], None)], max_images=10, batch_size=4)
    assert torch.equal(got.float(), want)
    ds = torch.utils.data.TensorDataset(images[:10], torch.zeros(10))
    assert torch.equal(posterior_rates(model, ds, batch_size=3).float(), want)


def test_same_seed_same_samples(untrained_esvae):
    model, images = untrained_esvae
    prior = fit_gmm_prior(model, images, components=2, seed=0)
    again = fit_gmm_prior(model, images, components=2, seed=0)
    assert torch.equal(prior.means, again.means)
    a = sample_images(model, 5, prior=prior, generator=torch.Generator().manual_seed(7))
    b = sample_images(model, 5, prior=again, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    ra = prior.sample_rates(5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(ra, again.sample_rates(5, generator=torch.Generator().manual_seed(7)))
    assert not torch.equal(ra, prior.sample_rates(5, generator=torch.Generator().manual_seed(8)))
    assert a.shape == (5, 1, 32, 32)


def test_learned_prior_equals_model(untrained_esvae):
    model, _ = untrained_esvae
    learned = LearnedPrior(model)
    assert torch.equal(learned.sample_rates(6, generator=torch.Generator().manual_seed(2)),
                       model.prior_rate(6, torch.Generator().manual_seed(2)))
    assert torch.equal(sample_images(model, 6, prior=learned, generator=torch.Generator().manual_seed(3)),
                       model.sample(6, torch.Generator().manual_seed(3)))
    batches = list(prior_batches(model, 7, 4, prior=learned, generator=torch.Generator().manual_seed(4)))
    assert [b.shape[0] for b in batches] == [4, 4]


def test_file_round_trip_and_load_prior(untrained_esvae, tmp_path):
    model, images = untrained_esvae
    ckpt = tmp_path / "m.pt"
    torch.save({"model": model.state_dict()}, ckpt)
    prior = fit_gmm_prior(model, images, components=2, covariance="diag", seed=0, checkpoint=ckpt)
    path = prior.save(default_prior_path(ckpt, 2, "diag"))
    assert path == tmp_path / "m.gmm-k2-diag.pt"
    loaded = load_prior(f"gmm:{path}", model, checkpoint=ckpt)
    assert isinstance(loaded, GaussianMixturePrior) and loaded.provenance == prior.provenance
    for name in ("weights", "means", "covariances"):
        assert torch.equal(getattr(loaded, name), getattr(prior, name))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(loaded.sample_rates(9, generator=g1), prior.sample_rates(9, generator=g2))
    assert isinstance(load_prior("learned", model), LearnedPrior)
    other = tmp_path / "other.pt"
    other.write_bytes(b"not the same checkpoint")
    with pytest.raises(PriorError, match="refit"):
        load_prior(f"gmm:{path}", model, checkpoint=other)
    with pytest.raises(PriorError, match="latent rates"):
        load_prior(f"gmm:{path}", ESVAE(1, 6, T=4))


def test_tampered_and_foreign_files_refused(untrained_esvae, tmp_path):
    model, images = untrained_esvae
    prior = fit_gmm_prior(model, images, components=2, covariance="full", seed=0)
    path = prior.save(tmp_path / "p.pt")
    payload = torch.load(path, weights_only=True)
    payload["means"][0, 0] += 1.0
    torch.save(payload, tmp_path / "edited.pt")
    payload = torch.load(path, weights_only=True)
    payload["provenance"]["images"] = 60000
    torch.save(payload, tmp_path / "edited_prov.pt")
    torch.save({"model": model.state_dict(), "config": {}}, tmp_path / "checkpoint.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    for name in ("edited.pt", "edited_prov.pt", "checkpoint.pt", "junk.pt", "missing.pt"):
        with pytest.raises(PriorError, match="GMM prior|digest|does not exist"):
            load_prior(f"gmm:{tmp_path / name}", model)
    with pytest.raises(PriorError, match=r"is a folder, not a GMM prior file; fit one with `sjvae prior fit`"):
        load_prior(f"gmm:{tmp_path}", model)


def test_refuses_bad_specs_and_non_esvae(untrained_esvae):
    model, _ = untrained_esvae
    for spec in ("gmm:", "gauss", "GMM:x"):
        with pytest.raises(PriorError, match="learned"):
            load_prior(spec, model)
    fsvae = FSVAE(1, 8, T=4)
    with pytest.raises(PriorError, match="ESVAE only"):
        load_prior("learned", fsvae)
    with pytest.raises(PriorError, match="ESVAE only"):
        fit_gmm_prior(fsvae, torch.zeros(2, 1, 32, 32), components=1)
    with pytest.raises(PriorError, match="ESVAE only"):
        sample_images(fsvae, 2, prior=LearnedPrior(model))


def test_bad_mixtures_refused():
    with pytest.raises(PriorError, match="sum to 1"):
        GaussianMixturePrior(torch.tensor([0.5, 0.6]), torch.zeros(2, 2), torch.ones(2, 2), covariance="diag",
                             eps=0.1)
    with pytest.raises(PriorError, match="positive definite"):
        GaussianMixturePrior(torch.ones(1), torch.zeros(1, 2), -torch.eye(2)[None], covariance="full",
                             eps=0.1)
    with pytest.raises(PriorError, match="inconsistent"):
        GaussianMixturePrior(torch.ones(1), torch.zeros(1, 2), torch.ones(1, 3), covariance="diag", eps=0.1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fit_and_sample_on_cuda(untrained_esvae):
    x = _mixture_data(FULL)
    cpu = fit_gmm(x, components=3, seed=1)
    gpu = fit_gmm(x.cuda(), components=3, seed=1)
    assert torch.allclose(gpu.means.cpu(), cpu.means, atol=1e-6)
    model, images = untrained_esvae
    model = ESVAE(1, 8, T=4).eval().cuda()
    prior = fit_gmm_prior(model, images, components=2, covariance="diag", seed=0)
    gen = torch.Generator("cuda").manual_seed(0)
    out = sample_images(model, 4, prior=prior, generator=gen)
    assert out.is_cuda and out.shape == (4, 1, 32, 32)
    learned = LearnedPrior(model)
    gen = torch.Generator("cuda").manual_seed(1)
    assert torch.equal(sample_images(model, 4, prior=learned, generator=gen),
                       model.sample(4, torch.Generator("cuda").manual_seed(1)))
