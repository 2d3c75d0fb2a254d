"""The paper's LIF neuron and the Poisson latent layer, as SpikingJelly modules.

LIF (ESVAE paper, Eqs. 1-3):  u_t = 0.25 * u_{t-1} * (1 - o_{t-1}) + x_t,  o_t = 1[u_t >= 0.2],
hard reset to 0 with the reset not detached, rectangle surrogate on u in (-0.5, 0.5).
In SpikingJelly terms: LIFNode(tau=1/(1-decay), decay_input=False, v_reset=0., detach_reset=False).
Both modules run ``spikingjelly_vae.kernels`` on every path; which kernel (CuPy or torch) is decided there.
Our switch is ``kernel_backend``; SpikingJelly's own ``backend`` (0.0.0.0.14 only) is left at "torch".
"""
from typing import Optional

import torch
from spikingjelly.activation_based import base, neuron

from . import kernels
from .functional import check_rate, firing_rate
from .registry import register_neuron
from .surrogate import RectangleSurrogate

BACKENDS = kernels.BACKENDS


@register_neuron("paper_lif")
class PaperLIFNode(neuron.LIFNode):
    """SpikingJelly ``LIFNode`` with the ESVAE/FSVAE constants (decay 0.25, v_th 0.2, hard reset to 0).

    Eq. 1: u_t = decay * u_{t-1} * (1 - o_{t-1}) + x_t;  Eq. 2: o_t = 1[u_t >= v_th];  Eq. 3: the
    rectangle surrogate do/du = 1[|u - centre| < half_width] / (2 half_width) (reference: 0, 0.5).
    ``decay`` is the multiplicative factor (u <- decay * u + x), i.e. ``tau = 1/(1-decay)``.
    ``kernel_backend``: "auto" (CuPy kernel for CUDA tensors when CuPy works, else the torch path),
    "cupy" or "torch"; see ``kernels.select_backend``.
    """

    def __init__(self, decay: float = 0.25, v_threshold: float = 0.2, v_reset: float = 0.0,
                 centre: float = 0.0, half_width: float = 0.5, step_mode: str = "m",
                 kernel_backend: str = "auto", store_v_seq: bool = False):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        super().__init__(tau=1.0 / (1.0 - decay), decay_input=False, v_threshold=float(v_threshold),
                         v_reset=float(v_reset),
                         surrogate_function=RectangleSurrogate(centre, half_width, v_threshold),
                         detach_reset=False, step_mode=step_mode, store_v_seq=store_v_seq)
        self.decay = float(decay)
        self.kernel_backend = kernels.check_backend(kernel_backend, "kernel_backend")

    def _v_init(self, like: torch.Tensor) -> Optional[torch.Tensor]:
        """The membrane before the first step: None for the reset value, else a tensor shaped like ``like``
        (a float state becomes a full tensor of that value; a tensor of another shape, left from another batch
        size, is discarded: the neuron starts from v_reset as a reset one)."""
        v = self.v
        if isinstance(v, torch.Tensor):
            return v if v.shape == like.shape else None
        return None if float(v) == self.v_reset else torch.full_like(like, float(v))

    def _run(self, x_seq: torch.Tensor, return_h: bool):
        sg = self.surrogate_function
        return kernels.lif_multistep(
            x_seq, decay=self.decay, v_threshold=self.v_threshold, v_reset=self.v_reset, centre=sg.centre,
            half_width=sg.half_width, backend=self.kernel_backend, v_init=self._v_init(x_seq[0]),
            return_v=True, return_h=return_h)

    def single_step_forward(self, x: torch.Tensor):
        """One step, as the multi-step path with T = 1; the membrane stays in ``self.v``."""
        spikes, self.v = self._run(x.unsqueeze(0), return_h=False)
        return spikes[0]

    def multi_step_forward(self, x_seq: torch.Tensor, *args, **kwargs):
        """Spikes ``[T, ...]`` for inputs ``[T, ...]``, starting from ``self.v`` and leaving the last
        membrane in ``self.v`` (float32; float64 for float64 input). Gradients flow through it into the
        next call until ``reset_net``. With ``store_v_seq`` the pre-reset potentials h go to ``self.v_seq``
        (differentiable), from the same kernel call.
        """
        if not self.store_v_seq:
            spikes, self.v = self._run(x_seq, return_h=False)
            return spikes
        spikes, self.v, self.v_seq = self._run(x_seq, return_h=True)
        return spikes

    def extra_repr(self) -> str:
        return f"decay={self.decay}, v_threshold={self.v_threshold}, v_reset={self.v_reset}, " \
               f"step_mode={self.step_mode}, kernel_backend={self.kernel_backend}"


