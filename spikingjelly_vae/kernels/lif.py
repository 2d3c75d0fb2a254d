"""The paper's LIF neuron (ESVAE, Eqs. 1-3) as two autograd Functions: a lean torch loop and the CuPy kernel.

    h_t = v_reset + decay * (v_{t-1} - v_reset) + x_t        (Eq. 1, v_{-1} = v_init, default v_reset; paper: u)
    o_t = 1[h_t >= v_threshold]                              (Eq. 2; SpikingJelly's Heaviside fires at equality)
    v_t = h_t * (1 - o_t) + v_reset * o_t                    (Eq. 3, hard reset, NOT detached)
    do/dh = 1[|h - centre| < half_width] / (2 * half_width)  (rectangle surrogate on the potential)

With v_reset = 0 this is the reference u_t = decay * u_{t-1} * (1 - o_{t-1}) + x_t. The Functions take the
membrane before the first step (``v_init``) and also return the membrane after the last step (``v_last``),
both differentiable, so a sequence split into calls that pass the state on behaves as one call; they also
return h (``store_v_seq``), differentiable too. This is the only torch implementation of the recurrence:
multi-step, single-step (T = 1) and ``store_v_seq`` all run through it.
Backward through time, starting from gv = dL/dv_last (0 when v_last is unused), with gh_t = dL/dh_t from h's
own output (0 when unused):
g_t = dL/dh_t = ((dL/do_t - gv * (h_t - v_reset)) * 1[|h_t - centre| < w]) / (2w) + (gv * (1 - o_t) + gh_t),
then gv = dL/dv_{t-1} = g_t * decay, which after step 0 is dL/dv_init. This is grouped exactly as autograd
groups the plain loop, so spikes and gradients equal the loop's bit for bit. Only the spikes (the output)
and h are kept for backward, h in the input dtype. The computation, and the state v_init / v_last, are
float32 (float64 for float64 input), op for op the same as the CUDA kernel in ``sources.py``.
"""
import numpy as np
import torch

from .launch import launch, ptr


class LIFParams:
    """The neuron's constants, rounded to float32 once so torch and the kernel use the same numbers
    (kept exact for float64 inputs, which only the torch path takes)."""

    def __init__(self, decay, v_threshold, v_reset, centre, half_width, exact: bool = False):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must lie in [0, 1], got {decay}")
        if not half_width > 0.0:
            raise ValueError(f"half_width must be > 0, got {half_width}")
        r = float if exact else (lambda v: float(np.float32(v)))
        self.decay, self.v_threshold, self.v_reset = r(decay), r(v_threshold), r(v_reset)
        self.centre, self.half_width = r(centre), r(half_width)
        self.two_w = r(2.0 * float(half_width))

    def kernel_args(self, *names):
        return tuple(np.float32(getattr(self, n)) for n in names)


