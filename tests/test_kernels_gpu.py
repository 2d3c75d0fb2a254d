"""CuPy kernels on a real GPU against the torch path (skipped without CUDA and a working CuPy).

Both paths run the same float32 operations in the same order, so spikes must be identical; gradients are
asserted within 1e-6 (float32) and within the stated half/bfloat16 tolerances, and the maximum
differences are printed (``pytest -s``) for the record.
"""
import pytest
import torch

from spikingjelly_vae import kernels
from spikingjelly_vae.kernels import dispatch
from spikingjelly_vae.kernels import lif as klif
from spikingjelly_vae.kernels import poisson as kpoisson


def _cupy_ok():
    if not torch.cuda.is_available():
        return False
    cupy, _ = dispatch.import_cupy()
    return cupy is not None


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _cupy_ok(), reason="needs CUDA and a working CuPy")]
T = 16
# half/bfloat16: same float32 arithmetic in both paths, so exact agreement is expected; these bounds
# only allow for a future torch that computes an op differently. Spikes must always be equal.
GRAD_TOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def _input(shape, seed, dtype=torch.float32):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (torch.randn(shape, generator=g, device="cuda") * 0.4 + 0.12).to(dtype)


def _lif_both(x, grad, **setting):
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_k = kernels.lif_multistep(a, backend="cupy", **setting)
    out_t = kernels.lif_multistep_torch(b, **setting)
    assert out_k.grad_fn is not None and "LIFCuPy" in type(out_k.grad_fn).__name__
    out_k.backward(grad)
    out_t.backward(grad)
    return out_k, out_t, a.grad, b.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(T, 1), (T, 7), (T, 3, 5), (T, 256, 32, 16, 16), (1, 300),
                                   (T, 2, 3, 4, 5)])
@pytest.mark.parametrize("setting", [dict(), dict(centre=0.2), dict(decay=0.5, v_threshold=0.3, v_reset=-0.1,
                                                                    centre=0.3, half_width=0.4)])
def test_lif_cupy_equals_torch_path(dtype, shape, setting):
    x, grad = _input(shape, 1, dtype), _input(shape, 2, dtype)
    out_k, out_t, g_k, g_t = _lif_both(x, grad, **setting)
    assert out_k.dtype == dtype and torch.equal(out_k, out_t)
    diff = (g_k.float() - g_t.float()).abs().max().item()
    print(f"lif {dtype} {shape} {setting}: max |grad diff| = {diff:.3g}")
    assert diff <= GRAD_TOL[dtype]


def test_lif_cupy_matches_plain_loop_and_spikingjelly():
    from spikingjelly.activation_based import functional, neuron

    from spikingjelly_vae.surrogate import RectangleSurrogate
    from test_kernels import reference_lif

    x, grad = _input((T, 64, 33), 3), _input((T, 64, 33), 4)
    a, b, c = (x.clone().requires_grad_() for _ in range(3))
    out = kernels.lif_multistep(a, backend="cupy")
    ref = reference_lif(b)
    node = neuron.LIFNode(tau=4.0 / 3.0, decay_input=False, v_threshold=0.2, v_reset=0.0,
                          surrogate_function=RectangleSurrogate(0.0, 0.5, 0.2), detach_reset=False,
                          step_mode="m")
    sj = node(c)
    functional.reset_net(node)
    assert torch.equal(out, ref) and torch.equal(out, sj)
    for o in (out, ref, sj):
        o.backward(grad)
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-6)
    torch.testing.assert_close(a.grad, c.grad, rtol=0, atol=1e-6)


def test_lif_cupy_non_contiguous_and_no_grad():
    base = _input((8, T, 40), 5)
    x = base.transpose(0, 1)[:, :, ::3]
    assert not x.is_contiguous()
    out_k, out_t, g_k, g_t = _lif_both(x, _input(x.shape, 6))
    assert torch.equal(out_k, out_t)
    torch.testing.assert_close(g_k, g_t, rtol=0, atol=1e-6)
    with torch.no_grad():
        plain = kernels.lif_multistep(x, backend="cupy")
    assert plain.grad_fn is None and torch.equal(plain, out_t.detach())


def test_lif_cupy_runs_on_torch_current_stream():
    """Work queued on a side stream must be ordered with the kernel launched there (no race)."""
    x = _input((T, 512, 1024), 7)
    expected = kernels.lif_multistep_torch(x)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        y = x * 1.0  # queued on the side stream; the kernel must see it finished
        torch.cuda._sleep(10_000_000)
        out = kernels.lif_multistep(y + 0.0, backend="cupy")
    torch.cuda.current_stream().wait_stream(side)
    assert torch.equal(out, expected)


