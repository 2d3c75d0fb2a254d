"""The paper's LIF neuron, its surrogate and the Poisson sampler against plain loops from reference_spec.md."""
import pytest
import torch
from spikingjelly.activation_based import functional as sj_functional

from spikingjelly_vae import PaperLIFNode, PoissonLatent, RectangleSurrogate, get_neuron
from spikingjelly_vae.neuron import poisson_spikes


class _RefSpike(torch.autograd.Function):
    """Reference LIFSpike surrogate: o = 1[u >= v_th]; do/du = 1[|u - c| < w] / (2w)."""

    @staticmethod
    def forward(ctx, u, v_th, centre, w):
        ctx.save_for_backward(u)
        ctx.c, ctx.w = centre, w
        return (u >= v_th).float()

    @staticmethod
    def backward(ctx, g):
        (u,) = ctx.saved_tensors
        return g * ((u - ctx.c).abs() < ctx.w).float() / (2 * ctx.w), None, None, None


def reference_lif(x_seq, decay=0.25, v_th=0.2, centre=0.0, w=0.5):
    """u_t = decay * u_{t-1} * (1 - o_{t-1}) + x_t (reference_spec 1.1), gradient through the reset."""
    u = torch.zeros_like(x_seq[0])
    o = torch.zeros_like(x_seq[0])
    out = []
    for x in x_seq:
        u = decay * u * (1 - o) + x
        o = _RefSpike.apply(u, v_th, centre, w)
        out.append(o)
    return torch.stack(out)


def _grads(fn, x, g):
    x = x.detach().clone().requires_grad_()
    s = fn(x)
    (s * g).sum().backward()
    return s.detach(), x.grad


@pytest.mark.parametrize("shape", [(16, 64, 50), (16, 3, 4, 5, 5)])
def test_lif_multistep_equals_reference_loop_exactly(shape):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen) * 0.5
    g = torch.randn(shape, generator=gen)
    node = PaperLIFNode()
    s1, g1 = _grads(node, x, g)
    s2, g2 = _grads(reference_lif, x, g)
    assert 0.05 < s1.mean() < 0.95  # both regimes exercised
    assert torch.equal(s1, s2)
    assert torch.equal(g1, g2)


def test_lif_single_step_equals_multistep_and_reset():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(16, 8, 10, generator=gen)
    g = torch.randn(16, 8, 10, generator=gen)
    node = PaperLIFNode(step_mode="s")

    def run(x_seq):
        sj_functional.reset_net(node)
        return torch.stack([node(xt) for xt in x_seq])

    s1, g1 = _grads(run, x, g)
    s2, g2 = _grads(reference_lif, x, g)
    assert torch.equal(s1, s2) and torch.equal(g1, g2)
    sj_functional.reset_net(node)
    assert node.v == 0.0


def test_lif_state_carries_between_calls_until_reset():
    x = torch.full((2, 1), 0.15)
    node = PaperLIFNode()
    first = node(x)  # u: 0.15, 0.1875 -> no spike
    assert first.sum() == 0
    second = node(x)  # u: 0.046875 + 0.15 = 0.196875... then 0.199 -> still below 0.2
    sj_functional.reset_net(node)
    third = node(x)
    assert torch.equal(first, third)
    assert torch.allclose(node.v, torch.tensor([[0.15 * 0.25 + 0.15]]))
    assert second.shape == (2, 1)


def test_lif_hand_values():
    """Hand-computed: x = [0.3, 0.1, 0.15]: u0=0.3 fires, reset; u1=0.1; u2=0.025+0.15=0.175."""
    x = torch.tensor([[0.3], [0.1], [0.15]], requires_grad=True)
    s = PaperLIFNode()(x)
    assert s.flatten().tolist() == [1.0, 0.0, 0.0]
    s[2].sum().backward()
    # ds2/du2 = 1 (|0.175| < 0.5), du2/dx2 = 1.
    # du2/du1 = 0.25 (1 - o1) - 0.25 u1 do1/du1 = 0.25 - 0.025 = 0.225 (the reset path, |0.1| < 0.5).
    # du1/du0 = 0.25 (1 - o0) - 0.25 u0 do0/du0 = 0 - 0.075 = -0.075.
    # => ds2/dx = [0.225 * -0.075, 0.225, 1] = [-0.016875, 0.225, 1]
    assert torch.allclose(x.grad.flatten(), torch.tensor([-0.016875, 0.225, 1.0]))


@pytest.mark.parametrize("centre,w", [(0.0, 0.5), (0.2, 0.5), (0.0, 0.25), (0.1, 1.0)])
def test_surrogate_window(centre, w):
    u = torch.linspace(-1.5, 1.5, 301, requires_grad=True)
    sg = RectangleSurrogate(centre=centre, half_width=w, v_threshold=0.2)
    o = sg(u - 0.2)
    o.sum().backward()
    assert torch.equal(o, (u >= 0.2).float())
    expected = ((u.detach() - centre).abs() < w).float() / (2 * w)
    assert torch.equal(u.grad, expected)


def test_lif_options_reach_the_surrogate():
    x = torch.randn(16, 4, 7)
    g = torch.randn(16, 4, 7)
    node = PaperLIFNode(centre=0.2, half_width=0.25)
    s1, g1 = _grads(node, x, g)
    s2, g2 = _grads(lambda z: reference_lif(z, centre=0.2, w=0.25), x, g)
    assert torch.equal(s1, s2) and torch.equal(g1, g2)


def test_lif_bad_arguments():
    with pytest.raises(ValueError, match="decay"):
        PaperLIFNode(decay=1.5)
    with pytest.raises(ValueError, match="backend"):
        PaperLIFNode(kernel_backend="cuda")


