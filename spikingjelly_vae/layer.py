"""Temporal layers of the ESVAE/FSVAE backbone on SpikingJelly multi-step tensors ``[T, N, ...]``.

Every block is weight -> norm -> neuron (default tdBN -> the paper's LIF) with T folded into the batch (a 2-D
conv shared over time equals the reference's Conv3d with kernel (k, k, 1)). ``kernel_backend`` is our LIF
kernel switch ("auto", "cupy", "torch"; not SpikingJelly's own ``backend``). ``fuse_bn_lif`` (opt-in, default
off) runs a block's tdBN -> LIF as one ``kernels.tdbn_lif`` call that keeps less for backward; spikes, running
statistics and gradients are unchanged.
"""
from functools import partial
from typing import Callable, Optional, Tuple, Union

import torch
from torch import nn

from . import kernels
from .kernels.bn_lif import tdbn
from .neuron import PaperLIFNode


def fold(x_seq: torch.Tensor) -> torch.Tensor:
    """``[T, N, ...] -> [T*N, ...]``."""
    return x_seq.flatten(0, 1)


def unfold(x: torch.Tensor, T: int) -> torch.Tensor:
    """``[T*N, ...] -> [T, N, ...]``."""
    return x.unflatten(0, (T, x.shape[0] // T))


class ThresholdDependentBatchNorm(nn.BatchNorm1d):
    """tdBN (Zheng et al. 2021) as the reference code has it.

    Statistics per channel over (T, N[, H, W]); y = alpha * v_th * (x - mean) / sqrt(var + eps) * weight + bias;
    in eval mode computed term by term in the reference's order (``kernels.bn_lif.tdbn``), so converted
    official checkpoints give the official currents bit for bit.
    alpha * v_th is a fixed multiplier (not folded into the weight's initial value as SpikingJelly does);
    weight starts at 1, bias at 0. Inputs ``[T, N, C]`` or ``[T, N, C, H, W]``. ``momentum=None`` keeps a
    cumulative average of the batch statistics, as torch's BatchNorm does.
    """

    def __init__(self, num_features: int, alpha: float = 1.0, v_threshold: float = 0.2, eps: float = 1e-5,
                 momentum: Optional[float] = 0.1):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=True, track_running_stats=True)
        self.alpha, self.v_threshold = float(alpha), float(v_threshold)

    def _check_input_dim(self, x):
        if x.dim() not in (3, 5):
            raise ValueError(f"tdBN expects [T, N, C] or [T, N, C, H, W], got shape {tuple(x.shape)}")

    @property
    def scale(self) -> float:
        """The fixed multiplier alpha * v_th of the weight."""
        return self.alpha * self.v_threshold

    def check_and_count(self, x_seq: torch.Tensor) -> float:
        """Check the input's shape; in training mode count the batch (``num_batches_tracked``). Returns the
        running statistics' update factor: ``momentum``, or 1 / batches counted when momentum is None."""
        self._check_input_dim(x_seq)
        if x_seq.shape[2] != self.num_features:
            raise ValueError(f"tdBN expects {self.num_features} channels at dim 2, got {tuple(x_seq.shape)}")
        if not self.training:
            return 0.0 if self.momentum is None else self.momentum
        self.num_batches_tracked.add_(1)
        return 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        factor = self.check_and_count(x_seq)
        y = tdbn(fold(x_seq), self.weight, self.bias, self.running_mean, self.running_var, self.training, factor,
                 self.eps, self.scale)
        return unfold(y, x_seq.shape[0])

    def extra_repr(self) -> str:
        return f"{self.num_features}, alpha={self.alpha}, v_threshold={self.v_threshold}, eps={self.eps}"


Norm = Optional[Union[nn.Module, Callable[[int], nn.Module]]]
Neuron = Optional[Union[nn.Module, Callable[[], nn.Module]]]


def _out_channels(weight: nn.Module) -> int:
    for attr in ("out_channels", "out_features"):
        if hasattr(weight, attr):
            return int(getattr(weight, attr))
    raise ValueError(f"cannot tell the output channels of {type(weight).__name__}: pass norm_layer as a "
                     "module (or None) instead of a factory")


class _TemporalBlock(nn.Module):
    """weight (shared over T) -> norm -> neuron on ``[T, N, ...]``; ``step(x)`` runs one time step ``[N, ...]``.

    ``norm_layer``: a module, a factory called with the weight's output channels, or None (no norm);
    default tdBN. ``neuron_layer``: a module, a factory called without arguments, or None (no neuron, the
    block outputs the normalised input current); default the paper's LIF. Attribute names ``weight_layer``,
    ``bn``, ``lif`` are the state_dict keys of saved models. ``fuse_bn_lif``: run tdBN -> LIF (when the block
    has exactly those) as one ``kernels.tdbn_lif`` call, same results, less memory kept for backward.
    """

    def __init__(self, weight: nn.Module, norm_layer: Norm = ThresholdDependentBatchNorm,
                 neuron_layer: Neuron = PaperLIFNode, *, fuse_bn_lif: bool = False):
        super().__init__()
        self.fuse_bn_lif = bool(fuse_bn_lif)
        self.weight_layer = weight
        if norm_layer is not None and not isinstance(norm_layer, nn.Module):
            norm_layer = norm_layer(_out_channels(weight))
        if neuron_layer is not None and not isinstance(neuron_layer, nn.Module):
            neuron_layer = neuron_layer()
        self.bn = norm_layer
        self.lif = neuron_layer

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        T = x_seq.shape[0]
        if x_seq.shape[0] > 1 and x_seq.stride(0) == 0:
            # direct (repeated) input: the weight sees the same frame at every step; compute it once
            y0 = self.weight_layer(x_seq[0])
            y = y0.unsqueeze(0).expand(T, *y0.shape)
        else:
            y = unfold(self.weight_layer(fold(x_seq)), T)
        if self._fused():
            return self._bn_lif(y)
        if self.bn is not None:
            y = self.bn(y)
        if self.lif is not None:
            y = self.lif(y)
        return y

    def _fused(self) -> bool:
        """Whether forward takes the fused tdBN + LIF path (opted in, and a block it covers exactly)."""
        return (self.fuse_bn_lif and type(self.bn) is ThresholdDependentBatchNorm
                and type(self.lif) is PaperLIFNode and self.lif.step_mode == "m" and not self.lif.store_v_seq)

    def _bn_lif(self, y: torch.Tensor) -> torch.Tensor:
        """``self.lif(self.bn(y))`` as one kernels.tdbn_lif call; the membrane stays in ``self.lif.v`` as
        PaperLIFNode.multi_step_forward leaves it."""
        bn, lif = self.bn, self.lif
        factor = bn.check_and_count(y)
        sg = lif.surrogate_function
        spikes, lif.v = kernels.tdbn_lif(
            y, bn.weight, bn.bias, running_mean=bn.running_mean, running_var=bn.running_var, training=bn.training,
            momentum=factor, eps=bn.eps, scale=bn.scale, decay=lif.decay, v_threshold=lif.v_threshold,
            v_reset=lif.v_reset, centre=sg.centre, half_width=sg.half_width, v_init=lif._v_init(y[0]),
            backend=lif.kernel_backend, return_v=True)
        return spikes

    def extra_repr(self) -> str:
        return "fuse_bn_lif=True" if self.fuse_bn_lif else ""

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """One time step ``[N, ...] -> [N, ...]``; the neuron keeps its membrane between calls (until reset_net).

        Equal to step t of ``forward`` on the whole sequence when the norm does not depend on the batch of
        steps it sees (tdBN in eval mode); in training mode tdBN normalises this step on its own.
        """
        y = self.weight_layer(x)
        if self.bn is not None:
            y = self.bn(y.unsqueeze(0))[0]
        if self.lif is not None:
            y = getattr(self.lif, "single_step_forward", self.lif)(y)
        return y


def _parts(bn: bool, spike: bool, alpha: float, kernel_backend: str) -> Tuple[Norm, Neuron]:
    """The default tdBN(alpha) and paper LIF factories, or None where switched off."""
    norm = partial(ThresholdDependentBatchNorm, alpha=alpha) if bn else None
    neuron = partial(PaperLIFNode, kernel_backend=kernel_backend) if spike else None
    return norm, neuron


class TemporalConv2d(_TemporalBlock):
    """Conv2d shared over T (reference tdConv, kernel (k, k, 1)) -> tdBN -> LIF."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, *, stride: int = 2,
                 padding: int = 1, bn: bool = True, spike: bool = True, alpha: float = 1.0,
                 kernel_backend: str = "auto", fuse_bn_lif: bool = False):
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding)
        super().__init__(conv, *_parts(bn, spike, alpha, kernel_backend), fuse_bn_lif=fuse_bn_lif)


class TemporalConvTranspose2d(_TemporalBlock):
    """ConvTranspose2d shared over T (reference tdConvTranspose) -> tdBN -> LIF."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, *, stride: int = 2,
                 padding: int = 1, output_padding: int = 1, bn: bool = True, spike: bool = True,
                 alpha: float = 1.0, kernel_backend: str = "auto", fuse_bn_lif: bool = False):
        conv = nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride, padding, output_padding)
        super().__init__(conv, *_parts(bn, spike, alpha, kernel_backend), fuse_bn_lif=fuse_bn_lif)


class TemporalLinear(_TemporalBlock):
    """Linear applied per step on ``[T, N, C]`` (reference tdLinear) -> tdBN -> LIF."""

    def __init__(self, in_features: int, out_features: int, *, bn: bool = True, spike: bool = True,
                 alpha: float = 1.0, kernel_backend: str = "auto", fuse_bn_lif: bool = False):
        super().__init__(nn.Linear(in_features, out_features), *_parts(bn, spike, alpha, kernel_backend),
                         fuse_bn_lif=fuse_bn_lif)


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
