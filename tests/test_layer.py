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


def test_block_takes_norm_and_neuron_as_modules_factories_or_none():
    """_TemporalBlock(weight, norm_layer, neuron_layer): defaults tdBN + paper LIF; a factory gets the weight's
    output channels (norm) or nothing (neuron); None leaves the stage out; state_dict keys stay weight_layer/bn/lif."""
    from spikingjelly_vae.layer import _TemporalBlock
    from spikingjelly_vae.neuron import PaperLIFNode

    torch.manual_seed(0)
    default = _TemporalBlock(torch.nn.Linear(6, 5))
    assert isinstance(default.bn, ThresholdDependentBatchNorm) and default.bn.num_features == 5
    assert isinstance(default.lif, PaperLIFNode)
    lin = TemporalLinear(6, 5)
    assert sorted(lin.state_dict()) == sorted(default.state_dict())
    assert [k.split(".")[0] for k in lin.state_dict()] == ["weight_layer"] * 2 + ["bn"] * 5

    bn = torch.nn.Identity()
    plain = _TemporalBlock(torch.nn.Linear(6, 5), norm_layer=None, neuron_layer=None)
    custom = _TemporalBlock(plain.weight_layer, norm_layer=lambda c: ThresholdDependentBatchNorm(c, alpha=3.0),
                            neuron_layer=lambda: PaperLIFNode(decay=0.5))
    with_module = _TemporalBlock(plain.weight_layer, norm_layer=bn, neuron_layer=None)
    x = torch.randn(4, 3, 6)
    y = plain(x)
    assert torch.equal(y, torch.stack([plain.weight_layer(xt) for xt in x]))
    assert with_module.bn is bn and torch.equal(with_module(x), y)
    assert custom.bn.alpha == 3.0 and custom.lif.decay == 0.5
    ref_bn, _, _ = reference_tdbn_train(y, torch.ones(5), torch.zeros(5), 3.0)
    v, spikes = torch.zeros(3, 5), []
    for h in ref_bn:  # LIF with decay 0.5, threshold 0.2, hard reset to 0
        v = 0.5 * v + h
        spikes.append((v >= 0.2).float())
        v = v * (1 - spikes[-1])
    assert torch.equal(custom(x), torch.stack(spikes))
    with pytest.raises(ValueError, match="output channels"):
        _TemporalBlock(torch.nn.Identity())


@pytest.mark.parametrize("make", [lambda: TemporalLinear(6, 5, alpha=2.0), lambda: TemporalConv2d(2, 3)])
def test_step_equals_forward_in_eval_mode(make):
    """step(x_t) for t = 0..T-1 (membrane kept between calls) equals forward on the whole sequence when tdBN
    uses its running statistics; gradients agree too."""
    torch.manual_seed(0)
    block = make()
    with torch.no_grad():
        block.bn.running_mean.uniform_(-0.3, 0.3)
        block.bn.running_var.uniform_(0.5, 1.5)
    block.eval()
    shape = (5, 3, 6) if isinstance(block, TemporalLinear) else (5, 3, 2, 6, 6)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 2
    y_all = block(x)
    (y_all * torch.arange(y_all.numel()).reshape(y_all.shape).cos()).sum().backward()
    grads = [p.grad.clone() for p in block.parameters()]
    block.zero_grad()
    sj_functional.reset_net(block)
    y_steps = torch.stack([block.step(xt) for xt in x])
    (y_steps * torch.arange(y_steps.numel()).reshape(y_steps.shape).cos()).sum().backward()
    assert 0 < y_all.mean() < 1 and torch.equal(y_steps, y_all)
    for a, p in zip(grads, block.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-5)


def test_blocks_pass_kernel_backend_to_the_neuron():
    assert TemporalLinear(3, 2, kernel_backend="torch").lif.kernel_backend == "torch"
    assert TemporalConv2d(1, 2).lif.kernel_backend == "auto"
    with pytest.raises(ValueError, match="backend"):
        TemporalConvTranspose2d(2, 1, kernel_backend="cuda")


def test_tdbn_momentum_none_is_a_cumulative_average_as_torch_bn():
    """momentum=None: running statistics are the plain average over batches, as torch's BatchNorm keeps them."""
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randn(4, 6, 3, 2, 2, generator=gen) * (k + 1) for k in range(3)]
    bn = ThresholdDependentBatchNorm(3, momentum=None)
    ref = torch.nn.BatchNorm1d(3, momentum=None)
    for x in batches:
        bn(x)
        ref(x.flatten(0, 1).flatten(2))
    assert int(bn.num_batches_tracked) == 3
    assert torch.equal(bn.running_mean, ref.running_mean) and torch.equal(bn.running_var, ref.running_var)


def test_tdbn_momentum_none_fused_block_equals_unfused():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 4, 2, 5, 5, generator=gen)
    blocks = []
    for fuse in (False, True):
        torch.manual_seed(0)
        blocks.append(TemporalConv2d(2, 3, fuse_bn_lif=fuse, kernel_backend="torch"))
        blocks[-1].bn.momentum = None
    outs = [[b(x) for _ in range(2)] for b in blocks]
    assert all(torch.equal(a, b) for a, b in zip(*outs))
    assert torch.equal(blocks[0].bn.running_var, blocks[1].bn.running_var)
