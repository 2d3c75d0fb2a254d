"""The paper's multi-step LIF neuron as two autograd Functions: a lean torch loop and the CuPy kernel.

    h_t = v_reset + decay * (v_{t-1} - v_reset) + x_t        (v_{-1} = v_reset; the paper: u_t, v_reset = 0)
    o_t = 1[h_t >= v_threshold]                              (SpikingJelly's Heaviside fires at equality)
    v_t = h_t * (1 - o_t) + v_reset * o_t                    (hard reset, NOT detached)
    do/dh = 1[|h - centre| < half_width] / (2 * half_width)  (rectangle surrogate on the potential)

With v_reset = 0 this is the reference u_t = decay * u_{t-1} * (1 - o_{t-1}) + x_t. Backward through time,
with gv = dL/dv_t = decay * g_{t+1} (0 after the last step):
g_t = dL/dh_t = ((dL/do_t - gv * (h_t - v_reset)) * 1[|h_t - centre| < w]) / (2w) + gv * (1 - o_t),
grouped exactly as autograd groups the plain loop, so spikes and gradients equal the loop's bit for bit.
Only the spikes (the output) and h are kept for backward, h in the input dtype; the computation is float32
(float64 for float64 input), op for op the same as the CUDA kernel in ``sources.py``.
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


def check_input(x_seq: torch.Tensor) -> None:
    if not isinstance(x_seq, torch.Tensor) or not x_seq.is_floating_point():
        kind = x_seq.dtype if isinstance(x_seq, torch.Tensor) else type(x_seq).__name__
        raise ValueError(f"LIF input must be a floating-point tensor [T, ...], got {kind}")
    if x_seq.dim() < 1 or x_seq.shape[0] == 0:
        raise ValueError(f"LIF input must be [T, ...] with T >= 1, got shape {tuple(x_seq.shape)}")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def torch_forward(x_seq: torch.Tensor, p: LIFParams, keep_h: bool):
    """Spikes ``[T, ...]`` (input dtype) and, if ``keep_h``, the pre-reset potentials h (input dtype).

    Masks are float tensors throughout (boolean masks are several times slower on CPU).
    """
    x = x_seq.contiguous()
    spikes = torch.empty_like(x)
    h_seq = torch.empty_like(x) if keep_h else None
    cdt = _compute_dtype(x.dtype)
    direct = x.dtype == cdt  # write h and spikes straight into the outputs
    v = torch.full(x.shape[1:], p.v_reset, dtype=cdt, device=x.device)
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
    return spikes, h_seq


def torch_backward(grad_spikes: torch.Tensor, spikes: torch.Tensor, h_seq: torch.Tensor, p: LIFParams):
    """dL/dx ``[T, ...]`` by the reverse-time recursion in the module docstring.

    One step at a time on step-sized buffers (they stay in cache; whole-sequence temporaries are slower
    on CPU), in the kernel's (and autograd's) operation order.
    """
    cdt = _compute_dtype(h_seq.dtype)
    grad_x = torch.empty_like(h_seq)
    mask, go, keep, gv = (torch.zeros(h_seq.shape[1:], dtype=cdt, device=h_seq.device) for _ in range(4))
    ones = torch.ones_like(mask)
    for t in range(h_seq.shape[0] - 1, -1, -1):
        h, s = h_seq[t].to(cdt), spikes[t].to(cdt)
        torch.sub(h, p.centre, out=mask).abs_().lt_(p.half_width)  # 1[|h - c| < w]
        torch.sub(h, p.v_reset, out=go).mul_(gv)  # gv * (h - v_reset)
        torch.sub(grad_spikes[t].to(cdt), go, out=go)  # dL/do_t
        go.mul_(mask).div_(p.two_w)
        torch.sub(ones, s, out=keep).mul_(gv)  # gv * (1 - s)
        go.add_(keep)  # g_t
        grad_x[t].copy_(go)
        torch.mul(go, p.decay, out=gv)
    return grad_x


class LIFTorch(torch.autograd.Function):
    """Lean torch path: forward loop without a graph, hand-written backward through time."""

    @staticmethod
    def forward(ctx, x_seq, p):
        spikes, h_seq = torch_forward(x_seq, p, keep_h=True)
        ctx.p = p
        ctx.save_for_backward(spikes, h_seq)
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes):
        spikes, h_seq = ctx.saved_tensors
        return torch_backward(grad_spikes.contiguous(), spikes, h_seq, ctx.p), None


def cupy_forward(x_seq: torch.Tensor, p: LIFParams, keep_h: bool):
    x = x_seq.contiguous()
    spikes = torch.empty_like(x)
    h_seq = torch.empty_like(x) if keep_h else None
    n = x[0].numel()
    launch("lif_forward", x.dtype, x.device, n,
           (ptr(x), ptr(spikes), ptr(h_seq), np.int64(n), np.int32(x.shape[0]))
           + p.kernel_args("decay", "v_threshold", "v_reset"))
    return spikes, h_seq


def cupy_backward(grad_spikes, spikes, h_seq, p: LIFParams):
    grad_spikes = grad_spikes.to(h_seq.dtype).contiguous()
    grad_x = torch.empty_like(h_seq)
    n = h_seq[0].numel()
    launch("lif_backward", h_seq.dtype, h_seq.device, n,
           (ptr(grad_spikes), ptr(spikes), ptr(h_seq), ptr(grad_x), np.int64(n), np.int32(h_seq.shape[0]))
           + p.kernel_args("decay", "v_reset", "centre", "half_width", "two_w"))
    return grad_x


class LIFCuPy(torch.autograd.Function):
    """CuPy path: one launch over all T for the forward, one for the backward."""

    @staticmethod
    def forward(ctx, x_seq, p):
        spikes, h_seq = cupy_forward(x_seq, p, keep_h=True)
        ctx.p = p
        ctx.save_for_backward(spikes, h_seq)
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes):
        spikes, h_seq = ctx.saved_tensors
        return cupy_backward(grad_spikes, spikes, h_seq, ctx.p), None
