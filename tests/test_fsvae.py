"""FSVAE against a plain time-last loop written from reference_spec.md section 4 (fixed generators)."""
import pytest
import torch
import torch.nn.functional as F

from spikingjelly_vae.checkpoint import load_model, save_checkpoint
from spikingjelly_vae.data import dataset_info
from spikingjelly_vae.models import FSVAE, FSVAELarge, build_model
from spikingjelly_vae.models.fsvae import BernoulliPosterior, BernoulliPrior


# ---------------------------------------------------------------- plain reference (layout (N, C, T))
class _Spike(torch.autograd.Function):
    """o = 1[u > 0.2]; do/du = 1[|u| < 0.5] (reference_spec 1.1)."""

    @staticmethod
    def forward(ctx, u):
        ctx.save_for_backward(u)
        return (u > 0.2).float()

    @staticmethod
    def backward(ctx, g):
        (u,) = ctx.saved_tensors
        return g * (u.abs() < 0.5).float()


def ref_lif(y):
    u = torch.zeros_like(y[..., 0])
    o = torch.zeros_like(u)
    out = []
    for t in range(y.shape[-1]):
        u = 0.25 * u * (1 - o) + y[..., t]
        o = _Spike.apply(u)
        out.append(o)
    return torch.stack(out, -1)


def ref_tdbn(y, layer, training, alpha=2.0):
    """tdBN over (N, T) per channel; running stats updated with momentum 0.1 and the n/(n-1) correction."""
    if training:
        mean, var = y.mean((0, 2)), y.var((0, 2), unbiased=False)
        n = y.shape[0] * y.shape[2]
        layer["mean"] = 0.9 * layer["mean"] + 0.1 * mean.detach()
        layer["var"] = 0.9 * layer["var"] + 0.1 * var.detach() * n / (n - 1)
    else:
        mean, var = layer["mean"], layer["var"]
    xhat = (y - mean[:, None]) / torch.sqrt(var[:, None] + 1e-5)
    return alpha * 0.2 * xhat * layer["w"][:, None] + layer["b"][:, None]


def ref_mlp(layers, x, training):
    for layer in layers:
        y = torch.einsum("nct,oc->not", x, layer["W"]) + layer["bias"][:, None]
        x = ref_lif(ref_tdbn(y, layer, training))
    return x


def ref_params(mlp):
    """Independent copies (leaf tensors) of the weights and running statistics of our MLP."""
    out = []
    for block in mlp:
        out.append(dict(W=block.weight_layer.weight.detach().clone().requires_grad_(),
                        bias=block.weight_layer.bias.detach().clone().requires_grad_(),
                        w=block.bn.weight.detach().clone().requires_grad_(),
                        b=block.bn.bias.detach().clone().requires_grad_(),
                        mean=block.bn.running_mean.clone(), var=block.bn.running_var.clone()))
    return out


def ref_pick(q_t, index, B, C, k):
    return q_t.reshape(B * C * k)[index].view(B, C)


def ref_index(B, C, k, g):
    return torch.randint(0, k, (B * C,), generator=g) + torch.arange(0, B * C * k, k)


def ref_posterior(layers, x, k, g, training):
    """PosteriorBernoulliSTBP: no-grad prefix loop, full pass with grad, z re-read at the same indices."""
    B, C, T = x.shape
    idx = []
    with torch.no_grad():
        zm = torch.zeros(B, C, 1)
        for t in range(T - 1):
            q_t = ref_mlp(layers, torch.cat([x[..., :t + 1].detach(), zm], 1), training)[..., -1]
            idx.append(ref_index(B, C, k, g))
            zm = torch.cat([zm, ref_pick(q_t, idx[-1], B, C, k)[..., None]], -1)
    q = ref_mlp(layers, torch.cat([x, zm], 1), training)
    idx.append(ref_index(B, C, k, g))
    z = torch.stack([ref_pick(q[..., t], idx[t], B, C, k) for t in range(T)], -1)
    return z, q.view(B, C, k, T)