def _reference_poisson(rate, uniform, w=0.5):
    """z_t = 1[u_t < r]; dz/dr = sum_t 1[|r - u_t| < w] / (2w), written as a plain loop."""
    z = torch.stack([(u < rate).float() for u in uniform])
    grad = sum(((rate - u).abs() < w).float() for u in uniform) / (2 * w)
    return z, grad


@pytest.mark.parametrize("w", [0.5, 0.25])
def test_poisson_forward_and_gradient_exact(w):
    rate = torch.rand(5, 7, generator=torch.Generator().manual_seed(3)).requires_grad_()
    z = poisson_spikes(rate, 16, half_width=w, generator=torch.Generator().manual_seed(4))
    z.sum().backward()
    uniform = torch.rand(16, 5, 7, generator=torch.Generator().manual_seed(4))
    z_ref, grad_ref = _reference_poisson(rate.detach(), uniform, w)
    assert torch.equal(z, z_ref)
    assert torch.equal(rate.grad, grad_ref)


def test_poisson_latent_layer_modes():
    layer = PoissonLatent(T=16)
    rate = torch.rand(4, 9, generator=torch.Generator().manual_seed(5))
    z = layer(rate, generator=torch.Generator().manual_seed(6))
    assert z.shape == (16, 4, 9) and set(z.unique().tolist()) <= {0.0, 1.0}
    # a spike-train input is reduced to its rate, with gradient 1/T' per step
    spikes = (torch.rand(8, 4, 9, generator=torch.Generator().manual_seed(7)) < 0.5).float().requires_grad_()
    z2 = layer(spikes, generator=torch.Generator().manual_seed(6))
    uniform = torch.rand(16, 4, 9, generator=torch.Generator().manual_seed(6))
    z_ref, grad_ref = _reference_poisson(spikes.detach().mean(0), uniform)
    assert torch.equal(z2, z_ref)
    z2.sum().backward()
    assert torch.equal(spikes.grad, (grad_ref / 8).expand(8, 4, 9))
    # rates of any shape with input="rate"; single-step mode gives one step
    img_rate = torch.rand(2, 3, 4, 4)
    assert PoissonLatent(T=5, input="rate")(img_rate).shape == (5, 2, 3, 4, 4)
    single = PoissonLatent(step_mode="s")(rate, generator=torch.Generator().manual_seed(8))
    assert torch.equal(single, (torch.rand(1, 4, 9, generator=torch.Generator().manual_seed(8))[0] < rate).float())


def test_poisson_statistics():
    """Mean spike count over T is the rate (law of large numbers on a big tensor)."""
    rate = torch.linspace(0, 1, 11).repeat(2000, 1)
    z = PoissonLatent(T=16)(rate, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(z.mean(dim=(0, 1)), rate[0], atol=0.01)
    assert z[:, :, 0].sum() == 0 and z[:, :, -1].all()


def test_poisson_generator_attribute_and_fresh_draws():
    layer = PoissonLatent(T=16, generator=torch.Generator().manual_seed(0))
    rate = torch.full((3, 5), 0.5)
    a, b = layer(rate), layer(rate)
    assert not torch.equal(a, b)  # fresh uniforms every call
    layer.generator.manual_seed(0)
    assert torch.equal(layer(rate), a)


def test_poisson_bad_input():
    layer = PoissonLatent()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        layer(torch.tensor([[1.5, 0.2]]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        layer(torch.tensor([[-0.1, 0.2]]))
    with pytest.raises(ValueError, match="floating"):
        layer(torch.tensor([[1, 0]]))
    with pytest.raises(ValueError, match="T must"):
        PoissonLatent(T=0)


def test_registry():
    assert isinstance(get_neuron("poisson", T=4), PoissonLatent)
    assert isinstance(get_neuron("paper_lif"), PaperLIFNode)
    with pytest.raises(ValueError, match="registered"):
        get_neuron("nope")


@pytest.mark.parametrize("step_mode", ["s", "m"])
def test_kernel_backend_is_ours_and_spikingjelly_backend_stays_valid(step_mode):
    """Our switch is ``kernel_backend``; SpikingJelly 0.0.0.0.14's own ``backend`` (validated against
    ``supported_backends``) stays "torch"; 2.0 has neither attribute."""
    for module in (PaperLIFNode(step_mode=step_mode, kernel_backend="torch"),
                   PoissonLatent(step_mode=step_mode, kernel_backend="torch")):
        assert module.kernel_backend == "torch" and module.step_mode == step_mode
        if hasattr(module, "supported_backends"):  # SpikingJelly 0.0.0.0.14
            assert module.backend == "torch" and module.backend in module.supported_backends
        assert "kernel_backend=torch" in repr(module)
    with pytest.raises(ValueError, match="kernel_backend must be one of"):
        PoissonLatent(kernel_backend="gpu")


@pytest.mark.parametrize("v_reset", [0.0, 0.1])
def test_lif_stale_state_of_another_shape_behaves_as_a_reset_neuron(v_reset):
    """A membrane left from another batch size is discarded: the neuron starts from v_reset as a fresh one."""
    x = torch.zeros(1, 3, 2)
    fresh = PaperLIFNode(v_reset=v_reset)
    stale = PaperLIFNode(v_reset=v_reset)
    stale(torch.full((1, 5, 2), 0.15))  # leaves v of shape [5, 2]
    assert torch.equal(stale(x), fresh(x)) and torch.equal(stale.v, fresh.v)
    assert torch.allclose(fresh.v, torch.full((3, 2), v_reset))
