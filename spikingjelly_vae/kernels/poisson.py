"""Poisson (Bernoulli-per-step) spike sampling with the reparameterised gradient, torch and CuPy paths.

    z_t = 1[u_t < r],   u_t ~ U(0, 1) given (drawn by torch, so both paths see the same draws)
    dL/dr = sum_t dL/dz_t * 1[|r - u_t| < w] / (2w)

Backward keeps only the window 1[|r - u_t| < w] as uint8 (1 byte per element instead of the 4 of u).
"""
import numpy as np
import torch

from ..functional import poisson_fire, poisson_surrogate_grad, poisson_window
from .launch import launch, ptr


def check_half_width(half_width: float) -> None:
    if not half_width > 0.0:
        raise ValueError(f"half_width must be > 0, got {half_width}")


def _constants(half_width: float, dtype: torch.dtype = torch.float32):
    """(w, 1/(2w)), rounded to float32 like the kernel's arguments unless the rates are float64."""
    check_half_width(half_width)
    w, height = float(half_width), 1.0 / (2.0 * float(half_width))
    if dtype == torch.float64:
        return w, height
    return float(np.float32(w)), float(np.float32(height))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def torch_forward(rate: torch.Tensor, uniform: torch.Tensor, half_width: float, keep_window: bool):
    w, _ = _constants(half_width, rate.dtype)
    r = rate.to(_compute_dtype(rate.dtype))
    u = uniform.to(r.dtype)
    spikes = poisson_fire(r, u).to(rate.dtype)
    window = poisson_window(r, u, w).to(torch.uint8) if keep_window else None
    return spikes, window


def torch_backward(grad_spikes: torch.Tensor, window: torch.Tensor, half_width: float, dtype: torch.dtype):
    _, height = _constants(half_width, dtype)
    return poisson_surrogate_grad(grad_spikes.to(_compute_dtype(dtype)), window.bool(), height).to(dtype)


def cupy_forward(rate: torch.Tensor, uniform: torch.Tensor, half_width: float, keep_window: bool):
    w, _ = _constants(half_width)
    r = rate.contiguous()
    u = uniform.to(rate.dtype).contiguous()
    spikes = torch.empty_like(u)
    window = torch.empty(u.shape, dtype=torch.uint8, device=u.device) if keep_window else None
    n = r.numel()
    launch("poisson_forward", r.dtype, r.device, n,
           (ptr(r), ptr(u), ptr(spikes), ptr(window), np.int64(n), np.int32(u.shape[0]), np.float32(w)))
    return spikes, window


def cupy_backward(grad_spikes: torch.Tensor, window: torch.Tensor, half_width: float, dtype: torch.dtype):
    _, height = _constants(half_width)
    g = grad_spikes.to(dtype).contiguous()
    grad_rate = torch.empty(window.shape[1:], dtype=dtype, device=window.device)
    n = grad_rate.numel()
    launch("poisson_backward", dtype, window.device, n,
           (ptr(g), ptr(window), ptr(grad_rate), np.int64(n), np.int32(window.shape[0]), np.float32(height)))
    return grad_rate


class _PoissonFunction(torch.autograd.Function):
    """Spikes (Eq. 7) from (rate, uniform draws), keeping the uint8 window for the Eq. 8 gradient;
    subclasses pick the forward/backward pair."""

    @classmethod
    def forward(cls, ctx, rate, uniform, half_width):
        spikes, window = cls.run_forward(rate, uniform, half_width, keep_window=True)
        ctx.half_width, ctx.dtype = half_width, rate.dtype
        ctx.save_for_backward(window)
        return spikes

    @classmethod
    def backward(cls, ctx, grad_spikes):
        (window,) = ctx.saved_tensors
        return cls.run_backward(grad_spikes, window, ctx.half_width, ctx.dtype), None, None


class PoissonTorch(_PoissonFunction):
    run_forward, run_backward = staticmethod(torch_forward), staticmethod(torch_backward)


class PoissonCuPy(_PoissonFunction):
    run_forward, run_backward = staticmethod(cupy_forward), staticmethod(cupy_backward)
