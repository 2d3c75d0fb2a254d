"""Opt-in tdBN (normalise and scale) + LIF as one autograd Function that keeps less for backward.

The unfused block ``LIF(tdBN(x))`` keeps x (BN), the spikes and h (LIF) for backward. This Function keeps
x, the spikes (the output, which the next layer keeps anyway) and the per-channel BN statistics, and
recomputes y = tdBN(x) and h in backward: one step-sized tensor (h, the size of x) less per block, for one
extra BN forward and LIF forward in backward. The BN runs through the very ATen entry points the unfused
``F.batch_norm`` takes (``_batch_norm_impl_index`` and its backward, cuDNN or native), and the LIF through
``lif.py`` (torch loop or CuPy kernel, which agree bit for bit), so spikes, running statistics and
gradients equal the unfused composition's bit for bit (tests/test_kernels_tdbn.py).

    y = weight * scale * (x - mean) / sqrt(var + eps) + bias    (tdBN, scale = alpha * v_th; batch
                                                                statistics in training, as torch's BN)
    spikes = LIF(y)                                             (ESVAE Eqs. 1-3, see lif.py)
"""
import torch

from . import lif as _lif


def _bn_forward(x, w, bias, running_mean, running_var, training, momentum, eps):
    return torch._batch_norm_impl_index(x, w, bias, running_mean, running_var, training, momentum, eps,
                                        torch.backends.cudnn.enabled)


class TdBNLIF(torch.autograd.Function):
    """(spikes, v_last) from (x_seq [T, N, C, ...], weight, bias, v_init or None); ``bn`` = (running_mean,
    running_var, training, momentum, eps, scale), ``p`` the LIF constants, ``cupy`` the LIF implementation."""

    @staticmethod
    def forward(ctx, x_seq, weight, bias, v_init, bn, p, cupy):
        running_mean, running_var, training, momentum, eps, scale = bn
        x = x_seq.flatten(0, 1)
        w = weight * scale  # the unfused tdBN's operation
        y, save_mean, save_invstd, reserve, impl = _bn_forward(x, w, bias, running_mean, running_var, training,
                                                               momentum, eps)
        run = _lif.cupy_forward if cupy else _lif.torch_forward
        spikes, _, v_last = run(y.unflatten(0, x_seq.shape[:2]), p, keep_h=False, v_init=v_init)
        ctx.bn, ctx.p, ctx.cupy, ctx.impl = bn, p, cupy, impl
        ctx.v_dtype = None if v_init is None else v_init.dtype
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, w, bias, v_init, save_mean, save_invstd, reserve, spikes)
        return spikes, v_last

    @staticmethod
    def backward(ctx, grad_spikes, grad_v_last):
        x, w, bias, v_init, save_mean, save_invstd, reserve, spikes = ctx.saved_tensors
        running_mean, running_var, training, _, eps, scale = ctx.bn
        # recompute y with the forward's own kernel (batch statistics again, running statistics untouched)
        stats = [None if s is None else s.clone() for s in (running_mean, running_var)]
        y = _bn_forward(x, w, bias, *stats, training, 0.0, eps)[0].unflatten(0, spikes.shape[:2])
        run_forward, run_backward = (_lif.cupy_forward, _lif.cupy_backward) if ctx.cupy else \
            (_lif.torch_forward, _lif.torch_backward)
        _, h_seq, _ = run_forward(y, ctx.p, keep_h=True, v_init=v_init)
        if grad_spikes is not None:
            grad_spikes = grad_spikes.contiguous()
        grad_y, grad_v = run_backward(grad_spikes, spikes, h_seq, ctx.p, grad_v_last)
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]]
        grad_x, grad_w, grad_b = torch.ops.aten._batch_norm_impl_index_backward(
            ctx.impl, x, grad_y.flatten(0, 1), w, running_mean, running_var, save_mean, save_invstd, training,
            eps, mask, reserve)
        grad_x = None if grad_x is None else grad_x.unflatten(0, spikes.shape[:2])
        grad_weight = None if grad_w is None else grad_w * scale  # the unfused MulBackward's operation
        grad_v_init = grad_v.to(ctx.v_dtype) if ctx.needs_input_grad[3] else None
        return grad_x, grad_weight, grad_b, grad_v_init, None, None, None
