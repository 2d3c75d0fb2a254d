"""Rectangle surrogate gradient with a configurable centre and half-width.

SpikingJelly hands the surrogate x = H - v_th. The reference code puts its window on the membrane
potential u itself (centre 0, half-width 0.5), i.e. on x in (-0.7, 0.3) for v_th = 0.2:

    forward:  o = 1[x >= 0]
    backward: do/du = 1[|u - centre| < w] / (2w),  u = x + v_th

The module is a plain ``nn.Module`` with ``spiking = True`` so it works as ``surrogate_function`` of a
SpikingJelly neuron in both 0.0.0.0.14 and 2.0 (their ``SurrogateFunctionBase`` contracts differ).
"""
import torch
from torch import nn


class _RectangleSpike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, offset, half_width):
        ctx.save_for_backward(x)
        ctx.offset, ctx.half_width = offset, half_width
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        inside = (x + ctx.offset).abs() < ctx.half_width
        return grad_output * inside.to(grad_output.dtype) / (2.0 * ctx.half_width), None, None


def rectangle_spike(x: torch.Tensor, offset: float = 0.2, half_width: float = 0.5) -> torch.Tensor:
    """Heaviside of ``x`` with gradient 1[|x + offset| < w] / (2w)."""
    return _RectangleSpike.apply(x, float(offset), float(half_width))


class RectangleSurrogate(nn.Module):
    """Rectangle window of height 1/(2w) on the membrane potential u, centred at ``centre``.

    Defaults give the reference window: u in (-0.5, 0.5), height 1 (``centre=0``, ``half_width=0.5``).
    ``centre=v_threshold`` gives SpikingJelly's usual threshold-centred window.
    """

    spiking = True

    def __init__(self, centre: float = 0.0, half_width: float = 0.5, v_threshold: float = 0.2):
        super().__init__()
        if half_width <= 0:
            raise ValueError(f"half_width must be > 0, got {half_width}")
        self.centre, self.half_width, self.v_threshold = float(centre), float(half_width), float(v_threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x = u - v_th, so |u - centre| = |x + (v_th - centre)|
        return rectangle_spike(x, self.v_threshold - self.centre, self.half_width)

    def extra_repr(self) -> str:
        return f"centre={self.centre}, half_width={self.half_width}, v_threshold={self.v_threshold}"