def ref_prior(layers, z, k, p, g, training):
    """PriorBernoulliSTBP._forward_scheduled_sampling (coin: torch.rand with g, drawn only for t >= 5)."""
    B, C, T = z.shape
    z = z.detach()
    zm = torch.zeros(B, C, 1)
    if training:
        with torch.no_grad():
            for t in range(T - 1):
                if t >= 5 and torch.rand((), generator=g).item() < p:
                    p_t = ref_mlp(layers, zm, training)[..., -1]
                    prob = p_t.view(B, C, k).mean(-1) + 1e-3 * torch.randn((B, C), generator=g)
                    zm = torch.cat([zm, (prob > 0.5).float()[..., None]], -1)
                else:
                    zm = torch.cat([zm, z[..., t:t + 1]], -1)
    else:
        zm = torch.cat([zm, z[..., :-1]], -1)
    return ref_mlp(layers, zm, training).view(B, C, k, T)


def ref_generate(layers, B, C, k, T, g, training):
    zm = torch.zeros(B, C, 1)
    for t in range(T):
        p_t = ref_mlp(layers, zm, training)[..., -1]
        zm = torch.cat([zm, ref_pick(p_t, ref_index(B, C, k, g), B, C, k)[..., None]], -1)
    return zm[..., 1:]


def ref_psp(x):
    s, out = torch.zeros_like(x[..., 0]), []
    for t in range(x.shape[-1]):
        s = s / 2 + x[..., t] / 2
        out.append(s)
    return torch.stack(out, -1)


# ---------------------------------------------------------------- helpers
def tl(x):
    """time-first [T, N, ...] -> time-last [N, ..., T]."""
    return x.movedim(0, -1)


def randomise_stats(mlp, seed):
    g = torch.Generator().manual_seed(seed)
    for block in mlp:
        bn = block.bn
        bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=g) * 0.3)
        bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=g) + 0.5)
        bn.weight.data.copy_(1 + 0.3 * torch.randn(bn.weight.shape, generator=g))
        bn.bias.data.copy_(0.3 * torch.randn(bn.bias.shape, generator=g))


def grads(tensors):
    return [t.grad.clone() for t in tensors]


def our_leaves(mlp):
    return [p for block in mlp for p in (block.weight_layer.weight, block.weight_layer.bias,
                                         block.bn.weight, block.bn.bias)]


def ref_leaves(layers):
    return [layer[key] for layer in layers for key in ("W", "bias", "w", "b")]