def check_input(x_seq: torch.Tensor, v_init=None) -> None:
    if not isinstance(x_seq, torch.Tensor) or not x_seq.is_floating_point():
        kind = x_seq.dtype if isinstance(x_seq, torch.Tensor) else type(x_seq).__name__
        raise ValueError(f"LIF input must be a floating-point tensor [T, ...], got {kind}")
    if x_seq.dim() < 1 or x_seq.shape[0] == 0:
        raise ValueError(f"LIF input must be [T, ...] with T >= 1, got shape {tuple(x_seq.shape)}")
    if v_init is None:
        return
    if not isinstance(v_init, torch.Tensor) or not v_init.is_floating_point():
        kind = v_init.dtype if isinstance(v_init, torch.Tensor) else type(v_init).__name__
        raise ValueError(f"v_init must be None or a floating-point tensor shaped like x_seq[0], got {kind}")
    if v_init.shape != x_seq.shape[1:] or v_init.device != x_seq.device:
        raise ValueError(f"v_init must have x_seq[0]'s shape {tuple(x_seq.shape[1:])} on {x_seq.device}, "
                         f"got {tuple(v_init.shape)} on {v_init.device}")


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The compute dtype, which is also the dtype of the membrane state v_init / v_last."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def torch_forward(x_seq: torch.Tensor, p: LIFParams, keep_h: bool, v_init=None):
    """Spikes ``[T, ...]`` (input dtype), the pre-reset potentials h (input dtype) if ``keep_h`` else None,
    and v_last (compute dtype). ``v_init`` (any float dtype, shape of x_seq[0]) is read, never written.

    Masks are float tensors throughout (boolean masks are several times slower on CPU).
    """
    x = x_seq.contiguous()
    spikes = torch.empty_like(x)
    h_seq = torch.empty_like(x) if keep_h else None
    cdt = state_dtype(x.dtype)
    direct = x.dtype == cdt  # write h and spikes straight into the outputs
    v = torch.empty(x.shape[1:], dtype=cdt, device=x.device)
    if v_init is None:
        v.fill_(p.v_reset)
    else:
        v.copy_(v_init.detach())
    h_buf, s_buf = torch.empty_like(v), torch.empty_like(v)
    for t in range(x.shape[0]):
        h = h_seq[t] if (direct and keep_h) else h_buf
        s = spikes[t] if direct else s_buf
        if p.v_reset == 0.0:
            torch.mul(v, p.decay, out=h)
        else:
            torch.sub(v, p.v_reset, out=h)
            h.mul_(p.decay).add_(p.v_reset)
        h.add_(x[t])
        torch.ge(h, p.v_threshold, out=s)
        if not direct:
            spikes[t].copy_(s)
            if keep_h:
                h_seq[t].copy_(h)
        # v_t = h (1 - s) + v_reset s, written as h - h s (+ v_reset s): exact for s in {0, 1}
        torch.mul(h, s, out=v)
        torch.sub(h, v, out=v)
        if p.v_reset != 0.0:
            v.add_(s, alpha=p.v_reset)
    return spikes, h_seq, v


def torch_backward(grad_spikes, spikes: torch.Tensor, h_seq: torch.Tensor, p: LIFParams, grad_v_last=None,
                   grad_h=None):
    """(dL/dx ``[T, ...]``, dL/dv_init) by the reverse-time recursion in the module docstring, starting
    from gv = ``grad_v_last`` (None: 0); ``grad_spikes`` / ``grad_h`` None mean zeros. dL/dv_init is in the
    compute dtype.

    One step at a time on step-sized buffers (they stay in cache; whole-sequence temporaries are slower
    on CPU), in the kernel's (and autograd's) operation order.
    """
    cdt = state_dtype(h_seq.dtype)
    grad_x = torch.empty_like(h_seq)
    mask, go, keep, gv = (torch.zeros(h_seq.shape[1:], dtype=cdt, device=h_seq.device) for _ in range(4))
    if grad_v_last is not None:
        gv.copy_(grad_v_last)
    ones = torch.ones_like(mask)
    for t in range(h_seq.shape[0] - 1, -1, -1):
        h, s = h_seq[t].to(cdt), spikes[t].to(cdt)
        torch.sub(h, p.centre, out=mask).abs_().lt_(p.half_width)  # 1[|h - c| < w]
        torch.sub(h, p.v_reset, out=go).mul_(gv)  # gv * (h - v_reset)
        if grad_spikes is None:
            go.neg_()
        else:
            torch.sub(grad_spikes[t].to(cdt), go, out=go)  # dL/do_t
        go.mul_(mask).div_(p.two_w)
        torch.sub(ones, s, out=keep).mul_(gv)  # gv * (1 - s)
        if grad_h is not None:
            keep.add_(grad_h[t].to(cdt))  # autograd adds h's own gradient first
        go.add_(keep)  # g_t
        grad_x[t].copy_(go)
        torch.mul(go, p.decay, out=gv)
    return grad_x, gv


