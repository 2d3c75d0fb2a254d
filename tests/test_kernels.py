"""Torch paths of ``spikingjelly_vae.kernels`` against independent plain-PyTorch loops, and the dispatch."""
import logging
import types

import pytest
import torch

from spikingjelly_vae import kernels
from spikingjelly_vae.kernels import dispatch, lif_multistep, lif_multistep_torch, poisson_sample

T = 16


def reference_lif(x_seq, decay=0.25, v_threshold=0.2, v_reset=0.0, centre=0.0, half_width=0.5):
    """Plain autograd loop written from reference_spec 1.1 (SpikingJelly's >= firing, hard reset).

    u_t = v_r + decay (v_{t-1} - v_r) + x_t (paper, v_r = 0: decay * u_{t-1} * (1 - o_{t-1}) + x_t),
    o_t = 1[u_t >= v_th] with do/du = 1[|u - centre| < w] / (2w), v_t = u_t (1 - o_t) + v_r o_t.
    """
    spikes, v, o = [], None, None
    for t in range(x_seq.shape[0]):
        if v_reset == 0.0:
            u = x_seq[t] if t == 0 else decay * (u * (1 - o)) + x_seq[t]
        else:
            v = torch.full_like(x_seq[0], v_reset) if t == 0 else u * (1 - o) + v_reset * o
            u = (v - v_reset) * decay + v_reset + x_seq[t]
        window = ((u.detach() - centre).abs() < half_width).to(u.dtype) / (2 * half_width)
        o = (u.detach() >= v_threshold).to(u.dtype) + (u - u.detach()) * window  # value exact, grad = window
        spikes.append(o)
    return torch.stack(spikes)


def _input(shape, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 0.4 + 0.12).to(dtype)


SETTINGS = [
    dict(),  # the paper: decay 0.25, v_th 0.2, reset 0, window u in (-0.5, 0.5)
    dict(centre=0.2, half_width=0.5),  # SpikingJelly-style threshold-centred window
    dict(centre=0.1, half_width=0.25),
    dict(decay=0.5, v_threshold=0.3, v_reset=-0.1, centre=0.3, half_width=0.4),
]
SHAPES = [(T,), (T, 7), (T, 3, 5), (T, 2, 3, 4, 5)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("setting", SETTINGS)
def test_torch_path_matches_plain_loop(shape, setting):
    x = _input(shape, seed=len(shape)).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    grad = _input(shape, seed=99)
    out = lif_multistep_torch(x, **setting)
    ref = reference_lif(x_ref, **setting)
    assert out.dtype == x.dtype and out.shape == x.shape
    assert torch.equal(out, ref)
    assert 0 < out.mean() < 1  # both spiking and silent steps occur
    out.backward(grad)
    ref.backward(grad)
    assert x.grad.abs().max() > 0
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=1e-6)


def test_fires_at_equality_and_resets_to_v_reset():
    x = torch.zeros(T, 3)
    x[0] = torch.tensor([0.2, 0.19999999, 0.3])
    x[1] = torch.tensor([0.0, 0.2, 0.0])
    out = lif_multistep_torch(x)
    assert out[0].tolist() == [1.0, 0.0, 1.0]  # h >= v_th fires (SpikingJelly), just below does not
    # step 1: neuron 0 was reset to 0 -> h = 0; neuron 1 kept 0.19999999 -> 0.05 + 0.2 fires
    assert out[1].tolist() == [0.0, 1.0, 0.0]


@pytest.mark.parametrize("setting", SETTINGS[:2])
def test_non_contiguous_input(setting):
    base = _input((5, T, 6), seed=3)
    x = base.transpose(0, 1)[:, :, ::2].requires_grad_()  # [T, 5, 3], non-contiguous leaf view
    assert not x.is_contiguous()
    x_ref = x.detach().contiguous().requires_grad_()
    out, ref = lif_multistep_torch(x, **setting), reference_lif(x_ref, **setting)
    assert torch.equal(out, ref)
    out.sum().backward()  # expanded (stride-0) incoming gradient
    ref.sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=1e-6)


