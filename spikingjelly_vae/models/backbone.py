"""The spiking conv encoder/decoder shared by ESVAE and FSVAE (reference_spec section 2)."""
from typing import Sequence

import torch
from torch import nn

from spikingjelly.activation_based import functional as sj_functional

from ..layer import MembraneOutputLayer, TemporalConv2d, TemporalConvTranspose2d, TemporalLinear

HIDDEN = {32: (32, 64, 128, 256), 64: (32, 64, 128, 256, 512)}


def check_images(x, in_channels: int, image_size: int) -> None:
    """Raise ValueError unless ``x`` is a float tensor [N, in_channels, image_size, image_size]."""
    expected = f"[N, {in_channels}, {image_size}, {image_size}]"
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected an image tensor {expected}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"expected float images in [-1, 1] with shape {expected}, got dtype {x.dtype}; "
                         "convert with x.float() / 127.5 - 1")
    if x.dim() != 4 or x.shape[1] != in_channels or x.shape[2] != image_size or x.shape[3] != image_size:
        raise ValueError(f"expected images of shape {expected}, got {tuple(x.shape)}")


class SpikingEncoder(nn.Module):
    """Conv k3 s2 p1 stages (tdBN, LIF), flatten per step, tdLinear -> L spikes x_e ``[T, N, L]``."""

    def __init__(self, in_channels: int, latent_dim: int, hidden: Sequence[int], kernel_backend: str = "auto"):
        super().__init__()
        chans = (in_channels, *hidden)
        self.convs = nn.Sequential(*[TemporalConv2d(a, b, kernel_backend=kernel_backend)
                                     for a, b in zip(chans, chans[1:])])
        self.before_latent = TemporalLinear(hidden[-1] * 4, latent_dim, kernel_backend=kernel_backend)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        h = self.convs(x_seq)
        return self.before_latent(h.flatten(2))


class SpikingDecoder(nn.Module):
    """tdLinear L -> C*2*2, ConvT stages (tdBN, LIF), ConvT s1 to the image, membrane readout + tanh."""

    def __init__(self, out_channels: int, latent_dim: int, hidden: Sequence[int], kernel_backend: str = "auto"):
        super().__init__()
        rev = tuple(reversed(hidden))
        self.top = rev[0]
        self.decoder_input = TemporalLinear(latent_dim, rev[0] * 4, kernel_backend=kernel_backend)
        stages = [TemporalConvTranspose2d(a, b, kernel_backend=kernel_backend) for a, b in zip(rev, rev[1:])]
        stages.append(TemporalConvTranspose2d(rev[-1], rev[-1], kernel_backend=kernel_backend))
        self.deconvs = nn.Sequential(*stages)
        self.to_image = TemporalConvTranspose2d(rev[-1], out_channels, stride=1, output_padding=0,
                                                bn=False, spike=False)
        self.readout = MembraneOutputLayer(0.8)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.decoder_input(z)
        h = h.unflatten(2, (self.top, 2, 2))
        return self.readout(self.to_image(self.deconvs(h)))


class SpikingBackbone(nn.Module):
    """encode / decode of the ESVAE and FSVAE backbone (direct input encoding, spiking encoder and decoder).

    Subclasses set ``in_channels``, ``image_size``, ``latent_dim``, ``T``, ``encoder`` and ``decoder``.
    """

    def encode(self, x: torch.Tensor):
        """Return the encoder spikes x_e ``[T, N, L]`` and their firing rate (the posterior rate) ``[N, L]``.

        Direct encoding: the analog image is the input at every step (a stride-0 view, so the first conv
        runs once; see layer._TemporalBlock).
        """
        check_images(x, self.in_channels, self.image_size)
        sj_functional.reset_net(self)
        x_e = self.encoder(x.unsqueeze(0).expand(self.T, *x.shape))
        return x_e, x_e.mean(0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent spikes ``[T, N, L]`` -> images ``[N, C, H, W]`` in (-1, 1)."""
        if z.dim() != 3 or z.shape[2] != self.latent_dim:
            raise ValueError(f"expected latent spikes [T, N, {self.latent_dim}], got {tuple(z.shape)}")
        sj_functional.reset_net(self.decoder)
        return self.decoder(z)
