"""spikingjelly-vae: spiking variational autoencoders (ESVAE, FSVAE, ANN VAE) on SpikingJelly."""
__version__ = "0.1.0"

from .functional import firing_rate, psp, rbf_mmd  # noqa: E402
from .layer import (MembraneOutputLayer, TemporalConv2d, TemporalConvTranspose2d,  # noqa: E402
                    TemporalLinear, ThresholdDependentBatchNorm)
from .neuron import PaperLIFNode, PoissonLatent, poisson_spikes  # noqa: E402
from .registry import get_neuron, register_neuron  # noqa: E402
from .surrogate import RectangleSurrogate  # noqa: E402

__all__ = [
    "__version__", "firing_rate", "poisson_spikes", "psp", "rbf_mmd", "MembraneOutputLayer", "TemporalConv2d",
    "TemporalConvTranspose2d", "TemporalLinear", "ThresholdDependentBatchNorm", "PaperLIFNode",
    "PoissonLatent", "get_neuron", "register_neuron", "RectangleSurrogate",
]
