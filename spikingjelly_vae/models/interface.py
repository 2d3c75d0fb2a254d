"""What the rest of the package relies on from a model: typed forward outputs, the ``SpikingVAE`` protocol
the experiments use, and ``config`` derived from the constructor's arguments."""
import inspect
from typing import Dict, NamedTuple, Optional, Protocol, runtime_checkable

import torch


class ESVAEOutput(NamedTuple):
    """ESVAE forward: x_hat ``[N, C, H, W]`` in (-1, 1), r_p = mean_t x_e (Eq. 5) and r_q, both ``[N, L]``."""
    reconstruction: torch.Tensor
    posterior_rate: torch.Tensor
    prior_rate: torch.Tensor


class FSVAEOutput(NamedTuple):
    """FSVAE forward: x_hat, posterior and prior Bernoulli probabilities q_z, p_z ``[T, N, L, k]``, spikes z."""
    reconstruction: torch.Tensor
    q_z: torch.Tensor
    p_z: torch.Tensor
    z: torch.Tensor


class ANNVAEOutput(NamedTuple):
    """ANN VAE forward: x_hat and the Gaussian posterior's mean and log-variance ``[N, L]``."""
    reconstruction: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor


@runtime_checkable
class SpikingVAE(Protocol):
    """A VAE with a spiking latent space (ESVAE, FSVAE): what robustness, firing-rate analysis and the encoder
    probe rely on. ``isinstance(model, SpikingVAE)`` checks that the methods exist."""

    def encode(self, x: torch.Tensor): ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor: ...

    def posterior_spikes(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor: ...

    def prior_spikes(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor: ...

    def loss(self, x: torch.Tensor, out) -> Dict[str, torch.Tensor]: ...


def init_config(model, args: dict, **resolved) -> dict:
    """A model's ``config``: its registry name and every argument of its constructor, read from the
    constructor's ``locals()`` (``args``), with ``resolved`` replacing what the constructor worked out
    (e.g. the default ``hidden``); tuples become lists, so the dict is plain JSON."""
    names = [p for p in inspect.signature(type(model).__init__).parameters if p != "self"]
    config = {"model": model.name, **{p: args[p] for p in names}, **resolved}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
