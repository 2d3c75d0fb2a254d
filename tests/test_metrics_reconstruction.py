"""Reconstruction MSE: per-image mean over the set vs the reference's mean of batch means."""
import pytest
import torch
from torch.utils.data import TensorDataset

from spikingjelly_vae.metrics.reconstruction import reconstruction_mse


class NoisyIdentity(torch.nn.Module):
    """forward(x, generator)[0] = x + 0.1 * noise from the generator; records its mode."""

    def __init__(self):
        super().__init__()
        self.bn = torch.nn.BatchNorm1d(1)
        self.modes = []

    def forward(self, x, generator=None):
        self.modes.append(self.training)
        return (x + 0.1 * torch.randn(x.shape, generator=generator),)


def _data(n=10):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 4, 4, generator=g) * 2 - 1


def test_per_image_mean_and_batch_means_by_hand():
    x = _data(10)
    model = NoisyIdentity().train()
    r = reconstruction_mse(model, TensorDataset(x, torch.zeros(10)), batch_size=4,
                           generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    per_image = []
    for i in range(0, 10, 4):
        xb = x[i:i + 4]
        per_image.append(((0.1 * torch.randn(xb.shape, generator=g)) ** 2).flatten(1).mean(1).double())
    batch_means = [p.mean().item() for p in per_image]
    allp = torch.cat(per_image)
    assert r["mse"] == pytest.approx(allp.mean().item(), rel=1e-6)
    assert r["mse_batch_mean"] == pytest.approx(sum(batch_means) / 3, rel=1e-6)
    assert r["num_images"] == 10 and r["num_batches_reference"] == 3
    # the last batch of 2 weighs as much as a full batch in the reference's number
    assert r["mse"] != pytest.approx(r["mse_batch_mean"], rel=1e-9)
    assert model.modes == [False] * 3 and model.training  # eval during, restored after


def test_drop_last_reference_leaves_out_the_short_batch():
    x = _data(10)
    r = reconstruction_mse(NoisyIdentity(), TensorDataset(x, torch.zeros(10)), batch_size=4,
                           generator=torch.Generator().manual_seed(5), drop_last_reference=True)
    g = torch.Generator().manual_seed(5)
    means = [((0.1 * torch.randn(x[i:i + 4].shape, generator=g)) ** 2).mean().item() for i in range(0, 10, 4)]
    assert r["mse_batch_mean"] == pytest.approx(sum(means[:2]) / 2, rel=1e-6)
    assert r["num_images"] == 10  # the per-image mean still covers every image


def test_same_generator_seed_is_exact_and_num_limits():
    ds = TensorDataset(_data(10), torch.zeros(10))
    a = reconstruction_mse(NoisyIdentity(), ds, 3, torch.Generator().manual_seed(1))
    b = reconstruction_mse(NoisyIdentity(), ds, 3, torch.Generator().manual_seed(1))
    assert a == b
    assert reconstruction_mse(NoisyIdentity(), ds, 3, num=5)["num_images"] == 5


def test_esvae_runs_through_it():
    from spikingjelly_vae.models import build_model
    model = build_model(dict(model="esvae", in_channels=1, image_size=32, latent_dim=8, T=4))
    ds = TensorDataset(torch.rand(6, 1, 32, 32) * 2 - 1, torch.zeros(6))
    a = reconstruction_mse(model, ds, 4, torch.Generator().manual_seed(0))
    b = reconstruction_mse(model, ds, 4, torch.Generator().manual_seed(0))
    assert a["mse"] == b["mse"] and 0 <= a["mse"] <= 4
