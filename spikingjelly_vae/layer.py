"""Temporal layers of the ESVAE/FSVAE backbone on SpikingJelly multi-step tensors ``[T, N, ...]``.

Every block is weight -> tdBN -> LIF with T folded into the batch (a 2-D conv shared over time equals the
reference's Conv3d with kernel (k, k, 1)).
"""
import torch
import torch.nn.functional as F
from torch import nn

from .neuron import PaperLIFNode


def fold(x_seq: torch.Tensor) -> torch.Tensor:
    """``[T, N, ...] -> [T*N, ...]``."""
    return x_seq.flatten(0, 1)


def unfold(x: torch.Tensor, T: int) -> torch.Tensor:
    """``[T*N, ...] -> [T, N, ...]``."""
    return x.unflatten(0, (T, x.shape[0] // T))


class ThresholdDependentBatchNorm(nn.modules.batchnorm._BatchNorm):
    """tdBN (Zheng et al. 2021) as the reference code has it.

    Statistics per channel over (T, N[, H, W]); y = weight * alpha * v_th * (x - mean) / sqrt(var + eps) + bias.
    alpha * v_th is a fixed multiplier (not folded into the weight's initial value as SpikingJelly does);
    weight starts at 1, bias at 0. Inputs ``[T, N, C]`` or ``[T, N, C, H, W]``.
    """

    def __init__(self, num_features: int, alpha: float = 1.0, v_threshold: float = 0.2, eps: float = 1e-5,
                 momentum: float = 0.1):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=True, track_running_stats=True)
        self.alpha, self.v_threshold = float(alpha), float(v_threshold)

    def _check_input_dim(self, x):
        if x.dim() not in (3, 5):
            raise ValueError(f"tdBN expects [T, N, C] or [T, N, C, H, W], got shape {tuple(x.shape)}")

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x_seq)
        if x_seq.shape[2] != self.num_features:
            raise ValueError(f"tdBN expects {self.num_features} channels at dim 2, got {tuple(x_seq.shape)}")
        T = x_seq.shape[0]
        scale = self.alpha * self.v_threshold
        if self.training:
            self.num_batches_tracked.add_(1)
        y = F.batch_norm(fold(x_seq), self.running_mean, self.running_var, self.weight * scale, self.bias,
                         self.training, self.momentum, self.eps)
        return unfold(y, T)

    def extra_repr(self) -> str:
        return f"{self.num_features}, alpha={self.alpha}, v_threshold={self.v_threshold}, eps={self.eps}"


class _TemporalBlock(nn.Module):
    """weight (applied per step) -> optional tdBN -> optional LIF."""

    def __init__(self, weight: nn.Module, channels: int, bn: bool, spike: bool, alpha: float, kernel_backend: str):
        super().__init__()
        self.weight_layer = weight
        self.bn = ThresholdDependentBatchNorm(channels, alpha=alpha) if bn else None
        self.lif = PaperLIFNode(kernel_backend=kernel_backend) if spike else None

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        T = x_seq.shape[0]
        if x_seq.shape[0] > 1 and x_seq.stride(0) == 0:
            # direct (repeated) input: the weight sees the same frame at every step; compute it once
            y0 = self.weight_layer(x_seq[0])
            y = y0.unsqueeze(0).expand(T, *y0.shape)
        else:
            y = unfold(self.weight_layer(fold(x_seq)), T)
        if self.bn is not None:
            y = self.bn(y)
        if self.lif is not None:
            y = self.lif(y)
        return y


class TemporalConv2d(_TemporalBlock):
    """Conv2d shared over T (reference tdConv, kernel (k, k, 1)) -> tdBN -> LIF."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=2, padding=1, bn=True, spike=True,
                 alpha=1.0, kernel_backend="auto"):
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding)
        super().__init__(conv, out_channels, bn, spike, alpha, kernel_backend)


class TemporalConvTranspose2d(_TemporalBlock):
    """ConvTranspose2d shared over T (reference tdConvTranspose) -> tdBN -> LIF."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=2, padding=1, output_padding=1,
                 bn=True, spike=True, alpha=1.0, kernel_backend="auto"):
        conv = nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride, padding, output_padding)
        super().__init__(conv, out_channels, bn, spike, alpha, kernel_backend)


class TemporalLinear(_TemporalBlock):
    """Linear applied per step on ``[T, N, C]`` (reference tdLinear) -> tdBN -> LIF."""

    def __init__(self, in_features, out_features, bn=True, spike=True, alpha=1.0, kernel_backend="auto"):
        super().__init__(nn.Linear(in_features, out_features), out_features, bn, spike, alpha, kernel_backend)


class MembraneOutputLayer(nn.Module):
    """Readout of a non-firing leaky integrator: y = tanh(sum_t decay^(T-1-t) x_t), ``[T, N, ...] -> [N, ...]``."""

    def __init__(self, decay: float = 0.8):
        super().__init__()
        self.decay = float(decay)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        T = x_seq.shape[0]
        coef = self.decay ** torch.arange(T - 1, -1, -1, dtype=x_seq.dtype, device=x_seq.device)
        return torch.tanh(torch.tensordot(coef, x_seq, dims=([0], [0])))

    def extra_repr(self) -> str:
        return f"decay={self.decay}"
