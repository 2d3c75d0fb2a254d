"""The diffusion rate prior (spikingjelly_vae/prior/diffusion.py): it learns a known 2-d distribution,
draws rates in (0, 1) reproducibly, and its files load back equal or are refused with one line."""
import math

import pytest
import torch

from spikingjelly_vae.models import ESVAE
from spikingjelly_vae.prior import (DiffusionPrior, PriorError, default_prior_path, fit_diffusion,
                                    fit_diffusion_prior, fit_gmm_prior, load_prior, sample_images)


def ring(n, seed):
    """Rates on a circle of radius 0.3 around (0.5, 0.5), radial noise 0.02."""
    g = torch.Generator().manual_seed(seed)
    angle = torch.rand(n, generator=g) * 2 * math.pi
    radius = 0.3 + 0.02 * torch.randn(n, generator=g)
    return torch.stack([0.5 + radius * angle.cos(), 0.5 + radius * angle.sin()], 1)


def sliced_wasserstein(a, b, directions=64):
    """Mean 1-d Wasserstein-1 distance over random projections (equal sample sizes)."""
    d = torch.randn(a.shape[1], directions, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    d = d / d.norm(dim=0)
    return float(((a.double() @ d).sort(0)[0] - (b.double() @ d).sort(0)[0]).abs().mean())


@pytest.mark.parametrize("space", ["rate", "logit"])
def test_learns_a_ring(space, one_thread):
    # Measured (1 CPU thread, default DDIM sampler): the distance between two independent 2,000-point rings
    # is 0.009; these fits land at 0.007 (rate) / 0.015 (logit), radial error 0.012 / 0.021; the untrained
    # denoiser (epochs=0) at 0.27-0.28, and one trained for 60 epochs at 0.035 / 0.061. 0.025 lies between.
    data, fresh = ring(2000, 0), ring(2000, 5)
    opts = dict(space=space, steps=50, width=64, depth=2, seed=0, eps=1e-3)
    trained = fit_diffusion(data, epochs=200, **opts)
    samples = trained.sample_rates(2000, generator=torch.Generator().manual_seed(1))
    assert sliced_wasserstein(samples, fresh) < 0.025
    radial = ((samples - 0.5).norm(dim=1) - 0.3).abs().mean()
    assert radial < 0.03  # |N(0, 0.02)| has mean 0.016
    untrained = fit_diffusion(data, epochs=0, **opts).sample_rates(2000, generator=torch.Generator().manual_seed(1))
    assert sliced_wasserstein(untrained, fresh) > 0.025
    assert trained.provenance["epochs"] == 200 and math.isfinite(trained.provenance["final_loss"])


def _quick(model, images, **kw):
    opts = dict(epochs=2, width=16, depth=1, steps=10, seed=0)
    return fit_diffusion_prior(model, images, **{**opts, **kw})


@pytest.mark.parametrize("space", ["rate", "logit"])
def test_samples_are_rates_in_open_unit_interval(untrained_esvae, space):
    model, images = untrained_esvae
    prior = _quick(model, images, space=space)
    r = prior.sample_rates(500, generator=torch.Generator().manual_seed(0))
    assert r.shape == (500, 8) and r.dtype == torch.float32
    assert (r > 0).all() and (r < 1).all() and r.min() >= 1e-4 and r.max() <= 1 - 1e-4
    assert prior.name == f"diffusion-{space}" and prior.provenance["images"] == 48
    out = sample_images(model, 5, prior=prior, generator=torch.Generator().manual_seed(0))
    assert out.shape == (5, 1, 32, 32)
    ddim = prior.sample_x0(50, generator=torch.Generator().manual_seed(0), sample_steps=5, eta=0.0)
    assert ddim.shape == (50, 8) and ddim.abs().max() <= 1
    with pytest.raises(PriorError, match="sample_steps"):
        prior.sample_x0(2, sample_steps=11)


def test_same_seed_same_samples(untrained_esvae):
    model, images = untrained_esvae
    a, b, c = _quick(model, images), _quick(model, images), _quick(model, images, seed=1)
    sa, sb = a.net.state_dict(), b.net.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["inp.weight"], c.net.state_dict()["inp.weight"])
    draw = lambda p, s: p.sample_rates(7, generator=torch.Generator().manual_seed(s))  # noqa: E731
    assert torch.equal(draw(a, 3), draw(b, 3)) and not torch.equal(draw(a, 3), draw(a, 4))
    x, y = (sample_images(model, 4, prior=p, generator=torch.Generator().manual_seed(5)) for p in (a, b))
    assert torch.equal(x, y)


