"""Model registry: ``build_model(config)`` rebuilds a model from its ``config`` dict."""
from typing import Callable, Dict

from torch import nn

from .ann_vae import ANNVAE, ANNVAELarge
from .esvae import ESVAE, ESVAELarge
from .fsvae import FSVAE, FSVAELarge

MODELS: Dict[str, Callable[..., nn.Module]] = {"esvae": ESVAE, "fsvae": FSVAE, "ann-vae": ANNVAE}


def register_model(name: str, builder: Callable[..., nn.Module]) -> None:
    MODELS[name] = builder


def build_model(config: dict) -> nn.Module:
    """Build the model named by ``config['model']`` with the remaining keys as keyword arguments."""
    config = dict(config)
    name = config.pop("model", None)
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}")
    return MODELS[name](**config)


__all__ = ["ESVAE", "ESVAELarge", "FSVAE", "FSVAELarge", "ANNVAE", "ANNVAELarge", "MODELS", "build_model",
           "register_model"]
