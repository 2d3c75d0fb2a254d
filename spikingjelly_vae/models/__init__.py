"""Model builders registered by name (timm-style) and ``build_model(config)``, which rebuilds a model from
its ``config`` dict.

Names: ``esvae``, ``fsvae``, ``ann-vae`` (alias ``ann_vae``) build the classes (32x32 by default, any
``image_size`` in ``HIDDEN`` or a custom ``hidden``); ``esvae_large``, ``fsvae_large``, ``ann_vae_large``
(aliases with ``-``) build them for 64x64 images (CelebA). A model's ``config["model"]`` is always the
class name ``esvae`` / ``fsvae`` / ``ann-vae``, so checkpoints rebuild through the plain builders.
Named weights (``hub.py``): ``create_model("esvae", pretrained="esvae-mnist-preview")``; ``weights_names()``.
"""
from torch import nn

from ..registry import (MODELS, WEIGHTS, create_model, get_model_builder, get_weights, model_names,
                        register_model, weights_names)
from .ann_vae import ANNVAE
from .esvae import ESVAE
from .fsvae import FSVAE
from .interface import ANNVAEOutput, ESVAEOutput, FSVAEOutput, SpikingVAE

LARGE_IMAGE_SIZE = 64
LEGACY_KEYS = {"backend": "kernel_backend"}  # config keys of checkpoints written before the rename

register_model("esvae", ESVAE)
register_model("fsvae", FSVAE)
register_model("ann-vae", ANNVAE, aliases=("ann_vae",))


def _large(cls, name: str, kwargs: dict) -> nn.Module:
    size = kwargs.pop("image_size", LARGE_IMAGE_SIZE)
    if size != LARGE_IMAGE_SIZE:
        raise ValueError(f"{name} builds the 64x64 model (CelebA); for image_size={size} use "
                         f"{cls.name!r} with image_size={size}")
    return cls(image_size=LARGE_IMAGE_SIZE, **kwargs)


@register_model("esvae_large", aliases=("esvae-large",))
def esvae_large(in_channels: int = 3, latent_dim: int = 128, T: int = 16, **kwargs) -> ESVAE:
    """ESVAE for 64x64 images (CelebA): hidden channels 32..512, flatten 2048."""
    return _large(ESVAE, "esvae_large", dict(in_channels=in_channels, latent_dim=latent_dim, T=T, **kwargs))


@register_model("fsvae_large", aliases=("fsvae-large",))
def fsvae_large(in_channels: int = 3, latent_dim: int = 128, T: int = 16, **kwargs) -> FSVAE:
    """FSVAE for 64x64 images (CelebA): hidden channels 32..512, flatten 2048."""
    return _large(FSVAE, "fsvae_large", dict(in_channels=in_channels, latent_dim=latent_dim, T=T, **kwargs))


@register_model("ann_vae_large", aliases=("ann-vae-large",))
def ann_vae_large(in_channels: int = 3, latent_dim: int = 128, **kwargs) -> ANNVAE:
    """ANN VAE for 64x64 images (CelebA): hidden channels 32..512."""
    return _large(ANNVAE, "ann_vae_large", dict(in_channels=in_channels, latent_dim=latent_dim, **kwargs))


# the former subclasses, kept as names: they build the plain classes at 64x64
ESVAELarge, FSVAELarge, ANNVAELarge = esvae_large, fsvae_large, ann_vae_large


def build_model(config: dict) -> nn.Module:
    """Build the model named by ``config['model']`` with the remaining keys as keyword arguments.

    Configs of older checkpoints load too: their ``backend`` key is read as ``kernel_backend``.
    """
    config = dict(config)
    builder = get_model_builder(config.pop("model", None))
    for old, new in LEGACY_KEYS.items():
        if old in config:
            value = config.pop(old)
            config.setdefault(new, value)
    return builder(**config)


from . import hub  # noqa: E402,F401  (registers the named weights of the builders above)

__all__ = ["SpikingVAE", "ESVAEOutput", "FSVAEOutput", "ANNVAEOutput", "ESVAE", "ESVAELarge", "FSVAE", "FSVAELarge",
           "ANNVAE", "ANNVAELarge", "MODELS", "build_model",
           "create_model", "esvae_large", "fsvae_large", "ann_vae_large", "get_model_builder", "model_names",
           "register_model", "WEIGHTS", "get_weights", "weights_names"]
