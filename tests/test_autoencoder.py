"""The FAD feature autoencoder: official key layout, a plain-functional forward, official checkpoints."""
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from spikingjelly_vae.models.autoencoder import AE, AELarge, build_feature_ae

SHARED = Path(os.environ.get("SJVAE_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
FAD_DIR = SHARED / "esvae_fad"
needs_fad = pytest.mark.skipif(not (FAD_DIR / "stat_checkpoints").is_dir(), reason="official FAD files not found")


def _official_keys(c, latent, dims):
    """Key -> shape of the official checkpoint, written from reference_spec.md section 7.4."""
    keys = {}
    for i, (a, b) in enumerate(zip([c] + dims[:-1], dims)):
        keys[f"encoder.{i}.0.weight"], keys[f"encoder.{i}.0.bias"] = (b, a, 3, 3), (b,)
        for n in ("weight", "bias", "running_mean", "running_var"):
            keys[f"encoder.{i}.1.{n}"] = (b,)
        keys[f"encoder.{i}.1.num_batches_tracked"] = ()
    keys["latent_layer.weight"], keys["latent_layer.bias"] = (latent, dims[-1] * 4), (latent,)
    keys["decoder_input.weight"], keys["decoder_input.bias"] = (dims[-1] * 4, latent), (dims[-1] * 4,)
    rev = dims[::-1]
    for i, (a, b) in enumerate(zip(rev[:-1], rev[1:])):
        keys[f"decoder.{i}.0.weight"], keys[f"decoder.{i}.0.bias"] = (a, b, 3, 3), (b,)
        for n in ("weight", "bias", "running_mean", "running_var"):
            keys[f"decoder.{i}.1.{n}"] = (b,)
        keys[f"decoder.{i}.1.num_batches_tracked"] = ()
    d = dims[0]
    keys["final_layer.0.weight"], keys["final_layer.0.bias"] = (d, d, 3, 3), (d,)
    for n in ("weight", "bias", "running_mean", "running_var"):
        keys[f"final_layer.1.{n}"] = (d,)
    keys["final_layer.1.num_batches_tracked"] = ()
    keys["final_layer.3.weight"], keys["final_layer.3.bias"] = (d, c, 3, 3), (c,)
    return keys


@pytest.mark.parametrize("cls,c,latent,dims", [(AE, 1, 64, [32, 64, 128, 256]), (AE, 3, 128, [32, 64, 128, 256]),
                                               (AELarge, 3, 128, [32, 64, 128, 256, 512])])
def test_state_dict_layout_is_the_official_one(cls, c, latent, dims):
    got = {k: tuple(v.shape) for k, v in cls(c, latent).state_dict().items()}
    assert got == _official_keys(c, latent, dims)


def _plain_encode(sd, x, n_stages, training):
    h = x
    for i in range(n_stages):
        h = F.conv2d(h, sd[f"encoder.{i}.0.weight"], sd[f"encoder.{i}.0.bias"], stride=2, padding=1)
        h = F.batch_norm(h, sd[f"encoder.{i}.1.running_mean"].clone(), sd[f"encoder.{i}.1.running_var"].clone(),
                         sd[f"encoder.{i}.1.weight"], sd[f"encoder.{i}.1.bias"], training=training, eps=1e-5)
        h = F.leaky_relu(h, 0.01)
    return F.linear(h.flatten(1), sd["latent_layer.weight"], sd["latent_layer.bias"])


def _plain_decode(sd, z, n_stages, top):
    h = F.linear(z, sd["decoder_input.weight"], sd["decoder_input.bias"]).view(-1, top, 2, 2)
    names = [f"decoder.{i}" for i in range(n_stages - 1)] + ["final_layer"]
    for name in names:
        h = F.conv_transpose2d(h, sd[f"{name}.0.weight"], sd[f"{name}.0.bias"], stride=2, padding=1,
                               output_padding=1)
        h = F.batch_norm(h, sd[f"{name}.1.running_mean"], sd[f"{name}.1.running_var"],
                         sd[f"{name}.1.weight"], sd[f"{name}.1.bias"], training=False, eps=1e-5)
        h = F.leaky_relu(h, 0.01)
    return torch.tanh(F.conv_transpose2d(h, sd["final_layer.3.weight"], sd["final_layer.3.bias"], padding=1))


@pytest.mark.parametrize("cls,c,size", [(AE, 1, 32), (AELarge, 3, 64)])
def test_forward_matches_plain_functional(cls, c, size):
    torch.manual_seed(0)
    ae = cls(c, 16)
    with torch.no_grad():  # non-trivial BN buffers so eval mode is really tested
        for m in ae.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    x = torch.rand(3, c, size, size) * 2 - 1
    sd = {k: v.detach().clone().requires_grad_(v.is_floating_point() and "running" not in k)
          for k, v in ae.state_dict().items()}
    n = len(cls.hidden_dims)
    ae.eval()
    recon, z = ae(x)
    z_ref = _plain_encode(sd, x, n, training=False)
    recon_ref = _plain_decode(sd, z_ref, n, cls.hidden_dims[-1])
    torch.testing.assert_close(z, z_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(recon, recon_ref, rtol=1e-5, atol=1e-5)
    assert recon.shape == x.shape and z.shape == (3, 16)
    # gradients of the MSE loss agree too
    ae.loss(x, (recon, z))["loss"].backward()
    F.mse_loss(recon_ref, x).backward()
    torch.testing.assert_close(ae.encoder[0][0].weight.grad, sd["encoder.0.0.weight"].grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ae.final_layer[3].weight.grad, sd["final_layer.3.weight"].grad, rtol=1e-4, atol=1e-6)
    # train mode: BN on batch statistics
    ae.train()
    torch.testing.assert_close(ae.encode(x), _plain_encode(sd, x, n, training=True), rtol=1e-5, atol=1e-5)


def test_wrong_image_size_raises():
    with pytest.raises(ValueError, match=r"\[N, 1, 32, 32\]"):
        AE(1, 64).encode(torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError):
        build_feature_ae(3, 128, 48)
    assert isinstance(build_feature_ae(3, 128, 64), AELarge)


@needs_fad
@pytest.mark.parametrize("name", ["mnist_64", "fashion_64"])
def test_official_checkpoints_load_unchanged(name):
    sd = torch.load(FAD_DIR / "stat_checkpoints" / f"{name}.pth", map_location="cpu", weights_only=True)
    ae = AE(1, 64)
    ae.load_state_dict(sd, strict=True)  # same keys, same shapes
    assert set(ae.state_dict()) == set(sd)
    ae.eval()
    recon, z = ae(torch.zeros(2, 1, 32, 32) - 1)  # a blank image reconstructs to (nearly) blank
    assert z.shape == (2, 64) and recon.mean().item() < -0.8
