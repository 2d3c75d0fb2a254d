"""Name -> builder registries, so configs can name neurons (``get_neuron("poisson")``) and models
(``create_model("esvae_large", latent_dim=64)``), timm-style: ``@register_model("name")`` on a builder.

Imports nothing of the package, so any module may register into it.
"""
from typing import Callable, Dict, Iterable, Optional

NEURONS: Dict[str, Callable] = {}
MODELS: Dict[str, Callable] = {}


def _add(table: Dict[str, Callable], kind: str, names: Iterable[str], builder: Callable) -> Callable:
    for name in names:
        if name in table and table[name] is not builder:
            raise ValueError(f"{kind} name {name!r} is already registered to {table[name].__name__}")
        table[name] = builder
    return builder


def _lookup(table: Dict[str, Callable], kind: str, name) -> Callable:
    try:
        return table[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown {kind} {name!r}; choose one of {', '.join(sorted(table))} "
                         "(the registered names)") from None


def register_neuron(name: str) -> Callable[[type], type]:
    """Class decorator: make ``cls`` available as ``get_neuron(name, **kwargs)``."""
    return lambda cls: _add(NEURONS, "neuron", [name], cls)


def get_neuron(name: str, **kwargs):
    """Build the neuron registered under ``name``."""
    return _lookup(NEURONS, "neuron", name)(**kwargs)


def neuron_names():
    return sorted(NEURONS)


def register_model(name: str, builder: Optional[Callable] = None, *, aliases: Iterable[str] = ()):
    """Register a model builder (a class or a function returning the model) under ``name`` and ``aliases``.

    ``register_model(name, builder)`` registers at once; ``@register_model(name)`` decorates a builder.
    """
    names = [name, *aliases]
    if builder is not None:
        return _add(MODELS, "model", names, builder)
    return lambda fn: _add(MODELS, "model", names, fn)


def get_model_builder(name: str) -> Callable:
    """The builder registered under ``name``; ValueError listing the known names otherwise."""
    return _lookup(MODELS, "model", name)


def create_model(name: str, **kwargs):
    """Build the model registered under ``name`` with keyword arguments ``kwargs``."""
    return get_model_builder(name)(**kwargs)


def model_names():
    return sorted(MODELS)
