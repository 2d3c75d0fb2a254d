"""The LIF membrane state across calls: ``lif_multistep(v_init=..., return_v=True)`` and PaperLIFNode's
fused path, against an independent plain autograd loop that starts from a given membrane."""
import pytest
import torch
from spikingjelly.activation_based import functional as sj_functional

from spikingjelly_vae import PaperLIFNode
from spikingjelly_vae.kernels import lif_multistep, lif_multistep_torch

T = 16


class _RefSpike(torch.autograd.Function):
    """o = 1[u >= v_th]; do/du = 1[|u - c| < w] / (2w) (reference_spec 1.1)."""

    @staticmethod
    def forward(ctx, u, v_th, centre, w):
        ctx.save_for_backward(u)
        ctx.c, ctx.w = centre, w
        return (u >= v_th).to(u.dtype)

    @staticmethod
    def backward(ctx, g):
        (u,) = ctx.saved_tensors
        return g * ((u - ctx.c).abs() < ctx.w).to(g.dtype) / (2 * ctx.w), None, None, None


def reference_lif(x_seq, v0=None, decay=0.25, v_threshold=0.2, v_reset=0.0, centre=0.0, half_width=0.5,
                  us=None):
    """(spikes, final membrane) of u_t = v_r + decay (v_{t-1} - v_r) + x_t, o_t = 1[u_t >= v_th],
    v_t = u_t (1 - o_t) + v_r o_t, from v_{-1} = v0 (None: v_r); paper (v_r = 0): decay * u * (1 - o) + x.
    Each u_t is appended to the list ``us`` when one is given."""
    v = torch.full_like(x_seq[0], v_reset) if v0 is None else v0
    out = []
    for x in x_seq:
        u = decay * v + x if v_reset == 0.0 else v_reset + decay * (v - v_reset) + x
        o = _RefSpike.apply(u, v_threshold, centre, half_width)
        v = u * (1 - o) if v_reset == 0.0 else u * (1 - o) + v_reset * o
        out.append(o)
        if us is not None:
            us.append(u)
    return torch.stack(out), v


def _input(shape, seed, dtype=torch.float32, scale=0.4):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale + 0.12).to(dtype)


def _leaf(t):
    return t.detach().clone().requires_grad_()


SETTINGS = [dict(), dict(centre=0.1, half_width=0.25),
            dict(decay=0.5, v_threshold=0.3, v_reset=-0.1, centre=0.3, half_width=0.4)]


@pytest.mark.parametrize("setting", SETTINGS)
def test_v_init_and_v_last_against_plain_loop(setting):
    """Spikes and v_last exact; gradients into x and into v_init from a loss on spikes and v_last:
    bit-exact for the paper's v_reset = 0, within 1e-6 otherwise (autograd sums three terms into o)."""
    shape = (T, 6, 11)
    x, v0 = _input(shape, 1), _input(shape[1:], 2)
    gs, gv = _input(shape, 3), _input(shape[1:], 4)
    x1, v1, x2, v2 = _leaf(x), _leaf(v0), _leaf(x), _leaf(v0)
    s1, vl1 = lif_multistep_torch(x1, v_init=v1, return_v=True, **setting)
    s2, vl2 = reference_lif(x2, v2, **setting)
    assert torch.equal(s1, s2) and torch.equal(vl1, vl2) and 0.05 < s1.mean() < 0.95
    torch.autograd.backward([s1, vl1], [gs, gv])
    torch.autograd.backward([s2, vl2], [gs, gv])
    assert v1.grad.abs().max() > 0
    if setting.get("v_reset", 0.0) == 0.0:
        assert torch.equal(x1.grad, x2.grad) and torch.equal(v1.grad, v2.grad)
    else:
        torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-6)
        torch.testing.assert_close(v1.grad, v2.grad, rtol=0, atol=1e-6)


def test_grad_into_v_init_only_from_spikes_and_only_from_v_last():
    x, v0 = _input((T, 40), 5), _input((40,), 6)
    for use in ("spikes", "v_last"):
        x1, v1, x2, v2 = _leaf(x), _leaf(v0), _leaf(x), _leaf(v0)
        out1, out2 = lif_multistep(x1, v_init=v1, return_v=True), reference_lif(x2, v2)
        k = 0 if use == "spikes" else 1
        out1[k].sum().backward()
        out2[k].sum().backward()
        assert torch.equal(x1.grad, x2.grad) and torch.equal(v1.grad, v2.grad)
        assert v1.grad.abs().max() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_split_sequence_equals_one_call(dtype):
    """The state is kept in float32 (float64), so chunks that pass v_last on equal one call exactly."""
    x, g = _input((T, 5, 30), 7, dtype), _input((T, 5, 30), 8, dtype)
    a, b = _leaf(x), _leaf(x)
    whole = lif_multistep(a)
    first, v = lif_multistep(b[:6], return_v=True)
    assert v.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    second = lif_multistep(b[6:], v_init=v)
    assert torch.equal(torch.cat([first, second]), whole)
    whole.backward(g)
    torch.cat([first, second]).backward(g)
    assert torch.equal(a.grad, b.grad)


