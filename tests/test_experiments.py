"""Experiments on small tensors and toy models: perturbations, seeded draws, probe, rates, SOP counts."""
import copy
import math

import pytest
import torch
from torch import nn

from spikingjelly_vae.experiments import analysis, classify, common, energy, robustness
from spikingjelly_vae.layer import TemporalConv2d, TemporalConvTranspose2d, TemporalLinear
from spikingjelly_vae.neuron import PaperLIFNode


def random_spikes(shape, p=0.4, seed=0):
    return (torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < p).float()


# --- perturbations -------------------------------------------------------------------------------------

def test_time_shuffle_keeps_every_neurons_spike_count_and_values():
    z = random_spikes((16, 7, 9))
    s = robustness.time_shuffle(z, torch.Generator().manual_seed(1))
    assert torch.equal(s.sum(0), z.sum(0))  # exact count per (sample, neuron)
    assert torch.equal(s.sort(0).values, z.sort(0).values)  # a permutation of each train
    assert not torch.equal(s, z)


def test_time_shuffle_moves_a_lone_spike_uniformly_and_independently():
    T, n = 4, 4000
    z = torch.zeros(T, n, 2)
    z[0] = 1.0  # every train: one spike at t = 0
    s = robustness.time_shuffle(z, torch.Generator().manual_seed(2))
    pos = s.argmax(0)  # [n, 2] new position of the spike
    share = torch.bincount(pos[:, 0], minlength=T).float() / n
    assert torch.allclose(share, torch.full((T,), 1 / T), atol=0.03)
    # independent permutations: the two neurons of a sample do not move together
    assert (pos[:, 0] == pos[:, 1]).float().mean().item() == pytest.approx(1 / T, abs=0.03)


def test_bit_flip_levels_zero_and_one_and_rate():
    z = random_spikes((8, 50, 20))
    g = torch.Generator().manual_seed(3)
    assert torch.equal(robustness.bit_flip(z, 0.0, g), z)
    assert torch.equal(robustness.bit_flip(z, 1.0, g), 1 - z)
    changed = (robustness.bit_flip(z, 0.2, g) != z).float().mean().item()
    assert changed == pytest.approx(0.2, abs=0.01)


def test_bit_flip_matches_plain_xor_of_the_same_uniforms():
    z = random_spikes((4, 3, 5))
    u = torch.rand(z.shape, generator=torch.Generator().manual_seed(4))
    expected = torch.logical_xor(z.bool(), u < 0.3).float()
    assert torch.equal(robustness.bit_flip(z, 0.3, uniform=u), expected)


def test_gaussian_noise_definition():
    z = random_spikes((4, 6, 5))
    u = torch.rand(z.shape, generator=torch.Generator().manual_seed(5))
    eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(6))
    out = robustness.gaussian_noise(z, 0.25, uniform=u, noise=eps)
    for idx in range(z.numel()):
        zi, ui, ei = z.flatten()[idx].item(), u.flatten()[idx].item(), eps.flatten()[idx].item()
        want = (1.0 if zi + ei > 0.5 else 0.0) if ui < 0.25 else zi
        assert out.flatten()[idx].item() == want
    assert torch.equal(robustness.gaussian_noise(z, 0.0, torch.Generator().manual_seed(0)), z)


def test_bad_level_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        robustness.bit_flip(torch.zeros(2, 2, 2), 1.5)
    with pytest.raises(ValueError, match="choose one of"):
        list(robustness.perturbations(torch.zeros(2, 2, 2), "scramble", [0.1], 0, 0))


