"""Fast paths for the paper's LIF neuron and the Poisson latent sampler.

``lif_multistep`` and ``poisson_sample`` run a CuPy kernel for CUDA tensors when CuPy works, and a lean
torch implementation otherwise (``select_backend`` decides and logs why, once per reason). Both paths
compute the same float32 operations in the same order, so their results agree bit for bit. CuPy is
imported only when a CUDA tensor asks for it. ``tdbn_lif`` (opt-in) is tdBN + LIF keeping less for
backward. See docs/kernels.md.
"""
from typing import Optional

import torch

from . import lif as _lif
from . import poisson as _poisson
from . import bn_lif as _bn_lif
from .dispatch import BACKENDS, KERNEL_DTYPES, check_backend, select_backend

__all__ = ["lif_multistep", "lif_multistep_torch", "tdbn_lif", "poisson_sample", "select_backend", "check_backend",
           "BACKENDS", "KERNEL_DTYPES"]


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def lif_multistep(x_seq: torch.Tensor, decay: float = 0.25, v_threshold: float = 0.2, v_reset: float = 0.0,
                  centre: float = 0.0, half_width: float = 0.5, backend: str = "auto",
                  v_init: Optional[torch.Tensor] = None, return_v: bool = False, *, return_h: bool = False):
    """Spikes ``[T, ...]`` of the paper's LIF (ESVAE Eqs. 1-3) for inputs ``x_seq [T, ...]``, differentiable.

    h_t = v_reset + decay (v_{t-1} - v_reset) + x_t (Eq. 1), o_t = 1[h_t >= v_threshold] (Eq. 2),
    v_t = h_t (1 - o_t) + v_reset o_t (Eq. 3, reset not detached), v_{-1} = ``v_init`` (None: v_reset);
    surrogate do/dh = 1[|h - centre| < half_width] / (2 half_width).
    ``v_init``: a tensor shaped like ``x_seq[0]`` (gradients flow into it). With ``return_v=True`` the
    result is ``(spikes, v_last)``, v_last = v_{T-1} (differentiable) in float32 (float64 for float64
    input): pass it as the next call's ``v_init`` to continue the sequence exactly. ``return_h=True``
    appends h ``[T, ...]`` (input dtype, differentiable): ``(spikes, h)`` or ``(spikes, v_last, h)``.
    """
    _lif.check_input(x_seq, v_init)
    p = _lif.LIFParams(decay, v_threshold, v_reset, centre, half_width, exact=x_seq.dtype == torch.float64)
    cupy = select_backend(x_seq, backend) == "cupy"
    grads = (x_seq,) if v_init is None else (x_seq, v_init)
    if _needs_grad(*grads):
        spikes, v_last, h_seq = (_lif.LIFCuPy if cupy else _lif.LIFTorch).apply(x_seq, v_init, p)
    elif cupy:
        spikes, h_seq, v_last = _lif.cupy_forward(x_seq, p, keep_h=return_h, v_init=v_init, keep_v=return_v)
    else:
        spikes, h_seq, v_last = _lif.torch_forward(x_seq, p, keep_h=return_h, v_init=v_init)
    out = (spikes,) + ((v_last,) if return_v else ()) + ((h_seq,) if return_h else ())
    return out if len(out) > 1 else spikes


def lif_multistep_torch(x_seq: torch.Tensor, decay: float = 0.25, v_threshold: float = 0.2,
                        v_reset: float = 0.0, centre: float = 0.0, half_width: float = 0.5,
                        v_init: Optional[torch.Tensor] = None, return_v: bool = False):
    """The torch path of :func:`lif_multistep` on any device (what CPU users get)."""
    return lif_multistep(x_seq, decay, v_threshold, v_reset, centre, half_width, backend="torch",
                         v_init=v_init, return_v=return_v)


def tdbn_lif(x_seq: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *,
             running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor], training: bool,
             momentum: float = 0.1, eps: float = 1e-5, scale: float = 0.2, decay: float = 0.25,
             v_threshold: float = 0.2, v_reset: float = 0.0, centre: float = 0.0, half_width: float = 0.5,
             v_init: Optional[torch.Tensor] = None, backend: str = "auto", return_v: bool = False):
    """Opt-in fused ``LIF(tdBN(x_seq))``: spikes ``[T, N, C, ...]`` equal to the unfused composition
    ``lif_multistep(unfold(bn_lif.tdbn(fold(x_seq), weight, bias, running_mean, running_var, training,
    momentum, eps, scale)))`` bit for bit (spikes, running statistics, gradients), keeping x instead of
    x and h for backward (h and y are recomputed there). ``scale`` = alpha * v_th of tdBN; the caller
    counts ``num_batches_tracked``. ``return_v``/``v_init`` as in :func:`lif_multistep`.
    """
    if not isinstance(x_seq, torch.Tensor) or x_seq.dim() < 3 or not x_seq.is_floating_point():
        raise ValueError("tdbn_lif expects a floating-point tensor [T, N, C, ...]")
    if weight.shape != (x_seq.shape[2],) or bias.shape != (x_seq.shape[2],):
        raise ValueError(f"weight and bias must have shape ({x_seq.shape[2]},) (channels at dim 2 of "
                         f"{tuple(x_seq.shape)}), got {tuple(weight.shape)} and {tuple(bias.shape)}")
    _lif.check_input(x_seq, v_init)
    p = _lif.LIFParams(decay, v_threshold, v_reset, centre, half_width, exact=x_seq.dtype == torch.float64)
    cupy = select_backend(x_seq, backend) == "cupy"
    bn = (running_mean, running_var, bool(training), float(momentum), float(eps), float(scale))
    spikes, v_last = _bn_lif.TdBNLIF.apply(x_seq, weight, bias, v_init, bn, p, cupy)
    return (spikes, v_last) if return_v else spikes


def poisson_sample(rate: torch.Tensor, T: int, half_width: float = 0.5,
                   generator: Optional[torch.Generator] = None, backend: str = "auto") -> torch.Tensor:
    """Spikes ``[T, *rate.shape]``: z_t = 1[u_t < rate], dz/drate = sum_t 1[|rate - u_t| < w] / (2w).

    u ~ U(0, 1) comes from ``torch.rand(..., generator=generator, dtype=rate.dtype)`` on rate's device,
    so a seeded generator gives the same spikes on either backend.
    """
    if not isinstance(rate, torch.Tensor) or not rate.is_floating_point():
        kind = rate.dtype if isinstance(rate, torch.Tensor) else type(rate).__name__
        raise ValueError(f"rate must be a floating-point tensor of firing rates in [0, 1], got {kind}")
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be an integer >= 1, got {T!r}")
    _poisson.check_half_width(half_width)
    if generator is not None and generator.device.type != rate.device.type:
        raise ValueError(f"generator is on {generator.device} but rate is on {rate.device}; "
                         f"create it with torch.Generator(device=rate.device)")
    uniform = torch.rand((int(T), *rate.shape), generator=generator, device=rate.device, dtype=rate.dtype)
    half_width = float(half_width)
    if select_backend(rate, backend) == "cupy":
        if _needs_grad(rate):
            return _poisson.PoissonCuPy.apply(rate, uniform, half_width)
        return _poisson.cupy_forward(rate, uniform, half_width, keep_window=False)[0]
    if _needs_grad(rate):
        return _poisson.PoissonTorch.apply(rate, uniform, half_width)
    return _poisson.torch_forward(rate, uniform, half_width, keep_window=False)[0]
