"""The spiking conv encoder/decoder shared by ESVAE and FSVAE (ESVAE paper Sec. IV-B)."""
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from spikingjelly.activation_based import functional as sj_functional

from ..functional import firing_rate
from ..layer import MembraneOutputLayer, TemporalConv2d, TemporalConvTranspose2d, TemporalLinear

HIDDEN = {32: (32, 64, 128, 256), 64: (32, 64, 128, 256, 512)}  # the default channels per image size


def resolve_hidden(image_size: int, hidden: Optional[Sequence[int]] = None) -> Tuple[int, ...]:
    """The conv channels per stage: ``hidden`` if given, else the paper's ``HIDDEN[image_size]``.

    Each stage halves the image and the encoder ends at 2x2, so ``image_size == 2 * 2**len(hidden)``.
    """
    if hidden is None:
        if image_size not in HIDDEN:
            raise ValueError(f"image_size must be one of {sorted(HIDDEN)} (or pass hidden=, one channel count "
                             f"per halving down to 2x2), got {image_size}")
        return HIDDEN[image_size]
    hidden = tuple(int(c) for c in hidden)
    if not hidden or min(hidden) < 1:
        raise ValueError(f"hidden must be a non-empty sequence of channel counts >= 1, got {hidden}")
    if image_size != 2 * 2 ** len(hidden):
        raise ValueError(f"hidden={hidden} has {len(hidden)} stages, which take {2 * 2 ** len(hidden)}x"
                         f"{2 * 2 ** len(hidden)} images (2 * 2**stages); got image_size={image_size}")
    return hidden


def check_model_args(in_channels: int, image_size: int, hidden: Optional[Sequence[int]]) -> Tuple[int, ...]:
    """Validate the arguments shared by the models; return the resolved hidden channels."""
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
    return resolve_hidden(image_size, hidden)


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

    def __init__(self, in_channels: int, latent_dim: int, hidden: Sequence[int], kernel_backend: str = "auto",
                 fuse_bn_lif: bool = False):
        super().__init__()
        chans = (in_channels, *hidden)
        opts = dict(kernel_backend=kernel_backend, fuse_bn_lif=fuse_bn_lif)
        self.convs = nn.Sequential(*[TemporalConv2d(a, b, **opts) for a, b in zip(chans, chans[1:])])
        self.before_latent = TemporalLinear(hidden[-1] * 4, latent_dim, **opts)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        h = self.convs(x_seq)
        return self.before_latent(h.flatten(2))


class SpikingDecoder(nn.Module):
    """tdLinear L -> C*2*2, ConvT stages (tdBN, LIF), ConvT s1 to the image, membrane readout + tanh."""

    def __init__(self, out_channels: int, latent_dim: int, hidden: Sequence[int], kernel_backend: str = "auto",
                 fuse_bn_lif: bool = False):
        super().__init__()
        rev = tuple(reversed(hidden))
        self.top = rev[0]
        opts = dict(kernel_backend=kernel_backend, fuse_bn_lif=fuse_bn_lif)
        self.decoder_input = TemporalLinear(latent_dim, rev[0] * 4, **opts)
        stages = [TemporalConvTranspose2d(a, b, **opts) for a, b in zip(rev, rev[1:])]
        stages.append(TemporalConvTranspose2d(rev[-1], rev[-1], **opts))
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

    Subclasses set ``in_channels``, ``image_size``, ``latent_dim``, ``T``, ``encoder`` and ``decoder``
    (modules in their construction order, which fixes the random initialisation).
    """

    def encode(self, x: torch.Tensor):
        """Return the encoder spikes x_e ``[T, N, L]`` and their firing rate r_p ``[N, L]`` (paper Eq. 5).

        Direct encoding: the analog image is the input at every step (a stride-0 view, so the first conv
        runs once; see layer._TemporalBlock).
        """
        check_images(x, self.in_channels, self.image_size)
        sj_functional.reset_net(self)
        x_e = self.encoder(x.unsqueeze(0).expand(self.T, *x.shape))
        return x_e, firing_rate(x_e)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent spikes ``[T, N, L]`` -> images ``[N, C, H, W]`` in (-1, 1)."""
        if z.dim() != 3 or z.shape[2] != self.latent_dim:
            raise ValueError(f"expected latent spikes [T, N, {self.latent_dim}], got {tuple(z.shape)}")
        sj_functional.reset_net(self.decoder)
        return self.decoder(z)