def test_draws_depend_only_on_seed_batch_and_shape():
    z1, z2 = random_spikes((4, 3, 8), seed=1), random_spikes((4, 3, 8), seed=2)
    flips1 = [zn != z1 for _, zn in robustness.perturbations(z1, "flip", [0.1, 0.3], 7, 3)]
    flips2 = [zn != z2 for _, zn in robustness.perturbations(z2, "flip", [0.1, 0.3], 7, 3)]
    assert all(torch.equal(a, b) for a, b in zip(flips1, flips2))  # same bits flip for any z of this shape
    assert torch.all(flips1[1] | ~flips1[0])  # nested masks: bits flipped at 0.1 are flipped at 0.3 too
    assert flips1[0].any() and not torch.equal(flips1[0], flips1[1])
    # gaussian: an all-zero and an all-one tensor differ exactly where the same selected noise lands
    zeros, ones = torch.zeros(4, 3, 8), torch.ones(4, 3, 8)
    (_, g0), = robustness.perturbations(zeros, "gaussian", [0.5], 7, 3)
    (_, g1), = robustness.perturbations(ones, "gaussian", [0.5], 7, 3)
    eps = torch.randn(zeros.shape, generator=common.generator_for(7, "gaussian-noise", 3))
    u = torch.rand(zeros.shape, generator=common.generator_for(7, "gaussian-mask", 3))
    assert torch.equal(g0, ((u < 0.5) & (eps > 0.5)).float())
    assert torch.equal(g1, 1 - ((u < 0.5) & (eps <= -0.5)).float())
    # same seed and batch -> same permutation; another batch or seed -> another one
    ramp = torch.arange(4.0)[:, None, None].expand(4, 3, 8).contiguous()
    a = next(robustness.perturbations(ramp, "shuffle", [], 7, 3))[1]
    b = next(robustness.perturbations(ramp, "shuffle", [], 7, 3))[1]
    c = next(robustness.perturbations(ramp, "shuffle", [], 7, 4))[1]
    d = next(robustness.perturbations(ramp, "shuffle", [], 8, 3))[1]
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, d)


# --- evaluate_robustness on a toy spiking model ----------------------------------------------------------

