"""Stateless functions of the paper: firing rate, Poisson spike sampling, RBF-MMD^2 and the PSP filter."""
from typing import Optional

import torch


def firing_rate(spikes: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """r = (1/T) sum_t s_t over the time dimension ``dim`` (paper Eq. 5)."""
    return spikes.mean(dim=dim)


def check_rate(rate: torch.Tensor, name: str = "rate") -> None:
    """Raise ValueError unless ``rate`` is a floating tensor with values in [0, 1]."""
    if not isinstance(rate, torch.Tensor) or not rate.is_floating_point():
        kind = rate.dtype if isinstance(rate, torch.Tensor) else type(rate).__name__
        raise ValueError(f"{name} must be a floating-point tensor of firing rates in [0, 1], got {kind}")
    if rate.numel() and (torch.isnan(rate).any() or rate.min() < 0 or rate.max() > 1):
        raise ValueError(
            f"{name} must lie in [0, 1] (firing rates), got values in "
            f"[{rate.min().item():.4g}, {rate.max().item():.4g}]; apply a sigmoid or clamp first"
        )


class PoissonSpikeFunction(torch.autograd.Function):
    """z_t = 1[u_t < r] for given uniform draws u; dz_t/dr = 1[|r - u_t| < w] / (2w) (paper Eqs. 7, 8)."""

    @staticmethod
    def forward(ctx, rate, uniform, half_width):
        ctx.save_for_backward(rate, uniform)
        ctx.half_width = half_width
        return (uniform < rate).to(rate.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        rate, uniform = ctx.saved_tensors
        w = ctx.half_width
        inside = ((rate - uniform).abs() < w).to(grad_output.dtype)
        grad_rate = (grad_output * inside).sum(dim=0) / (2.0 * w)
        return grad_rate, None, None


def poisson_spikes(
    rate: torch.Tensor, T: int, half_width: float = 0.5, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Bernoulli-per-step ("Poisson") spikes ``[T, *rate.shape]`` with the reparameterised gradient.

    u_t ~ U(0, 1) is drawn fresh with ``generator``; z_t = 1[u_t < r];
    dz/dr = sum_t 1[|r - u_t| < w] / (2w)  (w = 0.5 gives the reference's height-1 window).
    """
    uniform = torch.rand((T, *rate.shape), generator=generator, device=rate.device, dtype=rate.dtype)
    return PoissonSpikeFunction.apply(rate, uniform, float(half_width))


def rbf_mmd(
    x: torch.Tensor, y: torch.Tensor, kernel_mul: float = 2.0, kernel_num: int = 5
) -> torch.Tensor:
    """Biased MMD^2 between sample sets x [n, d] and y [m, d] with a multi-bandwidth RBF kernel.

    D_ij = ||a_i - a_j||^2 over the stacked 2N samples a; b = sum(D) / ((2N)^2 - 2N) (no gradient);
    k(a, a') = sum_{i=0}^{K-1} exp(-D / (b * mul^(i - K//2)))  (bandwidths b/4 .. 4b for mul=2, K=5);
    MMD^2 = mean K_xx + mean K_yy - 2 mean K_xy  (the V-statistic, diagonals included).
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"rbf_mmd expects x [n, d] and y [m, d] with the same d, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    n = x.shape[0]
    total = torch.cat([x, y], dim=0)
    diff = total[:, None, :] - total[None, :, :]  # exact differences, as the reference (no matmul trick)
    dist = (diff * diff).sum(dim=2)
    count = total.shape[0]
    base = dist.detach().sum() / (count * count - count)
    base = base / (kernel_mul ** (kernel_num // 2))
    kernel = sum(torch.exp(-dist / (base * kernel_mul**i)) for i in range(kernel_num))
    k_xx, k_yy, k_xy = kernel[:n, :n], kernel[n:, n:], kernel[:n, n:]
    return k_xx.mean() + k_yy.mean() - 2.0 * k_xy.mean()


def psp(x_seq: torch.Tensor, decay: float = 0.5) -> torch.Tensor:
    """First-order synaptic filter over dim 0: s_t = s_{t-1} + (x_t - s_{t-1}) * (1 - decay), s_{-1} = 0.

    The reference (FSVAE) uses decay 0.5: s_t = s_{t-1}/2 + x_t/2.
    """
    out = []
    s = torch.zeros_like(x_seq[0])
    for x in x_seq:
        s = s + (x - s) * (1.0 - decay)
        out.append(s)
    return torch.stack(out)
