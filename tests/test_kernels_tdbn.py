"""kernels.tdbn_lif (opt-in fused tdBN + LIF) against the unfused composition tdBN -> LIF: spikes, running
statistics and gradients bit for bit, and less kept for backward."""
import pytest
import torch
from spikingjelly_vae.kernels import lif_multistep, tdbn_lif
from spikingjelly_vae.kernels.bn_lif import tdbn

SCALE = 0.2  # alpha * v_th


def _inputs(shape, seed):
    g = torch.Generator().manual_seed(seed)
    C = shape[2]
    x = torch.randn(shape, generator=g) * 0.7 + 0.1
    w = torch.rand(C, generator=g) + 0.5
    b = torch.randn(C, generator=g) * 0.1
    return x, w, b, torch.randn(shape, generator=g), torch.randn(C, generator=g) * 0.1, torch.rand(C, generator=g)


def _unfused(x, w, b, rm, rv, training, v0=None):
    y = tdbn(x.flatten(0, 1), w, b, rm, rv, training, 0.1, 1e-5, SCALE).unflatten(0, x.shape[:2])
    return lif_multistep(y, backend="torch", v_init=v0, return_v=True)


def _fused(x, w, b, rm, rv, training, v0=None):
    return tdbn_lif(x, w, b, running_mean=rm, running_var=rv, training=training, scale=SCALE, v_init=v0,
                    backend="torch", return_v=True)


@pytest.mark.parametrize("shape", [(4, 3, 5), (4, 2, 3, 6, 6)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("with_v0", [False, True])
def test_fused_equals_unfused_bitwise(shape, training, with_v0):
    x, w, b, g, rm0, rv0 = _inputs(shape, 0)
    v0 = torch.randn(shape[1:], generator=torch.Generator().manual_seed(5)) * 0.1 if with_v0 else None
    runs = []
    for fn in (_unfused, _fused):
        leaves = [t.clone().requires_grad_() for t in (x, w, b)]
        v = None if v0 is None else v0.clone().requires_grad_()
        rm, rv = rm0.clone(), rv0.clone()
        spikes, v_last = fn(*leaves, rm, rv, training, v)
        torch.autograd.backward([spikes, v_last], [g, torch.ones_like(v_last)])
        runs.append((spikes, v_last, rm, rv, *(t.grad for t in leaves), None if v is None else v.grad))
    assert 0.05 < runs[0][0].mean() < 0.95
    for a, c in zip(*runs):
        assert (a is None and c is None) or torch.equal(a, c)


def test_fused_keeps_less_for_backward():
    x, w, b, *_ = _inputs((8, 4, 3, 8, 8), 1)

    def saved_bytes(fn):
        seen = {}

        def pack(t):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        leaves = [t.clone().requires_grad_() for t in (x, w, b)]
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(*leaves, torch.zeros(3), torch.ones(3), True)
        return sum(seen.values())

    unfused, fused = saved_bytes(_unfused), saved_bytes(_fused)
    assert fused <= unfused - x.numel() * 4 + 64  # h (one float32 per element) is not kept


def test_bad_input():
    x, w, b, *_ = _inputs((4, 3, 5), 2)
    with pytest.raises(ValueError, match="weight and bias"):
        tdbn_lif(x, w[:2], b, running_mean=None, running_var=None, training=True)
    with pytest.raises(ValueError, match=r"\[T, N, C"):
        tdbn_lif(x[0, 0], w, b, running_mean=None, running_var=None, training=True)


@pytest.mark.parametrize("shape", [(12, 5), (6, 4, 3, 3)])
def test_eval_tdbn_in_place_equals_the_graph_and_the_official_order(shape):
    """Eval tdBN without autograd works in place on one buffer; with autograd it builds the graph. Both give
    scale * (x - mean) / sqrt(var + eps) * weight + bias bit for bit, and the graph's gradients flow."""
    g = torch.Generator().manual_seed(3)
    C = shape[1]
    x = torch.randn(shape, generator=g)
    w, b = torch.rand(C, generator=g) + 0.5, torch.randn(C, generator=g) * 0.1
    rm, rv = torch.randn(C, generator=g) * 0.1, torch.rand(C, generator=g) + 0.5
    view = (-1,) + (1,) * (len(shape) - 2)
    want = SCALE * (x - rm.view(view)) / torch.sqrt(rv.view(view) + 1e-5) * w.view(view) + b.view(view)
    with torch.no_grad():
        in_place = tdbn(x, w, b, rm, rv, False, 0.1, 1e-5, SCALE)
    xg = x.clone().requires_grad_(True)
    graph = tdbn(xg, w, b, rm, rv, False, 0.1, 1e-5, SCALE)
    graph.sum().backward()
    assert torch.equal(in_place, want) and torch.equal(graph.detach(), want)
    expected = (SCALE / torch.sqrt(rv + 1e-5) * w).view(view).expand(shape)
    torch.testing.assert_close(xg.grad, expected)
    assert torch.equal(x, xg.detach())  # the input is never written