def test_lif_cupy_memory_kept_for_backward():
    """Saved for backward: the spikes (returned anyway) and h, both in the input dtype."""
    x = _input((T, 128, 32, 16, 16), 8, torch.float16).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = kernels.lif_multistep(x, backend="cupy")
    assert sum(t.numel() * t.element_size() for t in saved) == 2 * x.numel() * x.element_size()
    assert any(t.data_ptr() == out.data_ptr() for t in saved)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("half_width", [0.5, 0.3])
def test_poisson_cupy_equals_torch_path(dtype, half_width):
    gen = torch.Generator(device="cuda").manual_seed(0)
    rate = torch.rand(256, 128, device="cuda", generator=gen).to(dtype)
    grad = _input((T, 256, 128), 1, dtype)
    a, b = rate.clone().requires_grad_(), rate.clone().requires_grad_()
    z_k = kernels.poisson_sample(a, T, half_width, gen.manual_seed(9), backend="cupy")
    z_t = kernels.poisson_sample(b, T, half_width, gen.manual_seed(9), backend="torch")
    assert "PoissonCuPy" in type(z_k.grad_fn).__name__
    assert torch.equal(z_k, z_t)
    z_k.backward(grad)
    z_t.backward(grad)
    diff = (a.grad.float() - b.grad.float()).abs().max().item()
    print(f"poisson {dtype} w={half_width}: max |grad diff| = {diff:.3g}")
    assert diff <= GRAD_TOL[dtype] * 16


def test_poisson_cupy_matches_lead_functional():
    from spikingjelly_vae.neuron import poisson_spikes

    rate = torch.rand(64, 128, device="cuda")
    a, b = rate.clone().requires_grad_(), rate.clone().requires_grad_()
    z_k = kernels.poisson_sample(a, T, 0.5, torch.Generator(device="cuda").manual_seed(2), backend="cupy")
    z_f = poisson_spikes(b, T, 0.5, torch.Generator(device="cuda").manual_seed(2))
    assert torch.equal(z_k, z_f)
    grad = _input((T, 64, 128), 3)
    z_k.backward(grad)
    z_f.backward(grad)
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-5)


def test_uniform_draws_given_directly():
    rate = torch.rand(1000, device="cuda")
    u = torch.rand(T, 1000, device="cuda")
    z_k, w_k = kpoisson.cupy_forward(rate, u, 0.5, keep_window=True)
    z_t, w_t = kpoisson.torch_forward(rate, u, 0.5, keep_window=True)
    assert torch.equal(z_k, z_t) and torch.equal(w_k, w_t)


def test_dispatch_picks_cupy_for_cuda_tensors():
    assert kernels.select_backend(torch.zeros(2, device="cuda"), "auto") == "cupy"
    assert kernels.select_backend(torch.zeros(2, device="cuda", dtype=torch.float64), "auto") == "torch"
    assert kernels.select_backend(torch.zeros(2, device="cuda"), "torch") == "torch"


def test_paper_lif_node_cupy_equals_torch():
    """The lead's PaperLIFNode with backend="cupy" (our kernel) against its own torch loop."""
    from spikingjelly.activation_based import functional

    from spikingjelly_vae.neuron import PaperLIFNode

    x, grad = _input((T, 32, 64), 10), _input((T, 32, 64), 11)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    n_k, n_t = PaperLIFNode(kernel_backend="cupy"), PaperLIFNode(kernel_backend="torch")
    out_k, out_t = n_k(a), n_t(b)
    functional.reset_net(n_k)
    functional.reset_net(n_t)
    assert torch.equal(out_k, out_t)
    out_k.backward(grad)
    out_t.backward(grad)
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("setting", [dict(), dict(decay=0.5, v_threshold=0.3, v_reset=-0.1, centre=0.3,
                                                  half_width=0.4)])
