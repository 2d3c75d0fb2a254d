"""The paper's LIF neuron and the Poisson latent layer, as SpikingJelly multi-step modules.

LIF (reference_spec 1.1):  u_t = 0.25 * u_{t-1} * (1 - o_{t-1}) + x_t,  o_t = 1[u_t >= 0.2],
hard reset to 0 with the reset not detached, rectangle surrogate on u in (-0.5, 0.5).
In SpikingJelly terms: LIFNode(tau=1/(1-decay), decay_input=False, v_reset=0., detach_reset=False).
"""
import logging
from typing import Optional

import torch
from spikingjelly.activation_based import base, neuron

from .functional import check_rate, firing_rate, poisson_spikes
from .registry import register_neuron
from .surrogate import RectangleSurrogate

log = logging.getLogger(__name__)
BACKENDS = ("auto", "cupy", "torch")


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def _use_cupy(tensor: torch.Tensor, backend: str) -> bool:
    """True when our CuPy kernels should run; ``kernels.select_backend`` logs (once) why or why not."""
    if backend == "torch" or (backend == "auto" and not tensor.is_cuda):
        return False
    from .kernels import select_backend

    return select_backend(tensor, backend) == "cupy"


@register_neuron("paper_lif")
class PaperLIFNode(neuron.LIFNode):
    """SpikingJelly ``LIFNode`` with the ESVAE/FSVAE constants (decay 0.25, v_th 0.2, hard reset to 0).

    ``decay`` is the multiplicative factor of the reference (u <- decay * u + x), i.e. ``tau = 1/(1-decay)``.
    ``centre``/``half_width`` place the rectangle surrogate on the membrane potential (reference: 0, 0.5).
    ``backend``: "auto" (CuPy kernel for CUDA tensors when CuPy works, else SpikingJelly's torch path),
    "cupy" or "torch".
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
        self.kernel_backend = _check_backend(kernel_backend)

    def _step(self, x: torch.Tensor, v: torch.Tensor):
        """One step: h = v_reset + decay * (v - v_reset) + x, o = 1[h >= v_th], v' = h (1 - o) + v_reset o."""
        if self.v_reset == 0.0:
            h = self.decay * v + x
            o = self.surrogate_function(h - self.v_threshold)
            return h, o, h * (1.0 - o)
        h = self.v_reset + self.decay * (v - self.v_reset) + x
        o = self.surrogate_function(h - self.v_threshold)
        return h, o, h * (1.0 - o) + self.v_reset * o

    def _initial_v(self, x: torch.Tensor) -> torch.Tensor:
        v = self.v
        if not isinstance(v, torch.Tensor) or v.shape != x.shape:
            v = torch.full_like(x, float(v) if not isinstance(v, torch.Tensor) else 0.0)
        return v

    def single_step_forward(self, x: torch.Tensor):
        _, o, self.v = self._step(x, self._initial_v(x))
        return o

    def multi_step_forward(self, x_seq: torch.Tensor, *args, **kwargs):
        """Spikes ``[T, ...]`` for inputs ``[T, ...]``, starting from ``self.v`` and leaving the last
        membrane in ``self.v`` (gradients flow through it into the next call until ``reset_net``).

        Without ``store_v_seq`` this is ``kernels.lif_multistep`` (the CuPy kernel, or its lean torch loop,
        bit-identical to the loop below on CPU); ``self.v`` is then float32 (float64 for float64 input).
        With ``store_v_seq`` the plain autograd loop runs, to keep h per step in ``self.v_seq``.
        """
        if not self.store_v_seq:
            from .kernels import lif_multistep

            v = self.v
            if isinstance(v, torch.Tensor) and v.shape == x_seq.shape[1:]:
                v_init = v
            elif not isinstance(v, torch.Tensor) and float(v) == self.v_reset:
                v_init = None
            else:
                v_init = self._initial_v(x_seq[0])  # the loop's rule for a float or mismatched state
            sg = self.surrogate_function
            spikes, self.v = lif_multistep(
                x_seq, decay=self.decay, v_threshold=self.v_threshold, v_reset=self.v_reset, centre=sg.centre,
                half_width=sg.half_width, backend="cupy" if _use_cupy(x_seq, self.kernel_backend) else "torch",
                v_init=v_init, return_v=True)
            return spikes
        v = self._initial_v(x_seq[0])
        spikes, v_seq = [], []
        for x in x_seq:
            h, o, v = self._step(x, v)
            spikes.append(o)
            v_seq.append(h)
        self.v = v
        self.v_seq = torch.stack(v_seq)
        return torch.stack(spikes)

    def extra_repr(self) -> str:
        return f"decay={self.decay}, v_threshold={self.v_threshold}, v_reset={self.v_reset}, " \
               f"step_mode={self.step_mode}, kernel_backend={self.kernel_backend}"


@register_neuron("poisson")
class PoissonLatent(base.MemoryModule):
    """Reparameterisable Poisson spike sampling (ESVAE, paper Sec. III-B).

    Multi-step: rates ``[N, L]`` -> spikes ``[T, N, L]``; a spike train ``[T', N, ...]`` is first reduced to
    its firing rate (mean over T', gradient 1/T' per step). ``input="rate"`` or ``"spikes"`` forces the
    reading for other shapes. Single-step: rates ``[N, ...]`` -> one step of spikes.
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
        self.kernel_backend = _check_backend(kernel_backend)

    def _sample(self, rate: torch.Tensor, T: int, generator) -> torch.Tensor:
        check_rate(rate)
        generator = generator if generator is not None else self.generator
        if _use_cupy(rate, self.kernel_backend):
            from .kernels import poisson_sample

            return poisson_sample(rate, T, half_width=self.half_width, generator=generator, backend="cupy")
        return poisson_spikes(rate, T, self.half_width, generator)

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
        return f"T={self.T}, half_width={self.half_width}, step_mode={self.step_mode}, kernel_backend={self.kernel_backend}"