class ToySpikingVAE(nn.Module):
    """rate = sigmoid(W x), Bernoulli spikes; decode = tanh(V mean_t z) (a linear decoder of the rate)."""

    def __init__(self, pixels=6, latent=5, T=4, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.T, self.latent_dim = T, latent
        self.enc = nn.Parameter(torch.randn(pixels, latent, generator=g))
        self.dec = nn.Parameter(torch.randn(latent, pixels, generator=g))
        self.config = {"model": "toy", "in_channels": 1, "image_size": 0, "latent_dim": latent}

    def encode(self, x):
        rate = torch.sigmoid(x.flatten(1) @ self.enc)
        return rate.expand(self.T, *rate.shape), rate

    def posterior_spikes(self, x, generator=None):
        rate = self.encode(x)[1]
        return (torch.rand((self.T, *rate.shape), generator=generator) < rate).float()

    def prior_spikes(self, n, generator=None):
        return (torch.rand((self.T, n, self.latent_dim), generator=generator) < 0.5).float()

    def decode(self, z):
        return torch.tanh(z.mean(0) @ self.dec).view(z.shape[1], 1, 2, 3)

    def sample(self, n, generator=None):
        return self.decode(self.prior_spikes(n, generator))

    def loss(self, x, out):
        return {"loss": ((out[0] - x) ** 2).mean()}


def toy_loader(n=10, batch=4):
    x = torch.rand(n, 1, 2, 3, generator=torch.Generator().manual_seed(9)) * 2 - 1
    ds = torch.utils.data.TensorDataset(x, torch.zeros(n, dtype=torch.long))
    return torch.utils.data.DataLoader(ds, batch_size=batch), x


@pytest.mark.parametrize("kind", ["shuffle", "flip", "gaussian"])
def test_evaluate_robustness_matches_an_independent_loop(kind):
    model = ToySpikingVAE()
    loader, _ = toy_loader()
    levels = [0.1, 0.3]
    res = robustness.evaluate_robustness(model, loader, kind, levels, seed=5, device="cpu", num_examples=3)
    sq_o = [0.0] * (1 if kind == "shuffle" else 2)
    sq_c, pixels, clean_sq = list(sq_o), 0, 0.0
    for b, (x, _) in enumerate(loader):
        z = model.posterior_spikes(x, common.generator_for(5, "posterior", b))
        clean = model.decode(z)
        clean_sq += ((clean - x) ** 2).sum().item()
        pixels += x.numel()
        if kind == "shuffle":
            keys = torch.rand(z.shape, generator=common.generator_for(5, "shuffle", b))
            variants = [torch.gather(z, 0, keys.argsort(0))]
        else:
            u = torch.rand(z.shape, generator=common.generator_for(5, f"{kind}-mask", b))
            if kind == "flip":
                variants = [torch.where(u < a, 1 - z, z) for a in levels]
            else:
                eps = torch.randn(z.shape, generator=common.generator_for(5, "gaussian-noise", b))
                variants = [torch.where(u < a, ((z + eps) > 0.5).float(), z) for a in levels]
        for i, zn in enumerate(variants):
            out = model.decode(zn)
            sq_o[i] += ((out - x) ** 2).sum().item()
            sq_c[i] += ((out - clean) ** 2).sum().item()
    assert res["num_images"] == 10
    assert res["clean_mse"] == pytest.approx(clean_sq / pixels, rel=1e-6)
    assert res["mse_vs_original"] == pytest.approx([s / pixels for s in sq_o], rel=1e-6)
    assert res["mse_vs_clean"] == pytest.approx([s / pixels for s in sq_c], rel=1e-6)
    assert res["examples"]["perturbed"].shape[:2] == (len(sq_o), 3)


def test_evaluate_robustness_is_deterministic_and_level_zero_is_clean():
    model = ToySpikingVAE()
    loader, _ = toy_loader()
    a = robustness.evaluate_robustness(model, loader, "flip", [0.0, 0.2], seed=1, device="cpu")
    b = robustness.evaluate_robustness(model, loader, "flip", [0.0, 0.2], seed=1, device="cpu")
    c = robustness.evaluate_robustness(model, loader, "flip", [0.0, 0.2], seed=2, device="cpu")
    assert a["mse_vs_original"] == b["mse_vs_original"] and a["mse_vs_clean"] == b["mse_vs_clean"]
    assert a["mse_vs_original"] != c["mse_vs_original"]
    assert a["mse_vs_clean"][0] == 0.0 and a["changed_fraction"][0] == 0.0
    assert a["mse_vs_original"][0] == pytest.approx(a["clean_mse"])


def test_two_models_get_identical_perturbations():
    seen = []

    class Recording(ToySpikingVAE):
        def decode(self, z):
            seen.append(z.clone())
            return super().decode(z)

    loader, _ = toy_loader()
    for seed in (0, 1):  # two different models, same seed for the draws
        robustness.evaluate_robustness(Recording(seed=seed), loader, "flip", [0.25], seed=3, device="cpu")
    half = len(seen) // 2
    # z_clean differs between the models, but the flipped positions (z' xor z) are the same
    for i in range(0, half, 2):
        flips_a = seen[i] != seen[i + 1]
        flips_b = seen[half + i] != seen[half + i + 1]
        assert torch.equal(flips_a, flips_b)


# --- probe ------------------------------------------------------------------------------------------------

def test_probe_architecture_and_determinism():
    mlp = classify.ProbeMLP(32, 10)
    shapes = [tuple(m.weight.shape) for m in mlp if isinstance(m, nn.Linear)]
    assert shapes == [(512, 32), (256, 512), (128, 256), (10, 128)]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(300, 8, generator=g)
    y = (x[:, 0] > 0.5).long() + 2 * (x[:, 1] > 0.5).long()  # 4 separable classes
    state = torch.random.get_rng_state()
    r1 = classify.train_probe(x[:200], y[:200], x[200:], y[200:], epochs=12, batch_size=16, lr=0.05, seed=4)
    r2 = classify.train_probe(x[:200], y[:200], x[200:], y[200:], epochs=12, batch_size=16, lr=0.05, seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    assert r1["history"] == r2["history"]
    assert r1["test_acc"] > 0.8  # chance 0.25
    with pytest.raises(ValueError, match="epochs"):
        classify.train_probe(x, y, x, y, epochs=0)


def test_extract_features_uses_rates_of_spiking_models_and_mu_of_the_ann():
    from spikingjelly_vae.models import ANNVAE

    model = ToySpikingVAE()
    loader, x = toy_loader()
    feats, labels = classify.extract_features(model, loader, "cpu")
    assert torch.allclose(feats, model.encode(x)[1]) and labels.shape == (10,)
    ann = ANNVAE(1, 8, 32, kld_weight=1.0).eval()
    xs = torch.rand(3, 1, 32, 32) * 2 - 1
    ds = torch.utils.data.TensorDataset(xs, torch.zeros(3, dtype=torch.long))
    feats, _ = classify.extract_features(ann, torch.utils.data.DataLoader(ds, batch_size=2), "cpu")
    with torch.no_grad():
        assert torch.allclose(feats, ann.encode(xs)[0], atol=1e-6)


# --- rate statistics ----------------------------------------------------------------------------------------

def test_rate_histogram_and_summary():
    T = 4
    rates = torch.tensor([[0.0, 0.25, 1.0, 1.0], [0.5, 0.0, 0.75, 1.0]])
    h = analysis.rate_histogram(rates, T)
    assert h.tolist() == [2 / 8, 1 / 8, 1 / 8, 1 / 8, 3 / 8]
    s = analysis.rate_summary(rates, rates, T)
    assert s["overlap"] == pytest.approx(1.0) and s["rbf_mmd2"] == pytest.approx(0.0, abs=1e-12)
    assert s["posterior"]["share_silent"] == 0.25 and s["posterior"]["share_saturated"] == 0.375
    other = analysis.rate_summary(rates, torch.zeros(2, 4), T)
    assert other["overlap"] == pytest.approx(0.25)


def test_latent_rates_are_means_of_the_seeded_spikes():
    model = ToySpikingVAE()
    loader, x = toy_loader(n=6, batch=3)
    r = analysis.latent_rates(model, loader, seed=2, device="cpu", num_raster=2)
    z0 = model.posterior_spikes(x[:3], common.generator_for(2, "posterior", 0))
    assert torch.equal(r["posterior"][:3], z0.mean(0))
    assert torch.equal(r["raster"]["posterior"], z0[:, :2])
    q1 = model.prior_spikes(3, common.generator_for(2, "prior", 1))
    assert torch.equal(r["prior"][3:], q1.mean(0))


# --- synaptic operations ---------------------------------------------------------------------------------

def brute_force_fan_out(layer, x):
    """Sum over non-zero input elements of the outputs they reach, found by feeding each one alone through
    a copy of the layer with all-ones weights and no bias (independent of energy.fan_out_count)."""
    probe = copy.deepcopy(layer)
    with torch.no_grad():
        probe.weight.fill_(1.0)
    probe.bias = None
    total = 0
    for idx in x.nonzero():
        one = torch.zeros_like(x)
        one[tuple(idx)] = 1.0
        with torch.no_grad():
            total += (probe(one) != 0).sum().item()
    return total


@pytest.mark.parametrize("layer,shape", [
    (nn.Linear(5, 3), (4, 5)),
    (nn.Conv2d(2, 3, 3, 2, 1), (2, 2, 5, 5)),
    (nn.Conv2d(2, 4, 3, 1, 1), (1, 2, 4, 4)),
    (nn.ConvTranspose2d(3, 2, 3, 2, 1, 1), (2, 3, 3, 3)),
    (nn.ConvTranspose2d(2, 1, 3, 1, 1), (1, 2, 4, 4)),
])
def test_fan_out_count_matches_brute_force(layer, shape):
    x = random_spikes(shape, p=0.5, seed=11)
    assert energy.fan_out_count(layer, x).sum().item() == brute_force_fan_out(layer, x)


def test_fan_out_by_hand():
    conv = nn.Conv2d(1, 2, 3, 1, 1)
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 0, 0] = 1  # a corner spike reaches 2x2 positions x 2 channels
    assert energy.fan_out_count(conv, x).item() == 8
    x[0, 0, 1, 1] = 1  # the centre reaches all 9 positions x 2 channels
    assert energy.fan_out_count(conv, x).item() == 8 + 18
    # dense analog input: 4 corners x 4 taps + 4 edges x 6 + centre 9 = 49 taps per channel
    assert energy.fan_out_count(conv, torch.ones(1, 1, 3, 3)).item() == 98
    convt = nn.ConvTranspose2d(1, 3, 3, 2, 1, 1)  # 2x2 -> 4x4
    x = torch.zeros(1, 1, 2, 2)
    x[0, 0, 0, 0] = 1  # outputs 2*0 - 1 + {0,1,2} -> rows/cols {0, 1} in range: 4 positions x 3
    assert energy.fan_out_count(convt, x).item() == 12
    x[0, 0, 0, 0], x[0, 0, 1, 1] = 0, 1  # outputs {1, 2, 3}: 9 positions x 3
    assert energy.fan_out_count(convt, x).item() == 27
    assert energy.fan_out_count(nn.Linear(4, 7), torch.tensor([[1.0, 0, 1, 1]])).item() == 21


class TinySNN(nn.Module):
    """Analog image -> conv (MAC) -> LIF -> conv (AC) -> LIF -> flatten -> linear (AC) -> LIF."""

    def __init__(self, T=3):
        super().__init__()
        self.T = T
        self.conv1 = TemporalConv2d(1, 2, kernel_size=3, stride=1, padding=1)
        self.conv2 = TemporalConv2d(2, 2, kernel_size=3, stride=2, padding=1)
        self.fc = TemporalLinear(8, 3)

    def forward(self, x):
        h = self.conv2(self.conv1(x.unsqueeze(0).expand(self.T, *x.shape)))
        return self.fc(h.flatten(2))


def test_op_counter_matches_a_hand_count_on_a_tiny_network():
    torch.manual_seed(0)
    net = TinySNN()
    with torch.no_grad():  # make the first layer fire a lot
        net.conv1.weight_layer.weight.fill_(1.0)
    x = torch.rand(2, 1, 4, 4) * 2 - 1
    spikes = {}
    for name in ("conv1", "conv2", "fc"):
        getattr(net, name).lif.register_forward_hook(
            lambda m, i, o, n=name: spikes.__setitem__(n, o.detach()))
    with torch.no_grad(), energy.OpCounter(net) as counter:
        net(x)
    res = energy.per_image(counter, num_images=2, e_ac=1.0, e_mac=10.0)
    layers = {r["layer"]: r for r in res["layers"]}
    # conv1: analog image, computed once per image: 16 positions x taps in range (4*4 + 8*6 + 4*9 = 100) x 2
    assert layers["conv1.weight_layer"]["op"] == "MAC"
    assert layers["conv1.weight_layer"]["mac_per_image"] == 200
    # conv2: each spike of conv1 reaches the stride-2 outputs whose 3x3 window covers it, x 2 channels
    s1 = spikes["conv1"]  # [T, N, 2, 4, 4]
    # output row o covers input rows 2o-1..2o+1: o=0 -> {0, 1}, o=1 -> {1, 2, 3}
    reach = {0: 1, 1: 2, 2: 1, 3: 1}
    hand = sum(reach[r] * reach[c] * 2 * s1[..., r, c].sum().item() for r in range(4) for c in range(4))
    assert layers["conv2.weight_layer"]["op"] == "AC"
    assert layers["conv2.weight_layer"]["ac_per_image"] == hand / 2
    # fc: each spike of conv2 reaches 3 outputs
    assert layers["fc.weight_layer"]["ac_per_image"] == spikes["conv2"].sum().item() * 3 / 2
    assert res["energy_pj_per_image"] == pytest.approx(res["ac_per_image"] + res["mac_per_image"] * 10.0)
    rates = {r["layer"]: r["firing_rate"] for r in res["neurons"]}
    for name in ("conv1", "conv2", "fc"):
        assert rates[f"{name}.lif"] == pytest.approx(spikes[name].mean().item())
    assert energy.E_MAC_PJ == pytest.approx(4.6) and energy.E_AC_PJ == pytest.approx(0.9)


def test_hooks_are_removed_after_counting():
    net = TinySNN()
    with energy.OpCounter(net):
        pass
    assert all(not m._forward_hooks for m in net.modules())


def test_fsvae_and_esvae_work_through_the_generic_interface():
    from spikingjelly_vae.models import ESVAE, FSVAE

    xs = torch.rand(4, 1, 32, 32) * 2 - 1
    ds = torch.utils.data.TensorDataset(xs, torch.zeros(4, dtype=torch.long))
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    for model in (FSVAE(1, 8, T=3, k=4), ESVAE(1, 8, T=3)):
        model.eval()
        res = robustness.evaluate_robustness(model, loader, "shuffle", seed=0, device="cpu", num_examples=2)
        assert math.isfinite(res["mse_vs_clean"][0])
        r = analysis.latent_rates(model, loader, seed=0, device="cpu", count_ops=True, num_raster=1)
        rec = energy.per_image(r["ops"]["reconstruction"], r["num_images"])
        assert rec["ac_per_image"] > 0 and rec["mac_per_image"] > 0
        assert any(n["type"] == PaperLIFNode.__name__ for n in rec["neurons"])
    with pytest.raises(ValueError, match="no latent spikes"):
        from spikingjelly_vae.models import ANNVAE
        common.require_spiking(ANNVAE(1, 8, 32, kld_weight=1.0))
