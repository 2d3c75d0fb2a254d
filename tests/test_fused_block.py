"""The opt-in fused tdBN + LIF (fuse_bn_lif) of the temporal blocks: same state_dict keys, and spikes, outputs,
running statistics, membranes and gradients equal to the unfused blocks, in training and eval mode."""
import pytest
import torch
from spikingjelly.activation_based import functional as sj_functional

from spikingjelly_vae import kernels, layer
from spikingjelly_vae.models import build_model

from conftest import TINY_HIDDEN, images


def _pair(name="esvae", **kw):
    """The same tiny model (seed 0) built unfused and fused."""
    models = []
    for fuse in (False, True):
        torch.manual_seed(0)
        models.append(build_model(dict(model=name, in_channels=1, image_size=32, hidden=TINY_HIDDEN[32],
                                       latent_dim=8, T=4, fuse_bn_lif=fuse, **kw)))
    return models


def _record_block_outputs(model):
    """Capture every temporal block's output (the spikes of tdBN -> LIF blocks) in call order."""
    seen = []
    for m in model.modules():
        if isinstance(m, layer._TemporalBlock):
            m.register_forward_hook(lambda mod, args, out: seen.append(out.detach().clone()))
    return seen


@pytest.fixture
def count_fused(monkeypatch):
    """Counts calls of kernels.tdbn_lif (the fused path), so a test knows the option took effect."""
    calls = []
    real = kernels.tdbn_lif

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(kernels, "tdbn_lif", counting)
    return calls


def _equal_tensors(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@pytest.mark.parametrize("training", [True, False])
def test_fused_esvae_equals_unfused(training, count_fused):
    plain, fused = _pair()
    assert plain.state_dict().keys() == fused.state_dict().keys()
    assert fused.config["fuse_bn_lif"] is True and plain.config["fuse_bn_lif"] is False
    fused.load_state_dict(plain.state_dict())
    x = images(6)
    results = []
    for model in (plain, fused):
        model.train(training)
        outs = _record_block_outputs(model)
        gen = torch.Generator().manual_seed(1)
        out = model(x, generator=gen)
        loss = model.loss(x, out)["loss"]
        if training:
            loss.backward()
        results.append((outs, out, loss, model))
    (outs_a, out_a, loss_a, a), (outs_b, out_b, loss_b, b) = results
    blocks = sum(1 for m in fused.modules() if isinstance(m, layer._TemporalBlock) and m._fused())
    assert blocks == 10 and len(count_fused) == blocks  # 4 convs + linear, linear + 4 conv-transposes
    _equal_tensors(outs_a, outs_b)
    _equal_tensors(out_a, out_b)
    assert torch.equal(loss_a, loss_b)
    _equal_tensors(list(a.buffers()), list(b.buffers()))  # running mean/var, num_batches_tracked
    if training:
        grads = [(p.grad, q.grad) for p, q in zip(a.parameters(), b.parameters())]
        assert all(g is not None for g, _ in grads)
        _equal_tensors([g for g, _ in grads], [h for _, h in grads])


@pytest.mark.parametrize("training", [True, False])
def test_fused_block_keeps_the_membrane_across_calls(training):
    """Two calls without reset_net: the second starts from the membrane the first left (as PaperLIFNode)."""
    blocks = []
    for fuse in (False, True):
        torch.manual_seed(0)
        blocks.append(layer.TemporalLinear(5, 3, fuse_bn_lif=fuse).train(training))
    g = torch.Generator().manual_seed(2)
    x1, x2 = torch.randn(3, 4, 5, generator=g) * 2, torch.randn(3, 4, 5, generator=g) * 2
    x1.requires_grad_(True)
    outs, grads = [], []
    for block in blocks:
        sj_functional.reset_net(block)
        x = x1.detach().clone().requires_grad_(True)
        s = torch.cat([block(x), block(x2)])
        (s * torch.arange(s.numel()).view_as(s)).sum().backward()  # the gradient flows through the membrane
        outs += [s.detach(), block.lif.v.detach()]
        grads += [x.grad, block.weight_layer.weight.grad, block.bn.weight.grad]
    assert torch.equal(outs[0], outs[2]) and torch.equal(outs[1], outs[3])
    for ga, gb in zip(grads[:3], grads[3:]):
        assert torch.equal(ga, gb)
    assert outs[0].sum() > 0  # some spikes


def test_fused_option_reaches_the_models_and_defaults_off():
    plain, fused = _pair("fsvae", k=3)
    assert not any(m.fuse_bn_lif for m in plain.modules() if isinstance(m, layer._TemporalBlock))
    flags = [m._fused() for m in fused.modules() if isinstance(m, layer._TemporalBlock) and m.bn is not None]
    assert all(flags) and len(flags) == 16  # encoder 5, posterior 3, prior 3, decoder 5 (to_image has no tdBN)
    fused.load_state_dict(plain.state_dict())
    x = images(4)
    out_a = plain(x, generator=torch.Generator().manual_seed(3))
    out_b = fused(x, generator=torch.Generator().manual_seed(3))
    _equal_tensors(out_a, out_b)