def test_no_grad_returns_the_same_v_last():
    x, v0 = _input((T, 3, 9), 9), _input((3, 9), 10)
    s1, vl1 = lif_multistep(_leaf(x), v_init=_leaf(v0), return_v=True)
    with torch.no_grad():
        s2, vl2 = lif_multistep(x, v_init=v0, return_v=True)
    assert vl2.grad_fn is None and torch.equal(s1, s2) and torch.equal(vl1, vl2)
    assert torch.equal(lif_multistep(x, v_init=v0), s2)  # v_init is not modified in place
    assert torch.equal(v0, _input((3, 9), 10))


def test_bad_v_init():
    x = torch.zeros(T, 3, 4)
    with pytest.raises(ValueError, match="shape"):
        lif_multistep(x, v_init=torch.zeros(4))
    with pytest.raises(ValueError, match="floating-point"):
        lif_multistep(x, v_init=torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="floating-point"):
        lif_multistep(x, v_init=0.5)


# ------------------------------------------------------------------------------------------ PaperLIFNode

def test_node_two_calls_equal_one_call_on_the_concatenation():
    """Without reset_net, call 2 continues call 1's membrane; spikes and the gradients into both chunks
    (and into the final membrane node.v) equal one plain loop over the whole sequence, bit for bit."""
    x, g, gv = _input((T, 8, 20), 11), _input((T, 8, 20), 12), _input((8, 20), 13)
    a, b, ref = _leaf(x[:7]), _leaf(x[7:]), _leaf(x)
    node = PaperLIFNode(kernel_backend="torch")
    s = torch.cat([node(a), node(b)])
    assert isinstance(node.v, torch.Tensor) and node.v.grad_fn is not None
    s_ref, v_ref = reference_lif(ref)
    assert torch.equal(s, s_ref) and torch.equal(node.v, v_ref)
    torch.autograd.backward([s, node.v], [g, gv])
    torch.autograd.backward([s_ref, v_ref], [g, gv])
    assert torch.equal(torch.cat([a.grad, b.grad]), ref.grad)
    assert a.grad.abs().max() > 0
    sj_functional.reset_net(node)
    assert node.v == 0.0
    assert torch.equal(node(x), s_ref)  # from a reset state again


@pytest.mark.parametrize("setting", SETTINGS)
def test_node_store_v_seq_against_plain_loop(setting):
    """store_v_seq runs the same kernel Function, which also returns h: over two calls, spikes, v_seq,
    v and the gradients (loss on spikes, on v_seq and on the final v) equal a plain autograd loop
    (gradients bit for bit for v_reset = 0)."""
    x, g, gh, gv = _input((T, 4, 6, 6), 14), _input((T, 4, 6, 6), 15), _input((T, 4, 6, 6), 18), \
        _input((4, 6, 6), 19)
    node = PaperLIFNode(store_v_seq=True, **setting)
    a, b = _leaf(x), _leaf(x)
    s1, h1 = [], []
    for part in (a[:9], a[9:]):
        s1.append(node(part))
        assert "LIFTorch" in type(s1[-1].grad_fn).__name__ and node.v_seq.shape == part.shape
        h1.append(node.v_seq)
    us = []
    s2, v2 = reference_lif(b, us=us, **setting)
    s1, h1, h2 = torch.cat(s1), torch.cat(h1), torch.stack(us)
    assert torch.equal(s1, s2) and torch.equal(h1, h2) and torch.equal(node.v, v2)
    torch.autograd.backward([s1, h1, node.v], [g, gh, gv])
    torch.autograd.backward([s2, h2, v2], [g, gh, gv])
    if setting.get("v_reset", 0.0) == 0.0:
        assert torch.equal(a.grad, b.grad)
    else:  # autograd sums three terms into o in another order (see test_v_init_and_v_last_against_plain_loop)
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-6)


def test_node_single_step_runs_the_kernel_function():
    node = PaperLIFNode(step_mode="s")
    x = _leaf(_input((3, 5), 20))
    s = node(x)
    assert "LIFTorch" in type(s.grad_fn.next_functions[0][0]).__name__
    assert s.shape == (3, 5) and node.v.shape == (3, 5)


def test_node_starts_from_a_float_state():
    """self.v a float other than v_reset (e.g. set by hand) is a full membrane of that value."""
    x = _input((T, 3, 7), 16)
    node = PaperLIFNode()
    node.v = 0.15
    s_ref, v_ref = reference_lif(x, torch.full((3, 7), 0.15))
    assert torch.equal(node(x), s_ref) and torch.equal(node.v, v_ref)


def test_node_state_in_no_grad_and_half_inputs():
    node = PaperLIFNode()
    x = _input((T, 2, 5), 17)
    with torch.no_grad():
        s = torch.cat([node(x[:4]), node(x[4:])])
    assert node.v.grad_fn is None and torch.equal(s, reference_lif(x)[0])
    sj_functional.reset_net(node)
    s16 = node(x.half())
    assert s16.dtype == torch.float16 and node.v.dtype == torch.float32  # the state stays float32
    assert torch.equal(s16.float(), lif_multistep(x.half().float()))
