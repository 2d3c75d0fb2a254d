"""tdBN, temporal blocks and the membrane readout against plain formulas (reference_spec 1.2-1.5)."""
import pytest
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional as sj_functional

from spikingjelly_vae import (MembraneOutputLayer, TemporalConv2d, TemporalConvTranspose2d, TemporalLinear,
                              ThresholdDependentBatchNorm)

from test_neuron import reference_lif


def reference_tdbn_train(x, weight, bias, alpha, v_th=0.2, eps=1e-5):
    """Reference tdBN on a time-last view: stats per channel over (N, H, W, T); y = a*Vth*x_hat*w + b."""
    c_dim = 2
    dims = [d for d in range(x.dim()) if d != c_dim]
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    shape = [1] * x.dim()
    shape[c_dim] = -1
    x_hat = (x - mean) / torch.sqrt(var + eps)
    return alpha * v_th * x_hat * weight.view(shape) + bias.view(shape), mean.flatten(), var.flatten()


@pytest.mark.parametrize("shape,alpha", [((4, 6, 3, 5, 5), 1.0), ((4, 6, 3), 2.0)])
def test_tdbn_train_eval_and_gradients(shape, alpha):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen) * 3 + 1
    g = torch.randn(shape, generator=gen)
    bn = ThresholdDependentBatchNorm(shape[2], alpha=alpha)
    assert torch.equal(bn.weight, torch.ones(shape[2])) and torch.equal(bn.bias, torch.zeros(shape[2]))
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5, generator=gen)
        bn.bias.uniform_(-0.5, 0.5, generator=gen)

    x1 = x.clone().requires_grad_()
    y = bn(x1)
    (y * g).sum().backward()
    w = bn.weight.detach().clone().requires_grad_()
    b = bn.bias.detach().clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    y_ref, mean, var = reference_tdbn_train(x2, w, b, alpha)
    (y_ref * g).sum().backward()
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.weight.grad, w.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.bias.grad, b.grad, rtol=1e-5, atol=1e-5)
    # running stats: momentum 0.1, unbiased variance n/(n-1)
    n = x.numel() // shape[2]
    torch.testing.assert_close(bn.running_mean, 0.1 * mean)
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * var * n / (n - 1))

    bn.eval()
    shape_c = [1] * x.dim()
    shape_c[2] = -1
    rm, rv = bn.running_mean.view(shape_c), bn.running_var.view(shape_c)
    y_eval = alpha * 0.2 * (x - rm) / torch.sqrt(rv + 1e-5) * bn.weight.view(shape_c) + bn.bias.view(shape_c)
    torch.testing.assert_close(bn(x), y_eval)


def test_tdbn_bad_shape():
    bn = ThresholdDependentBatchNorm(3)
    with pytest.raises(ValueError, match=r"\[T, N, C\]"):
        bn(torch.randn(4, 3, 5, 5))
    with pytest.raises(ValueError, match="3 channels"):
        bn(torch.randn(2, 4, 5))


def test_temporal_conv_is_a_shared_conv_per_step_then_tdbn_then_lif():
    gen = torch.Generator().manual_seed(1)
    block = TemporalConv2d(3, 4)
    x = torch.randn(5, 2, 3, 8, 8, generator=gen)
    y = block(x)
    conv = block.weight_layer
    per_step = torch.stack([F.conv2d(xt, conv.weight, conv.bias, stride=2, padding=1) for xt in x])
    bn_ref, _, _ = reference_tdbn_train(per_step, torch.ones(4), torch.zeros(4), 1.0)
    assert y.shape == (5, 2, 4, 4, 4)
    assert torch.equal(y, reference_lif(bn_ref))


def test_direct_input_shortcut_matches_explicit_repeat():
    """A stride-0 repeated input computes the conv once; output and gradients equal the explicit repeat."""
    torch.manual_seed(0)
    block = TemporalConv2d(1, 8)
    x = torch.randn(3, 1, 8, 8)
    xa = x.clone().requires_grad_()
    ya = block(xa.unsqueeze(0).expand(6, *x.shape))
    (ya * torch.arange(ya.numel()).reshape(ya.shape).sin()).sum().backward()
    grads_a = [p.grad.clone() for p in block.parameters()]
    block.zero_grad()
    sj_functional.reset_net(block)
    xb = x.clone().requires_grad_()
    yb = block(xb.unsqueeze(0).repeat(6, 1, 1, 1, 1))
    (yb * torch.arange(yb.numel()).reshape(yb.shape).sin()).sum().backward()
    assert torch.equal(ya, yb)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-6)
    for ga, p in zip(grads_a, block.parameters()):
        torch.testing.assert_close(ga, p.grad, rtol=1e-4, atol=1e-5)  # summation order differs


def test_temporal_conv_transpose_and_linear_shapes():
    y = TemporalConvTranspose2d(4, 2)(torch.randn(3, 2, 4, 4, 4))
    assert y.shape == (3, 2, 2, 8, 8)
    y = TemporalConvTranspose2d(4, 2, stride=1, output_padding=0, bn=False, spike=False)(torch.randn(3, 2, 4, 4, 4))
    assert y.shape == (3, 2, 2, 4, 4) and not set(y.unique().tolist()) <= {0.0, 1.0}
    lin = TemporalLinear(6, 5, alpha=2.0)
    assert lin.bn.alpha == 2.0
    x = torch.randn(4, 3, 6)
    y = lin(x)
    ref_bn, _, _ = reference_tdbn_train(x @ lin.weight_layer.weight.t() + lin.weight_layer.bias,
                                        torch.ones(5), torch.zeros(5), 2.0)
    assert torch.equal(y, reference_lif(ref_bn))


def test_membrane_output_layer():
    """y = tanh(sum_t 0.8^(T-1-t) x_t), computed as the reference's leaky integrator loop."""
    x = torch.randn(16, 2, 3, 4, 4, requires_grad=True)
    y = MembraneOutputLayer()(x)
    m = torch.zeros_like(x[0])
    for t in range(16):
        m = 0.8 * m + x[t]
    torch.testing.assert_close(y, torch.tanh(m))
    y.sum().backward()
    dtanh = 1 - torch.tanh(m.detach()) ** 2
    for t in range(16):
        torch.testing.assert_close(x.grad[t], dtanh * 0.8 ** (15 - t))
