"""Opt-in tdBN (normalise and scale) + LIF as one autograd Function that keeps less for backward.

The unfused block ``LIF(tdBN(x))`` keeps x (BN), the spikes and h (LIF) for backward. This Function keeps
x and the spikes (the output, which the next layer keeps anyway), and recomputes y = tdBN(x) and h in
backward: one step-sized tensor (h, the size of x) less per block, for one extra BN forward and LIF forward
in backward. The BN runs through ``tdbn`` both times (the backward differentiates the recomputed
call with autograd, on copies of the running statistics so they are updated once), and the LIF through
``lif.py`` (torch loop or CuPy kernel, which agree bit for bit), so spikes, running statistics and
gradients equal the unfused composition's bit for bit (tests/test_kernels_tdbn.py).

    y = scale * (x - mean) / sqrt(var + eps) * weight + bias    (tdBN, scale = alpha * v_th; batch
                                                                statistics in training, as torch's BN)
    spikes = LIF(y)                                             (ESVAE Eqs. 1-3, see lif.py)
"""
import torch
import torch.nn.functional as F

from . import lif as _lif


def tdbn(x, weight, bias, running_mean, running_var, training: bool, momentum: float, eps: float,
         scale: float) -> torch.Tensor:
    """tdBN on folded ``x`` ``[T*N, C, ...]`` (the unfused block's and the fused Function's one definition).

    Training (or no running statistics): ``F.batch_norm(x, ..., weight * scale, bias, ...)``, batch
    statistics and the running update. Eval: the official tdBatchNorm's operations in its order,
    ``scale * (x - mean) / sqrt(var + eps) * weight + bias``, so a converted official checkpoint rounds as
    the official code does (``F.batch_norm`` folds them into one per-channel affine map, which rounds
    differently by a few ulp and flips a spike whose membrane lies at the threshold).
    """
    if training or running_mean is None or running_var is None:
        return F.batch_norm(x, running_mean, running_var, weight * scale, bias, training, momentum, eps)
    shape = (-1,) + (1,) * (x.dim() - 2)
    mean, std = running_mean.view(shape), torch.sqrt(running_var.view(shape) + eps)
    if torch.is_grad_enabled():
        return scale * (x - mean) / std * weight.view(shape) + bias.view(shape)
    # the same operations in place on one buffer: equal values, a quarter of the memory traffic
    return (x - mean).mul_(scale).div_(std).mul_(weight.view(shape)).add_(bias.view(shape))


def _bn(x, weight, bias, bn, stats=None):
    """``tdbn`` with the packed ``bn`` arguments; ``stats`` replaces the running statistics (backward
    passes copies)."""
    running_mean, running_var, training, momentum, eps, scale = bn
    if stats is not None:
        running_mean, running_var = stats
    return tdbn(x, weight, bias, running_mean, running_var, training, momentum, eps, scale)


class TdBNLIF(torch.autograd.Function):
    """(spikes, v_last) from (x_seq [T, N, C, ...], weight, bias, v_init or None); ``bn`` = (running_mean,
    running_var, training, momentum, eps, scale), ``p`` the LIF constants, ``cupy`` the LIF implementation."""

    @staticmethod
    def forward(ctx, x_seq, weight, bias, v_init, bn, p, cupy):
        y = _bn(x_seq.flatten(0, 1), weight, bias, bn)
        run = _lif.cupy_forward if cupy else _lif.torch_forward
        spikes, _, v_last = run(y.unflatten(0, x_seq.shape[:2]), p, keep_h=False, v_init=v_init)
        ctx.bn, ctx.p, ctx.cupy = bn, p, cupy
        ctx.v_dtype = None if v_init is None else v_init.dtype
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x_seq, weight, bias, v_init, spikes)
        return spikes, v_last

    @staticmethod
    def backward(ctx, grad_spikes, grad_v_last):
        x_seq, weight, bias, v_init, spikes = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        inputs = [t.detach().requires_grad_(n) for t, n in zip((x_seq, weight, bias), needs)]
        # recompute y (batch statistics again; the running statistics are copies, left untouched)
        stats = [None if s is None else s.clone() for s in ctx.bn[:2]]
        with torch.enable_grad():
            y = _bn(inputs[0].flatten(0, 1), inputs[1], inputs[2], ctx.bn, stats).unflatten(0, spikes.shape[:2])
        run_forward, run_backward = (_lif.cupy_forward, _lif.cupy_backward) if ctx.cupy else \
            (_lif.torch_forward, _lif.torch_backward)
        _, h_seq, _ = run_forward(y.detach(), ctx.p, keep_h=True, v_init=v_init)
        if grad_spikes is not None:
            grad_spikes = grad_spikes.contiguous()
        grad_y, grad_v = run_backward(grad_spikes, spikes, h_seq, ctx.p, grad_v_last)
        wanted = [t for t, n in zip(inputs, needs) if n]
        grads = iter(torch.autograd.grad(y, wanted, grad_y) if wanted else ())
        grad_x, grad_weight, grad_b = (next(grads) if n else None for n in needs)
        grad_v_init = grad_v.to(ctx.v_dtype) if ctx.needs_input_grad[3] else None
        return grad_x, grad_weight, grad_b, grad_v_init, None, None, None