def assert_stats_equal(mlp, layers):
    for block, layer in zip(mlp, layers):
        torch.testing.assert_close(block.bn.running_mean, layer["mean"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(block.bn.running_var, layer["var"], rtol=1e-5, atol=1e-6)


N, L, K, T = 3, 4, 3, 8


# ---------------------------------------------------------------- posterior
@pytest.mark.parametrize("training", [True, False])
def test_posterior_matches_reference_loop(training):
    torch.manual_seed(0)
    post = BernoulliPosterior(L, K, kernel_backend="torch").train(training)
    if not training:
        randomise_stats(post.mlp, 1)
    layers = ref_params(post.mlp)
    x_e = (torch.rand(T, N, L) < 0.4).float().requires_grad_()
    x_ref = tl(x_e.detach()).clone().requires_grad_()
    z, q = post(x_e, torch.Generator().manual_seed(5))
    z_ref, q_ref = ref_posterior(layers, x_ref, K, torch.Generator().manual_seed(5), training)
    assert z.shape == (T, N, L) and q.shape == (T, N, L, K)
    assert 0 < z.mean() < 1 and 0 < q.mean() < 1
    assert torch.equal(tl(z), z_ref)
    assert torch.equal(q.permute(1, 2, 3, 0), q_ref)
    assert_stats_equal(post.mlp, layers)  # training: T-1 prefix passes + 1 full pass update the running stats
    # gradients: through the chosen spike and the full pass (x_e not detached there)
    wz, wq = torch.randn(T, N, L), torch.randn(T, N, L, K)
    ((z * wz).sum() + (q * wq).sum()).backward()
    ((z_ref * tl(wz)).sum() + (q_ref * wq.permute(1, 2, 3, 0)).sum()).backward()
    torch.testing.assert_close(tl(x_e.grad), x_ref.grad)
    for a, b in zip(grads(our_leaves(post.mlp)), grads(ref_leaves(layers))):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_training_prefix_passes_update_running_stats():
    """The quirk kept: each of the T-1 prefix passes updates the running stats, not only the full pass."""
    torch.manual_seed(0)
    post = BernoulliPosterior(L, K, kernel_backend="torch")
    full_only = ref_params(post.mlp)  # fresh running stats (0, 1)
    x_e = (torch.rand(T, N, L) < 0.4).float()
    z, _ = post(x_e, torch.Generator().manual_seed(0))
    assert post.mlp[0].bn.num_batches_tracked.item() == T  # T-1 prefix passes + the full pass
    with torch.no_grad():
        zm = torch.cat([torch.zeros(1, N, L), z[:-1]], 0)
        ref_mlp(full_only, tl(torch.cat([x_e, zm], 2)), True)  # the full pass alone
    assert not torch.allclose(post.mlp[2].bn.running_mean, full_only[2]["mean"])


def test_posterior_eval_is_one_incremental_pass():
    """Eval mode: the stepwise pass equals the reference's prefix re-runs, at O(T) MLP steps."""
    torch.manual_seed(1)
    post = BernoulliPosterior(L, K, kernel_backend="torch").eval()
    randomise_stats(post.mlp, 2)
    calls = []
    post.mlp[2].weight_layer.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    post((torch.rand(T, N, L) < 0.4).float(), torch.Generator().manual_seed(0))
    assert calls == [N] * T  # one step of N rows per time step, never a prefix


# ---------------------------------------------------------------- prior
@pytest.mark.parametrize("p,k", [(0.0, K), (0.5, K), (1.0, K), (1.0, 2)])
def test_prior_scheduled_sampling_matches_reference(p, k):
    """k = 2 makes mean_k = 0.5 common, so the 1e-3 noise decides the threshold."""
    torch.manual_seed(2)
    T_ = 10
    prior = BernoulliPrior(L, k, kernel_backend="torch")
    layers = ref_params(prior.mlp)
    z = (torch.rand(T_, N, L) < 0.5).float()
    p_z = prior(z, p, True, torch.Generator().manual_seed(7))
    p_ref = ref_prior(layers, tl(z), k, p, torch.Generator().manual_seed(7), True)
    assert p_z.shape == (T_, N, L, k)
    assert torch.equal(p_z.permute(1, 2, 3, 0), p_ref)
    assert_stats_equal(prior.mlp, layers)
    w = torch.randn(T_, N, L, k)
    (p_z * w).sum().backward()
    (p_ref * w.permute(1, 2, 3, 0)).sum().backward()
    for a, b in zip(grads(our_leaves(prior.mlp)), grads(ref_leaves(layers))):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    if p == 0:  # no coin wins: only the full pass touches the running stats
        assert prior.mlp[0].bn.num_batches_tracked.item() == 1


def test_prior_scheduled_sampling_replaces_inputs_only_from_step_5():
    torch.manual_seed(3)
    prior = BernoulliPrior(L, K, kernel_backend="torch")
    seen = []
    prior.mlp[0].weight_layer.register_forward_hook(lambda m, i, o: seen.append(i[0].clone()))
    z = (torch.rand(10, N, L) < 0.5).float()
    prior(z, 1.0, True, torch.Generator().manual_seed(0))
    lengths = [s.shape[0] // N for s in seen]
    assert lengths == [6, 7, 8, 9, 10]  # prefix passes for t = 5..8 (inputs 0..t), then the full pass
    teacher = torch.cat([torch.zeros(1, N, L), z[:-1]], 0)
    full = seen[-1].view(10, N, L)
    assert torch.equal(full[:6], teacher[:6])  # inputs up to z_4 untouched
    # eval mode and scheduled=False are plain teacher forcing
    for mode in ("eval", "off"):
        seen.clear()
        prior.train(mode != "eval")
        prior(z, 1.0, mode == "eval", torch.Generator().manual_seed(0))
        assert len(seen) == 1 and torch.equal(seen[0].view(10, N, L), teacher)


@pytest.mark.parametrize("training", [True, False])
def test_generation_matches_reference(training):
    torch.manual_seed(4)
    prior = BernoulliPrior(L, K, kernel_backend="torch").train(training)
    randomise_stats(prior.mlp, 3)  # (in training mode a zero start gives zero spikes unless a BN bias fires)
    layers = ref_params(prior.mlp)
    z = prior.generate(N, torch.Generator().manual_seed(9), T=T)
    z_ref = ref_generate(layers, N, L, K, T, torch.Generator().manual_seed(9), training)
    assert z.shape == (T, N, L) and 0 < z.mean() < 1
    assert torch.equal(tl(z), z_ref)
    assert_stats_equal(prior.mlp, layers)


# ---------------------------------------------------------------- loss and schedule
def test_loss_matches_reference():
    torch.manual_seed(5)
    model = FSVAE(1, L, T=T, k=K, kernel_backend="torch")
    x = torch.rand(N, 1, 32, 32) * 2 - 1
    recon = torch.tanh(torch.randn(N, 1, 32, 32))
    q_z, p_z = torch.rand(T, N, L, K), torch.rand(T, N, L, K)
    terms = model.loss(x, (recon, q_z, p_z, None))
    q_bar, p_bar = q_z.mean(-1).permute(1, 2, 0), p_z.mean(-1).permute(1, 2, 0)  # (N, L, T)
    mmd = torch.mean((ref_psp(q_bar) - ref_psp(p_bar)) ** 2)
    torch.testing.assert_close(terms["mmd"], mmd)
    torch.testing.assert_close(terms["recon"], F.mse_loss(recon, x))
    torch.testing.assert_close(terms["loss"], F.mse_loss(recon, x) + mmd)
    model_kld = FSVAE(1, L, T=T, k=K, distance="kld", kernel_backend="torch")
    terms = model_kld.loss(x, (recon, q_z, p_z, None))
    kld = q_bar * torch.log((q_bar + 1e-2) / (p_bar + 1e-2)) \
        + (1 - q_bar) * torch.log((1 - q_bar + 1e-2) / (1 - p_bar + 1e-2))
    kld = torch.mean(torch.sum(kld, dim=(1, 2)))
    torch.testing.assert_close(terms["kld"], kld)
    torch.testing.assert_close(terms["loss"], F.mse_loss(recon, x) + 1e-4 * kld)


def test_scheduled_sampling_schedule():
    model = FSVAE(1, 8, T=4, k=2)
    assert model.sampling_prob == pytest.approx(0.1)
    assert [model.set_epoch(e, 150) for e in (0, 75, 149)] == pytest.approx([0.1, 0.2, 0.1 + 0.2 * 149 / 150])
    assert model.sampling_prob == pytest.approx(0.1 + 0.2 * 149 / 150)
    with pytest.raises(ValueError):
        model.set_epoch(0, 0)


# ---------------------------------------------------------------- the whole model
@pytest.mark.parametrize("dataset", ["mnist", "fashion", "cifar10", "celeba"])
def test_shapes_all_datasets(dataset):
    info = dataset_info(dataset)
    c, s = info["in_channels"], info["image_size"]
    model = build_model(dict(model="fsvae", in_channels=c, image_size=s, latent_dim=8, T=4, k=3))
    x = torch.rand(2, c, s, s) * 2 - 1
    g = torch.Generator().manual_seed(0)
    recon, q_z, p_z, z = model(x, generator=g)
    assert recon.shape == x.shape and recon.abs().max() <= 1
    assert q_z.shape == p_z.shape == (4, 2, 8, 3) and z.shape == (4, 2, 8)
    x_e, rate = model.encode(x)
    assert x_e.shape == (4, 2, 8) and torch.equal(rate, x_e.mean(0))
    assert model.posterior_spikes(x, g).shape == (4, 2, 8) and model.prior_spikes(3, g).shape == (4, 3, 8)
    model.eval()
    assert model.sample(3, generator=g).shape == (3, c, s, s)
    assert model(x, generator=g)[0].shape == x.shape
    if s == 64:
        assert len(model.encoder.convs) == 5 and isinstance(FSVAELarge(latent_dim=8, T=4, k=3), FSVAE)


def test_parameter_counts():
    """reference_spec 2.3: posterior ~1.52 M, prior ~1.48 M (L = 128, k = 20), backbone as ESVAE's."""
    from spikingjelly_vae.models import ESVAE
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    model = FSVAE(3, 128)
    assert n(model.posterior) == (256 * 256 + 256 + 512) + (256 * 512 + 512 + 1024) + (512 * 2560 + 2560 + 5120)
    assert n(model.prior) == (128 * 256 + 256 + 512) + (256 * 512 + 512 + 1024) + (512 * 2560 + 2560 + 5120)
    assert 1.51e6 < n(model.posterior) < 1.53e6 and 1.47e6 < n(model.prior) < 1.49e6
    esvae = ESVAE(3, 128)
    assert n(model.encoder) + n(model.decoder) == n(esvae) - n(esvae.prior_layer)


def test_forward_is_exact_given_generator_and_gradients_flow():
    torch.manual_seed(6)
    model = FSVAE(1, 8, T=6, k=3, kernel_backend="torch")
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out1 = model(x, generator=torch.Generator().manual_seed(1))
    model.load_state_dict(state)
    out2 = model(x, generator=torch.Generator().manual_seed(1))
    for a, b in zip(out1, out2):
        assert torch.equal(a, b)
    terms = model.loss(x, out2)
    terms["loss"].backward()
    assert model.encoder.convs[0].weight_layer.weight.grad.abs().sum() > 0
    assert model.posterior.mlp[0].weight_layer.weight.grad.abs().sum() > 0
    assert model.prior.mlp[2].weight_layer.weight.grad.abs().sum() > 0
    # p_z sees z detached: the prior term alone sends no gradient to the encoder
    model.zero_grad()
    out = model(x, generator=torch.Generator().manual_seed(1))
    out[2].sum().backward()
    assert model.encoder.convs[0].weight_layer.weight.grad is None or \
        model.encoder.convs[0].weight_layer.weight.grad.abs().sum() == 0


def test_optimisation_lowers_loss():
    torch.manual_seed(0)
    model = FSVAE(1, 8, T=4, k=3, kernel_backend="torch")
    x = torch.rand(8, 1, 32, 32) * 2 - 1
    opt = torch.optim.AdamW(model.param_groups(3e-3), weight_decay=1e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(12):
        terms = model.loss(x, model(x, generator=gen))
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        losses.append(terms["loss"].item())
    assert sum(losses[-3:]) / 3 < 0.9 * sum(losses[:3]) / 3


def test_checkpoint_round_trip(tmp_path):
    model = FSVAE(1, 8, T=4, k=3, scheduled=False, distance="kld")
    save_checkpoint(tmp_path / "m.pt", {"model": model.state_dict(), "config": model.config, "epoch": 0})
    loaded, ckpt = load_model(tmp_path / "m.pt", expected_model="fsvae")
    assert loaded.config == model.config and not loaded.scheduled and loaded.distance == "kld"
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])


def test_bad_input_raises_value_error():
    model = FSVAE(1, 8, T=4, k=3)
    with pytest.raises(ValueError, match="shape"):
        model(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="latent"):
        model.decode(torch.zeros(4, 2, 9))
    with pytest.raises(ValueError, match="distance"):
        FSVAE(distance="l2")
    with pytest.raises(ValueError, match="image_size"):
        FSVAE(image_size=28)


SHARED_DATA = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.skipif(not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason="needs ../shared/data/MNIST")
def test_train_loop_drives_the_schedule(tmp_path, monkeypatch):
    """train.fit calls set_epoch(epoch, epochs) each epoch: p = 0.1, then 0.2 for 2 epochs."""
    from spikingjelly_vae.train import TrainConfig, fit
    seen = []
    original = FSVAE.set_epoch
    monkeypatch.setattr(FSVAE, "set_epoch", lambda self, e, m: seen.append(original(self, e, m)) or seen[-1])
    res = fit(TrainConfig(dataset="mnist", model="fsvae", data_root=str(SHARED_DATA), out=str(tmp_path / "run"),
                          batch_size=8, train_subset=16, test_subset=8, epochs=2, latent_dim=4, T=3,
                          model_kwargs={"k": 2}, grid_images=4, device="cpu", progress=False, tensorboard=False))
    assert seen == pytest.approx([0.1, 0.2])
    assert res["metrics"]["epoch"] == 2 and res["metrics"]["test_mmd"] >= 0
