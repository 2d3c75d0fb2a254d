"""ANN VAE baseline: KL term, reparameterisation, architecture, KL weight hook, shapes, optimisation."""
import math

import pytest
import torch
import torch.nn.functional as F

from spikingjelly_vae.checkpoint import load_model, save_checkpoint
from spikingjelly_vae.data import dataset_info
from spikingjelly_vae.models import ANNVAE, ANNVAELarge, build_model
from spikingjelly_vae.models.ann_vae import gaussian_kld


def test_kl_term_matches_closed_form_per_element():
    """KL(N(mu, s^2) || N(0, 1)) = log(1/s) + (s^2 + mu^2)/2 - 1/2, summed over L, averaged over N."""
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    expected = 0.0
    for n in range(5):
        for l in range(7):
            s = math.exp(0.5 * logvar[n, l].item())
            expected += math.log(1 / s) + (s * s + mu[n, l].item() ** 2) / 2 - 0.5
    assert gaussian_kld(mu, logvar).item() == pytest.approx(expected / 5, rel=1e-5)
    # and against torch.distributions
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    torch.testing.assert_close(gaussian_kld(mu, logvar), torch.distributions.kl_divergence(q, p).sum(1).mean())
    # gradients: d/dmu = mu / N, d/dlogvar = (exp(logvar) - 1) / (2N)
    mu.requires_grad_(), logvar.requires_grad_()
    gaussian_kld(mu, logvar).backward()
    torch.testing.assert_close(mu.grad, mu.detach() / 5)
    torch.testing.assert_close(logvar.grad, (logvar.detach().exp() - 1) / 10)


def test_loss_and_kl_weight_from_train_batches(tiny_model, random_images):
    model = tiny_model("ann-vae", latent_dim=16)
    x = random_images(4)
    out = model(x, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="set_num_train_batches"):
        model.loss(x, out)
    model.set_num_train_batches(240)  # MNIST: 60000 / 250
    terms = model.loss(x, out)
    recon, mu, logvar = out
    torch.testing.assert_close(terms["recon"], F.mse_loss(recon, x))
    torch.testing.assert_close(terms["kld"], gaussian_kld(mu, logvar))
    torch.testing.assert_close(terms["loss"], terms["recon"] + terms["kld"] / 240)
    assert model.config["kld_weight"] == pytest.approx(1 / 240)
    fixed = tiny_model("ann-vae", latent_dim=16, kld_weight=0.5)
    fixed.set_num_train_batches(10)  # an explicit weight is kept
    assert fixed.kld_weight == 0.5
    with pytest.raises(ValueError):
        ANNVAE(kld_weight=-1.0)


def test_reparameterisation_uses_generator(tiny_model, random_images):
    model = tiny_model("ann-vae")
    x = random_images(3)
    recon, mu, logvar = model(x, generator=torch.Generator().manual_seed(4))
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(recon, model.decode(mu + torch.exp(0.5 * logvar) * eps))
    s1 = model.sample(2, generator=torch.Generator().manual_seed(1))
    z = torch.randn(2, 8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(s1, model.decode(z))


def test_architecture_matches_reference():
    """Conv k3 s2 p1 + BN + LeakyReLU(0.01) stages, fc_mu / fc_var from C*2*2, decoder mirror, tanh."""
    model = ANNVAE(3, 128)
    convs = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 256]
    assert all(c.stride == (2, 2) and c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    leaky = [m for m in model.modules() if isinstance(m, torch.nn.LeakyReLU)]
    assert len(leaky) == 8 and all(m.negative_slope == 0.01 for m in leaky)
    assert model.fc_mu.in_features == 1024 and model.decoder_input.out_features == 1024
    expected = sum(p.numel() for p in model.parameters())
    # reference layer list: encoder convs+BN, two heads, decoder input, 3 ConvT+BN, final ConvT+BN, to_image
    enc = sum(9 * a * b + b + 2 * b for a, b in [(3, 32), (32, 64), (64, 128), (128, 256)])
    heads = 2 * (1024 * 128 + 128) + 128 * 1024 + 1024
    dec = sum(9 * a * b + b + 2 * b for a, b in [(256, 128), (128, 64), (64, 32), (32, 32)]) + 9 * 32 * 3 + 3
    assert expected == enc + heads + dec
    large = ANNVAELarge(latent_dim=8)
    assert large.fc_mu.in_features == 2048 and large.config["image_size"] == 64


@pytest.mark.parametrize("dataset", ["mnist", "fashion", "cifar10", "celeba"])
def test_shapes_all_datasets(dataset, tiny_model):
    info = dataset_info(dataset)
    c, s = info["in_channels"], info["image_size"]
    model = tiny_model("ann-vae", c, s)  # build_model(dict(model="ann-vae", ..., latent_dim=8, hidden=tiny))
    x = torch.rand(2, c, s, s) * 2 - 1
    recon, mu, logvar = model(x)
    assert recon.shape == x.shape and mu.shape == logvar.shape == (2, 8)
    assert [t.shape for t in model.encode(x)] == [(2, 8), (2, 8)]
    assert model.sample(3).shape == (3, c, s, s) and model.decode(mu).shape == x.shape


def test_not_spiking_and_param_groups(tiny_model):
    from spikingjelly_vae.models import SpikingVAE
    model = tiny_model("ann-vae")
    assert not isinstance(model, SpikingVAE) and isinstance(tiny_model("esvae"), SpikingVAE)
    groups = model.param_groups(1e-3)
    assert len(groups) == 1 and groups[0]["lr"] == 1e-3
    assert len(groups[0]["params"]) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="shape"):
        model(torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match="latent"):
        model.decode(torch.zeros(4, 2, 8))


def test_optimisation_lowers_loss(tiny_model, random_images, adamw_steps):
    model = tiny_model("ann-vae")
    model.set_num_train_batches(10)
    losses = adamw_steps(model, random_images(8), 15, 1e-3)
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3


def test_checkpoint_round_trip_keeps_kl_weight(tmp_path, tiny_model):
    model = tiny_model("ann-vae")
    model.set_num_train_batches(200)
    save_checkpoint(tmp_path / "a.pt", {"model": model.state_dict(), "config": model.config, "epoch": 1})
    loaded, _ = load_model(tmp_path / "a.pt", expected_model="ann-vae")
    assert loaded.kld_weight == pytest.approx(1 / 200)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])


SHARED_DATA = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.skipif(not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason="needs ../shared/data/MNIST")
def test_train_loop_sets_kl_weight_from_train_batches(tmp_path):
    """train.fit calls set_num_train_batches(len(train_loader)); the checkpoint keeps w = 1/4 here."""
    from spikingjelly_vae.checkpoint import load_checkpoint
    from spikingjelly_vae.train import TrainConfig, fit
    res = fit(TrainConfig(dataset="mnist", model="ann-vae", data_root=str(SHARED_DATA), out=str(tmp_path / "run"),
                          batch_size=16, train_subset=64, test_subset=16, epochs=1, latent_dim=4, grid_images=4,
                          model_kwargs={"hidden": [4, 4, 8, 8]},
                          device="cpu", progress=False, tensorboard=False))
    assert res["model_config"]["kld_weight"] == pytest.approx(1 / 4)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["config"]["kld_weight"] == pytest.approx(1 / 4)
    assert res["metrics"]["test_kld"] > 0
