"""The ANN autoencoder whose latent space defines FAD (ESVAE paper Sec. IV-C; FSVAE paper).

AE (32x32): encoder = 4 stages [Conv2d k3 s2 p1 -> BatchNorm2d -> LeakyReLU(0.01)] with 32, 64,
128, 256 channels (32 -> 2 pixels), flatten (256*2*2 = 1024), Linear -> latent. Decoder: Linear ->
[256, 2, 2], 3 stages [ConvTranspose2d k3 s2 p1 op1 -> BN -> LeakyReLU] 256 -> 128 -> 64 -> 32, then
final_layer = ConvT 32 -> 32 (k3 s2 p1 op1) -> BN -> LeakyReLU -> ConvT 32 -> C (k3 s1 p1) -> tanh.
AELarge (64x64) adds a 512 stage (flatten 2048). Module names match the official checkpoints
(`encoder.{i}.{0,1}`, `latent_layer`, `decoder_input`, `decoder.{i}.{0,1}`, `final_layer.{0,1,3}`),
so `load_state_dict` takes those files unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AE", "AELarge", "build_feature_ae"]


def _down(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.LeakyReLU())


def _up(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1),
                         nn.BatchNorm2d(c_out), nn.LeakyReLU())


class AE(nn.Module):
    """Deterministic conv autoencoder on [-1, 1] images of side 2 * 2**len(hidden_dims)."""

    hidden_dims = (32, 64, 128, 256)

    def __init__(self, in_channels: int = 1, latent_dim: int = 64):
        super().__init__()
        dims = list(self.hidden_dims)
        self.in_channels, self.latent_dim = in_channels, latent_dim
        self.image_size = 2 * 2 ** len(dims)
        self.config = {"model": type(self).__name__, "in_channels": in_channels, "latent_dim": latent_dim}
        self.encoder = nn.Sequential(*[_down(a, b) for a, b in zip([in_channels] + dims[:-1], dims)])
        self.latent_layer = nn.Linear(dims[-1] * 4, latent_dim)
        self.decoder_input = nn.Linear(latent_dim, dims[-1] * 4)
        rev = dims[::-1]
        self.decoder = nn.Sequential(*[_up(a, b) for a, b in zip(rev[:-1], rev[1:])])
        self.final_layer = nn.Sequential(
            nn.ConvTranspose2d(dims[0], dims[0], 3, stride=2, padding=1, output_padding=1),
            nn.BatchNorm2d(dims[0]), nn.LeakyReLU(),
            nn.ConvTranspose2d(dims[0], in_channels, 3, padding=1), nn.Tanh())

    def _check(self, x: torch.Tensor) -> None:
        want = (self.in_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"{type(self).__name__} takes images [N, {want[0]}, {want[1]}, {want[2]}] "
                             f"in [-1, 1], got {tuple(x.shape)}")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images [N, C, H, W] -> latent [N, latent_dim] (the FAD features)."""
        self._check(x)
        return self.latent_layer(torch.flatten(self.encoder(x), 1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent [N, latent_dim] -> images in (-1, 1)."""
        h = self.decoder_input(z).view(-1, self.hidden_dims[-1], 2, 2)
        return self.final_layer(self.decoder(h))

    def forward(self, x: torch.Tensor):
        """(reconstruction, latent)."""
        z = self.encode(x)
        return self.decode(z), z

    def loss(self, x: torch.Tensor, out) -> dict:
        """The official training loss: MSE between reconstruction and input in [-1, 1]."""
        recon = F.mse_loss(out[0], x)
        return {"loss": recon, "recon": recon}


class AELarge(AE):
    """AE for 64x64 images (CelebA): one more stage with 512 channels."""

    hidden_dims = (32, 64, 128, 256, 512)


def build_feature_ae(in_channels: int, latent_dim: int, image_size: int) -> AE:
    """AE for 32x32 images, AELarge for 64x64 (the official choice per dataset)."""
    if image_size == 32:
        return AE(in_channels, latent_dim)
    if image_size == 64:
        return AELarge(in_channels, latent_dim)
    raise ValueError(f"the FAD autoencoder takes 32x32 or 64x64 images, not {image_size}x{image_size}")