def poisson_spikes(
    rate: torch.Tensor, T: int, half_width: float = 0.5, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Bernoulli-per-step ("Poisson") spikes ``[T, *rate.shape]`` with the reparameterised gradient (Eqs. 6-8).

    u_t ~ U(0, 1) is drawn fresh with ``generator``; z_t = 1[u_t < r] (Eq. 7);
    dz/dr = sum_t 1[|r - u_t| < w] / (2w) (Eq. 8; w = 0.5 gives the reference's height-1 window).
    Runs ``kernels.poisson_sample`` (the CuPy kernel for CUDA tensors when it works, else torch).
    """
    return kernels.poisson_sample(rate, T, half_width, generator=generator)


@register_neuron("poisson")
class PoissonLatent(base.MemoryModule):
    """Reparameterisable Poisson spike sampling (ESVAE, paper Sec. III-B).

    Multi-step: rates ``[N, L]`` -> spikes ``[T, N, L]``; a spike train ``[T', N, ...]`` is first reduced to
    its firing rate (mean over T', gradient 1/T' per step). ``input="rate"`` or ``"spikes"`` forces the
    reading for other shapes. Single-step: rates ``[N, ...]`` -> one step of spikes.
    ``kernel_backend`` as for :class:`PaperLIFNode`.
    z_t = 1[u_t < r], u_t ~ U(0, 1) fresh per call; dz/dr = sum_t 1[|r - u_t| < w] / (2w).
    """

    def __init__(self, T: int = 16, half_width: float = 0.5, generator: Optional[torch.Generator] = None,
                 input: str = "auto", step_mode: str = "m", kernel_backend: str = "auto"):
        super().__init__()
        if int(T) < 1:
            raise ValueError(f"T must be >= 1, got {T}")
        if half_width <= 0:
            raise ValueError(f"half_width must be > 0, got {half_width}")
        if input not in ("auto", "rate", "spikes"):
            raise ValueError(f"input must be 'auto', 'rate' or 'spikes', got {input!r}")
        self.T, self.half_width, self.generator, self.input = int(T), float(half_width), generator, input
        self.step_mode = step_mode
        self.kernel_backend = kernels.check_backend(kernel_backend, "kernel_backend")

    def _sample(self, rate: torch.Tensor, T: int, generator) -> torch.Tensor:
        if not (rate.is_cuda and torch.cuda.is_current_stream_capturing()):
            check_rate(rate)  # reads values back (a host sync): not while a CUDA graph is being captured
        generator = generator if generator is not None else self.generator
        return kernels.poisson_sample(rate, T, half_width=self.half_width, generator=generator,
                                      backend=self.kernel_backend)

    def multi_step_forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise ValueError("PoissonLatent expects a floating-point tensor: rates [N, L] in [0, 1] "
                             "or spikes [T, N, ...]")
        as_rate = self.input == "rate" or (self.input == "auto" and x.dim() == 2)
        rate = x if as_rate else firing_rate(x, dim=0)
        return self._sample(rate, self.T, generator)

    def single_step_forward(self, rate: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if not isinstance(rate, torch.Tensor) or not rate.is_floating_point():
            raise ValueError("PoissonLatent expects a floating-point tensor of rates in [0, 1]")
        return self._sample(rate, 1, generator)[0]

    def extra_repr(self) -> str:
        return f"T={self.T}, half_width={self.half_width}, step_mode={self.step_mode}, " \
               f"kernel_backend={self.kernel_backend}"
