"""Stateless functions of the papers, one per equation: firing rate (ESVAE Eq. 5), Poisson spike sampling and
its gradient (Eqs. 7, 8), RBF-MMD^2 (Eq. 10); FSVAE's PSP filter and latent distances; the Gaussian KL of the
ANN VAE baseline."""
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


def poisson_fire(rate: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """z_t = 1[u_t < r] for uniform draws u ``[T, *rate.shape]`` (paper Eq. 7; firing probability r, Eq. 6)."""
    return (uniform < rate).to(rate.dtype)


def poisson_window(rate: torch.Tensor, uniform: torch.Tensor, half_width: float) -> torch.Tensor:
    """The surrogate's window 1[|r - u_t| < w] (bool ``[T, *rate.shape]``) of paper Eq. 8."""
    return (rate - uniform).abs() < half_width


def poisson_surrogate_grad(grad_output: torch.Tensor, window: torch.Tensor, height: float) -> torch.Tensor:
    """dL/dr = height * sum_t dL/dz_t * 1[|r - u_t| < w]  (paper Eq. 8, height = 1/alpha = 1/(2w)).

    ``window`` is :func:`poisson_window`; the sum runs over t in order, as the CUDA kernel adds."""
    acc = torch.zeros_like(grad_output[0])
    for t in range(grad_output.shape[0]):
        acc.add_(torch.where(window[t], grad_output[t], 0.0))
    return acc.mul_(height)


def rbf_mmd(
    x: torch.Tensor, y: torch.Tensor, kernel_mul: float = 2.0, kernel_num: int = 5
) -> torch.Tensor:
    """Biased MMD^2 between sample sets x [n, d] and y [m, d] with a multi-bandwidth RBF kernel (paper Eq. 10).

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


def psp_distance(q_bar: torch.Tensor, p_bar: torch.Tensor) -> torch.Tensor:
    """FSVAE's "MMD" (FSVAE paper, its MMD loss): mean over (T, N, L) of (PSP(q_bar) - PSP(p_bar))^2, PSP over dim 0."""
    return ((psp(q_bar) - psp(p_bar)) ** 2).mean()


def bernoulli_kld(q_bar: torch.Tensor, p_bar: torch.Tensor, eps: float = 1e-2) -> torch.Tensor:
    """FSVAE's KL option: sum over (T, L), mean over N of q log((q+e)/(p+e)) + (1-q) log((1-q+e)/(1-p+e)),
    tensors ``[T, N, L]``."""
    kld = q_bar * torch.log((q_bar + eps) / (p_bar + eps)) \
        + (1 - q_bar) * torch.log((1 - q_bar + eps) / (1 - p_bar + eps))
    return kld.sum(dim=(0, 2)).mean()


def gaussian_kld(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """mean_n -1/2 sum_l (1 + logvar - mu^2 - exp(logvar)): KL(N(mu, sigma^2) || N(0, I)) per sample, averaged."""
    return (-0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum(dim=1)).mean()