def test_matches_spikingjelly_lifnode_with_rectangle_surrogate():
    """The lead's torch reference: SpikingJelly LIFNode(tau=4/3, decay_input=False, ...) + our surrogate."""
    from spikingjelly.activation_based import functional, neuron

    from spikingjelly_vae.surrogate import RectangleSurrogate

    for centre in (0.0, 0.2):
        node = neuron.LIFNode(tau=1.0 / (1.0 - 0.25), decay_input=False, v_threshold=0.2, v_reset=0.0,
                              surrogate_function=RectangleSurrogate(centre, 0.5, 0.2), detach_reset=False,
                              step_mode="m")
        x = _input((T, 4, 8), seed=5).requires_grad_()
        x_sj = x.detach().clone().requires_grad_()
        out, ref = lif_multistep_torch(x, centre=centre), node(x_sj)
        functional.reset_net(node)
        assert torch.equal(out, ref)
        grad = _input((T, 4, 8), seed=6)
        out.backward(grad)
        ref.backward(grad)
        torch.testing.assert_close(x.grad, x_sj.grad, rtol=0, atol=1e-6)


def test_no_grad_path_same_spikes_and_no_graph():
    x = _input((T, 4, 6), seed=7)
    with_grad = lif_multistep_torch(x.clone().requires_grad_())
    with torch.no_grad():
        plain = lif_multistep(x.requires_grad_())
    assert not plain.requires_grad and plain.grad_fn is None
    assert torch.equal(plain, with_grad.detach())


