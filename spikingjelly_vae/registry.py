"""A name -> class registry for neurons, so configs can name them (``get_neuron("poisson")``)."""
from typing import Callable, Dict

_NEURONS: Dict[str, type] = {}


def register_neuron(name: str) -> Callable[[type], type]:
    """Class decorator: make ``cls`` available as ``get_neuron(name, **kwargs)``."""

    def decorate(cls: type) -> type:
        if name in _NEURONS and _NEURONS[name] is not cls:
            raise ValueError(f"neuron name {name!r} is already registered to {_NEURONS[name].__name__}")
        _NEURONS[name] = cls
        return cls

    return decorate


def get_neuron(name: str, **kwargs):
    """Build the neuron registered under ``name``."""
    try:
        cls = _NEURONS[name]
    except KeyError:
        raise ValueError(f"unknown neuron {name!r}; registered: {', '.join(sorted(_NEURONS))}") from None
    return cls(**kwargs)


def neuron_names():
    return sorted(_NEURONS)