class _LIFFunction(torch.autograd.Function):
    """(spikes, v_last, h_seq) from (x_seq, v_init or None); subclasses pick the forward/backward pair."""

    @classmethod
    def forward(cls, ctx, x_seq, v_init, p):
        spikes, h_seq, v_last = cls.run_forward(x_seq, p, True, v_init)
        ctx.p = p
        ctx.v_dtype = None if v_init is None else v_init.dtype
        ctx.set_materialize_grads(False)  # an unused output gives None, not a zero tensor
        ctx.save_for_backward(spikes, h_seq)
        return spikes, v_last, h_seq

    @classmethod
    def backward(cls, ctx, grad_spikes, grad_v_last, grad_h):
        spikes, h_seq = ctx.saved_tensors
        grad_x, grad_v = cls.run_backward(grad_spikes, spikes, h_seq, ctx.p, grad_v_last, grad_h)
        grad_v_init = grad_v.to(ctx.v_dtype) if ctx.needs_input_grad[1] else None
        return grad_x, grad_v_init, None


class LIFTorch(_LIFFunction):
    """Lean torch path: forward loop without a graph, hand-written backward through time."""

    @staticmethod
    def run_forward(x_seq, p, keep_h, v_init):
        return torch_forward(x_seq, p, keep_h, v_init)

    @staticmethod
    def run_backward(grad_spikes, spikes, h_seq, p, grad_v_last, grad_h):
        grad_spikes = None if grad_spikes is None else grad_spikes.contiguous()
        grad_h = None if grad_h is None else grad_h.contiguous()
        return torch_backward(grad_spikes, spikes, h_seq, p, grad_v_last, grad_h)


def _state(v, like: torch.Tensor):
    """``v`` as a contiguous tensor of the state dtype for the kernel (None stays None)."""
    return None if v is None else v.detach().to(state_dtype(like.dtype)).contiguous()


def cupy_forward(x_seq: torch.Tensor, p: LIFParams, keep_h: bool, v_init=None, keep_v: bool = True):
    """Like :func:`torch_forward`; v_last is None unless ``keep_v`` (the kernel then skips writing it)."""
    x = x_seq.contiguous()
    spikes = torch.empty_like(x)
    h_seq = torch.empty_like(x) if keep_h else None
    v_last = torch.empty(x.shape[1:], dtype=state_dtype(x.dtype), device=x.device) if keep_v else None
    v0 = _state(v_init, x)  # kept referenced until the launch is queued
    n = x[0].numel()
    launch("lif_forward", x.dtype, x.device, n,
           (ptr(x), ptr(v0), ptr(spikes), ptr(h_seq), ptr(v_last), np.int64(n),
            np.int32(x.shape[0])) + p.kernel_args("decay", "v_threshold", "v_reset"))
    return spikes, h_seq, v_last


def cupy_backward(grad_spikes, spikes, h_seq, p: LIFParams, grad_v_last=None, grad_h=None):
    """Like :func:`torch_backward`; None gradients are null pointers to the kernel."""
    if grad_spikes is not None:
        grad_spikes = grad_spikes.to(h_seq.dtype).contiguous()
    if grad_h is not None:
        grad_h = grad_h.to(h_seq.dtype).contiguous()
    gv_last = _state(grad_v_last, h_seq)
    grad_x = torch.empty_like(h_seq)
    grad_v = torch.empty(h_seq.shape[1:], dtype=state_dtype(h_seq.dtype), device=h_seq.device)
    n = h_seq[0].numel()
    launch("lif_backward", h_seq.dtype, h_seq.device, n,
           (ptr(grad_spikes), ptr(grad_h), ptr(spikes), ptr(h_seq), ptr(gv_last), ptr(grad_x),
            ptr(grad_v), np.int64(n), np.int32(h_seq.shape[0]))
           + p.kernel_args("decay", "v_reset", "centre", "half_width", "two_w"))
    return grad_x, grad_v


class LIFCuPy(_LIFFunction):
    """CuPy path: one launch over all T for the forward, one for the backward."""

    @staticmethod
    def run_forward(x_seq, p, keep_h, v_init):
        return cupy_forward(x_seq, p, keep_h, v_init)

    @staticmethod
    def run_backward(grad_spikes, spikes, h_seq, p, grad_v_last, grad_h):
        return cupy_backward(grad_spikes, spikes, h_seq, p, grad_v_last, grad_h)