def test_lif_cupy_state_equals_torch_path(dtype, setting):
    """v_init in, v_last out (float32), gradients into both; and a split sequence equals one call."""
    shape = (T, 64, 33)
    x, grad = _input(shape, 13, dtype), _input(shape, 14, dtype)
    v0, grad_v = _input(shape[1:], 15), _input(shape[1:], 16)
    leaves = [(x.clone().requires_grad_(), v0.clone().requires_grad_()) for _ in range(2)]
    outs = [kernels.lif_multistep(a, v_init=v, return_v=True, backend=b, **setting)
            for (a, v), b in zip(leaves, ("cupy", "torch"))]
    (s_k, vl_k), (s_t, vl_t) = outs
    assert "LIFCuPy" in type(s_k.grad_fn).__name__
    assert torch.equal(s_k, s_t) and vl_k.dtype == torch.float32 and torch.equal(vl_k, vl_t)
    for s, vl in outs:
        torch.autograd.backward([s, vl], [grad, grad_v])
    (a_k, v_k), (a_t, v_t) = leaves
    diff = max((a_k.grad.float() - a_t.grad.float()).abs().max().item(), (v_k.grad - v_t.grad).abs().max().item())
    print(f"lif state {dtype} {setting}: max |grad diff| = {diff:.3g}")
    assert diff <= GRAD_TOL[dtype]

    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    whole = kernels.lif_multistep(a, backend="cupy", **setting)
    first, v = kernels.lif_multistep(b[:5], backend="cupy", return_v=True, **setting)
    split = torch.cat([first, kernels.lif_multistep(b[5:], backend="cupy", v_init=v, **setting)])
    assert torch.equal(split, whole)
    whole.backward(grad)
    split.backward(grad)
    assert torch.equal(a.grad, b.grad)


def test_paper_lif_node_cupy_carries_state_like_torch():
    """Two calls without reset_net on backend="cupy" (kernel) and "torch" (fused torch loop), and the
    plain autograd loop (store_v_seq=True): same spikes, final membrane and gradients."""
    from spikingjelly_vae.neuron import PaperLIFNode

    x, grad = _input((T, 32, 64), 17), _input((T, 32, 64), 18)
    nodes = [PaperLIFNode(kernel_backend="cupy"), PaperLIFNode(kernel_backend="torch"), PaperLIFNode(store_v_seq=True)]
    leaves = [x.clone().requires_grad_() for _ in nodes]
    outs = [torch.cat([n(a[:7]), n(a[7:])]) for n, a in zip(nodes, leaves)]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    assert torch.equal(nodes[0].v, nodes[1].v)
    torch.testing.assert_close(nodes[0].v, nodes[2].v, rtol=0, atol=1e-6)
    for o in outs:
        o.backward(grad)
    for a in leaves[1:]:
        torch.testing.assert_close(leaves[0].grad, a.grad, rtol=0, atol=1e-6)


def test_kernels_compile_once_per_dtype():
    from spikingjelly_vae.kernels import launch

    launch.get_kernel.cache_clear()
    x = _input((T, 10), 12)
    for _ in range(3):
        kernels.lif_multistep(x, backend="cupy")
    info = launch.get_kernel.cache_info()
    assert info.misses == 1 and info.hits == 2
    assert launch._module.cache_info().currsize >= 1


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("backend", ["cupy", "torch"])
def test_tdbn_lif_equals_unfused_on_cuda(training, backend):
    """kernels.tdbn_lif (fused tdBN + LIF, recomputing backward) vs bn_lif.tdbn -> lif_multistep on CUDA
    (in training cuDNN or native BN, whichever torch picks for both): spikes and running statistics equal,
    gradients within 1e-6 (equality expected: the same BN kernels run)."""
    from spikingjelly_vae.kernels.bn_lif import tdbn

    g = torch.Generator(device="cuda").manual_seed(3)
    x = torch.randn(16, 32, 64, 8, 8, device="cuda", generator=g) * 0.7 + 0.1
    w, b = torch.rand(64, device="cuda", generator=g) + 0.5, torch.randn(64, device="cuda", generator=g) * 0.1
    grad = torch.randn(x.shape, device="cuda", generator=g)
    out = []
    for fused in (True, False):
        leaves = [t.clone().requires_grad_() for t in (x, w, b)]
        rm, rv = torch.zeros(64, device="cuda"), torch.ones(64, device="cuda")
        if fused:
            s = kernels.tdbn_lif(*leaves, running_mean=rm, running_var=rv, training=training, scale=0.2,
                                 backend=backend)
        else:
            y = tdbn(leaves[0].flatten(0, 1), leaves[1], leaves[2], rm, rv, training, 0.1, 1e-5, 0.2)
            s = kernels.lif_multistep(y.unflatten(0, x.shape[:2]), backend=backend)
        s.backward(grad)
        out.append((s, rm, rv, *(t.grad for t in leaves)))
    for a, c in zip(out[0][:3], out[1][:3]):
        assert torch.equal(a, c)
    for a, c in zip(out[0][3:], out[1][3:]):
        torch.testing.assert_close(a, c, rtol=0, atol=1e-6)