def test_file_round_trip_and_load_prior(untrained_esvae, tmp_path):
    model, images = untrained_esvae
    ckpt = tmp_path / "m.pt"
    torch.save({"model": model.state_dict()}, ckpt)
    prior = _quick(model, images, checkpoint=ckpt)
    path = prior.save(default_prior_path(ckpt, kind="diffusion", name=prior.name))
    assert path == tmp_path / "m.diffusion-logit.pt"
    loaded = load_prior(f"diffusion:{path}", model, checkpoint=ckpt)
    assert isinstance(loaded, DiffusionPrior) and loaded.config == prior.config
    assert loaded.provenance == prior.provenance and len(loaded.provenance["checkpoint_sha256"]) == 64
    want = prior.net.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in loaded.net.state_dict().items())
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(loaded.sample_rates(9, generator=g1), prior.sample_rates(9, generator=g2))
    other = tmp_path / "other.pt"
    other.write_bytes(b"not the same checkpoint")
    with pytest.raises(PriorError, match="refit"):
        load_prior(f"diffusion:{path}", model, checkpoint=other)
    with pytest.raises(PriorError, match="latent rates"):
        load_prior(f"diffusion:{path}", ESVAE(1, 6, T=4))


def _edited(path, out, edit):
    payload = torch.load(path, weights_only=True)
    edit(payload)
    torch.save(payload, out)
    return out


def test_tampered_and_foreign_files_refused(untrained_esvae, tmp_path):
    model, images = untrained_esvae
    path = _quick(model, images).save(tmp_path / "d.pt")
    gmm = fit_gmm_prior(model, images, components=2).save(tmp_path / "g.pt")
    bad = [_edited(path, tmp_path / "w.pt", lambda p: p["state"]["inp.weight"].add_(1e-3)),
           _edited(path, tmp_path / "prov.pt", lambda p: p["provenance"].update(images=60000)),
           _edited(path, tmp_path / "cfg.pt", lambda p: p["config"].update(width=32)),
           _edited(path, tmp_path / "ver.pt", lambda p: p.update(format_version=2)),
           gmm, tmp_path / "missing.pt", tmp_path / "junk.pt"]
    torch.save({"model": model.state_dict(), "config": {}}, tmp_path / "checkpoint.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    for file in bad + [tmp_path / "checkpoint.pt"]:
        with pytest.raises(PriorError, match="diffusion prior") as err:
            load_prior(f"diffusion:{file}", model)
        assert "\n" not in str(err.value)
    with pytest.raises(PriorError, match="GMM prior"):
        load_prior(f"gmm:{path}", model)


def test_bad_arguments_refused(untrained_esvae):
    model, images = untrained_esvae
    with pytest.raises(PriorError, match="space"):
        _quick(model, images, space="probit")
    with pytest.raises(PriorError, match="rates \\[N, L\\]"):
        fit_diffusion(torch.rand(5))
    for spec in ("diffusion:", "diffusion", "ddpm:x"):
        with pytest.raises(PriorError, match="diffusion:PATH"):
            load_prior(spec, model)


def test_config_asking_for_a_huge_denoiser_is_refused_before_building():
    """A file's config (its digest can be recomputed by anyone) must not make the loader allocate terabytes."""
    config = dict(latent_dim=32, space="logit", eps=1e-4, steps=100, width=10 ** 6, depth=3, sample_steps=50,
                  eta=0.0)
    with pytest.raises(PriorError, match="larger than this package builds"):
        DiffusionPrior(config)
    assert DiffusionPrior({**config, "width": 16}).config["width"] == 16