@pytest.mark.parametrize("dtype, atol", [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
def test_low_precision_computes_in_float32(dtype, atol):
    """Half/bfloat16 inputs: spikes equal the float32 computation on the same (rounded) inputs; gradients
    differ only by h being stored in the input dtype (tolerance ``atol`` on 99% of the elements)."""
    x16 = _input((T, 6, 40), seed=8, dtype=dtype).requires_grad_()
    x32 = x16.detach().float().requires_grad_()
    out16, out32 = lif_multistep_torch(x16), lif_multistep_torch(x32)
    assert out16.dtype == dtype
    assert torch.equal(out16.float(), out32)
    grad = _input((T, 6, 40), seed=9, dtype=dtype)
    out16.backward(grad)
    out32.backward(grad.float())
    assert x16.grad.dtype == dtype
    close = (x16.grad.float() - x32.grad).abs() <= atol + 0.01 * x32.grad.abs()
    assert close.float().mean() >= 0.99


def test_bad_lif_input():
    with pytest.raises(ValueError, match="floating-point"):
        lif_multistep(torch.ones(T, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="T >= 1"):
        lif_multistep(torch.ones(0, 3))
    with pytest.raises(ValueError, match="half_width"):
        lif_multistep(torch.ones(T, 3), half_width=0.0)
    with pytest.raises(ValueError, match="decay"):
        lif_multistep(torch.ones(T, 3), decay=1.5)
    with pytest.raises(ValueError, match="backend"):
        lif_multistep(torch.ones(T, 3), backend="triton")


# ---------------------------------------------------------------------------------------------- Poisson

@pytest.mark.parametrize("half_width", [0.5, 0.25])
@pytest.mark.parametrize("shape", [(5,), (4, 9), (2, 3, 4)])
def test_poisson_torch_path_matches_hand_loop(shape, half_width):
    rate = torch.rand(shape, generator=torch.Generator().manual_seed(1)).requires_grad_()
    grad = _input((T, *shape), seed=2)
    z = poisson_sample(rate, T, half_width=half_width, generator=torch.Generator().manual_seed(42))
    z.backward(grad)

    u = torch.rand((T, *shape), generator=torch.Generator().manual_seed(42))  # the same draws
    r = rate.detach()
    expected_grad = torch.zeros(shape)
    for t in range(T):
        assert torch.equal(z[t], (u[t] < r).float())
        expected_grad += grad[t] * ((r - u[t]).abs() < half_width).float() / (2 * half_width)
    assert torch.equal(rate.grad, expected_grad)  # w = 0.5, 0.25: power-of-two scaling, exact


def test_poisson_matches_lead_functional_and_no_grad():
    from spikingjelly_vae.neuron import poisson_spikes

    rate = torch.rand(8, 32, generator=torch.Generator().manual_seed(3))
    r1, r2 = rate.clone().requires_grad_(), rate.clone().requires_grad_()
    z1 = poisson_sample(r1, T, 0.3, generator=torch.Generator().manual_seed(4))
    z2 = poisson_spikes(r2, T, 0.3, generator=torch.Generator().manual_seed(4))
    assert torch.equal(z1, z2)
    grad = _input((T, 8, 32), seed=5)
    z1.backward(grad)
    z2.backward(grad)
    torch.testing.assert_close(r1.grad, r2.grad, rtol=0, atol=1e-5)
    with torch.no_grad():
        z3 = poisson_sample(r1, T, 0.3, generator=torch.Generator().manual_seed(4))
    assert z3.grad_fn is None and torch.equal(z3, z1.detach())


def test_poisson_bad_input():
    with pytest.raises(ValueError, match="floating-point"):
        poisson_sample(torch.ones(3, dtype=torch.long), T)
    with pytest.raises(ValueError, match="T must"):
        poisson_sample(torch.rand(3), 0)
    with pytest.raises(ValueError, match="half_width"):
        poisson_sample(torch.rand(3), T, half_width=-1.0)


# ---------------------------------------------------------------------------------------------- dispatch

@pytest.fixture
def fresh_log():
    dispatch._said.clear()
    yield
    dispatch._said.clear()


def _reasons(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "spikingjelly_vae.kernels"]


def test_dispatch_cpu_tensor_uses_torch_and_logs_once(caplog, fresh_log):
    caplog.set_level(logging.INFO, logger="spikingjelly_vae.kernels")
    x = torch.zeros(T, 2)
    assert kernels.select_backend(x, "auto") == "torch"
    assert kernels.select_backend(x, "auto") == "torch"
    lif_multistep(x)
    msgs = _reasons(caplog)
    assert len(msgs) == 1 and "torch" in msgs[0] and "tensor is on cpu" in msgs[0]
    assert kernels.select_backend(x, "torch") == "torch"
    assert "requested backend='torch'" in _reasons(caplog)[-1]


def test_dispatch_cupy_request_on_cpu_warns(caplog, fresh_log):
    caplog.set_level(logging.INFO, logger="spikingjelly_vae.kernels")
    assert kernels.select_backend(torch.zeros(2), "cupy") == "torch"
    (record,) = [r for r in caplog.records if r.name == "spikingjelly_vae.kernels"]
    assert record.levelno == logging.WARNING and "need CUDA" in record.getMessage()
    with pytest.raises(ValueError, match="backend must be one of"):
        kernels.select_backend(torch.zeros(2), "gpu")


def test_dispatch_rules_for_cuda_tensors(monkeypatch, caplog, fresh_log):
    """The CUDA branches, with a stand-in tensor and a stand-in CuPy (no GPU needed)."""
    caplog.set_level(logging.INFO, logger="spikingjelly_vae.kernels")
    fake = types.SimpleNamespace(is_cuda=True, dtype=torch.float32, device=torch.device("cuda", 0))
    monkeypatch.setattr(dispatch, "import_cupy", lambda: (None, "CuPy is not importable (ImportError: x)"))
    assert kernels.select_backend(fake) == "torch"
    assert "CuPy is not importable" in _reasons(caplog)[-1]
    monkeypatch.setattr(dispatch, "import_cupy", lambda: (None, "CuPy sees no CUDA device"))
    assert kernels.select_backend(fake) == "torch"
    assert "no CUDA device" in _reasons(caplog)[-1]
    monkeypatch.setattr(dispatch, "import_cupy", lambda: (types.SimpleNamespace(__version__="14.x"), ""))
    assert kernels.select_backend(fake) == "cupy"
    assert "cupy backend" in _reasons(caplog)[-1]
    fake.dtype = torch.float64
    assert kernels.select_backend(fake) == "torch"
    assert "no CuPy kernel for dtype torch.float64" in _reasons(caplog)[-1]


def test_float64_runs_in_float64_with_exact_constants():
    """float64 inputs take the torch path in float64 with unrounded constants: h = 0.2 and h = 0.2 + 1e-9
    fire (both lie below float32(0.2) = 0.2 + 2.98e-9, so a float32-rounded threshold would not fire)."""
    x = torch.zeros(T, 2, dtype=torch.float64)
    x[0] = torch.tensor([0.2, 0.2 + 1e-9], dtype=torch.float64)  # float32(0.2) = 0.2 + 2.98e-9
    out = lif_multistep(x)
    assert out.dtype == torch.float64 and out[0].tolist() == [1.0, 1.0]
    x64 = _input((T, 3, 7), seed=11, dtype=torch.float64).requires_grad_()
    x_ref = x64.detach().clone().requires_grad_()
    out, ref = lif_multistep(x64), reference_lif(x_ref)
    assert torch.equal(out, ref)
    out.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(x64.grad, x_ref.grad, rtol=0, atol=1e-12)
