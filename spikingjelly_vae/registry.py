"""The one registry, timm-style: neurons and model builders by name, and the named weights of those models.

- ``@register_neuron("poisson")`` / ``get_neuron("poisson", T=16)``.
- ``register_model("esvae", ESVAE)`` / ``create_model("esvae", latent_dim=64)``: a builder is a class or a
  function returning the model; its keyword defaults are the model's default config.
- ``register_weights(WeightsEntry(...))``: named weights of a registered model with the config they fit,
  the file (inside the package, ``weights/``), its sha256, status, measured metrics and how it was trained.
  ``create_model("esvae", pretrained="esvae-mnist-preview")`` (or ``create_model("esvae-mnist-preview")``)
  builds the model from the entry's config, loads the sha256-checked weights (``weights_only=True``; fp16
  files are cast to the model's fp32 parameters) and returns it in eval mode.

Statuses: ``available`` (a completed schedule), ``preview`` (real weights, trained on a shorter schedule
than the paper's; its entry says how) and ``training`` (no file yet; loading says how to train it).
The package's own entries are registered by ``spikingjelly_vae.models`` (``models/hub.py``). Of the package
this module imports only ``atomic`` (file hashes), so every module above may register into it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional, Tuple

from .atomic import sha256_file

NEURONS: Dict[str, Callable] = {}
MODELS: Dict[str, Callable] = {}
WEIGHTS: Dict[str, "WeightsEntry"] = {}
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
STATUSES = ("available", "preview", "training")
LOADABLE = ("available", "preview")


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


def model_names():
    return sorted(MODELS)


# ------------------------------------------------------------------------------------------ weights
class WeightsError(ValueError):
    """Weights that are unknown, not trained yet, or whose file is missing or does not match its sha256."""


@dataclass
class WeightsEntry:
    """Named weights of a registered model."""

    name: str
    model: str                     # registered model name (the config's "model")
    dataset: str
    status: str                    # "available", "preview" or "training"
    epochs_total: int              # epochs of the schedule the name stands for
    epochs_reached: Optional[int] = None
    config: dict = field(default_factory=dict)   # the model config (builder keyword arguments + "model")
    file: Optional[str] = None     # relative to WEIGHTS_DIR, or absolute
    sha256: Optional[str] = None
    dtype: str = "fp32"
    metrics: dict = field(default_factory=dict)  # measured with these weights (see `measured`)
    measured: str = ""             # where, how and on what the metrics were measured
    trained: str = ""              # how the weights were trained
    commit: Optional[str] = None
    command: Optional[str] = None  # the command that trains (or continues) them

    def path(self) -> Optional[Path]:
        return None if self.file is None else WEIGHTS_DIR / self.file  # an absolute file stays absolute

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def register_weights(entry: WeightsEntry) -> WeightsEntry:
    """Add or replace an entry; loadable ones need file, sha256 and config."""
    if entry.status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {entry.status!r}")
    if entry.status in LOADABLE and not (entry.file and entry.sha256 and entry.config):
        raise ValueError(f"{entry.status} entry {entry.name!r} needs file, sha256 and config")
    WEIGHTS[entry.name] = entry
    return entry


def get_weights(name: str) -> WeightsEntry:
    if name not in WEIGHTS:
        raise WeightsError(f"no pretrained weights named {name!r}; known: {', '.join(sorted(WEIGHTS))}")
    return WEIGHTS[name]


def weights_names(model: Optional[str] = None, *, loadable: bool = False):
    """Sorted weight names (of `model` only, if given; loadable ones only, if asked)."""
    return sorted(n for n, e in WEIGHTS.items()
                  if (model is None or e.model == model) and (not loadable or e.status in LOADABLE))


def verified_weights_file(name: str) -> Tuple[Path, WeightsEntry]:
    """The weights file of a loadable entry, its sha256 checked, and the entry. The file is also a
    checkpoint (`checkpoint.load_model` reads it), which is how the `sjvae --pretrained` options use it."""
    entry = get_weights(name)
    if entry.status not in LOADABLE:
        reached = f"{entry.epochs_reached if entry.epochs_reached is not None else '?'} of {entry.epochs_total}"
        ready = weights_names(loadable=True)
        raise WeightsError(f"{name!r} is still training ({reached} epochs); no weights are shipped yet. "
                           f"Train them with `{entry.command}`, pass --checkpoint with your own run"
                           + (f", or use {', '.join(ready)}" if ready else ""))
    path = entry.path()
    if path is None or not path.is_file():
        raise WeightsError(f"the weights file of {name!r} ({path}) is missing; reinstall the package")
    digest = sha256_file(path, cached=False)
    if digest != entry.sha256:
        raise WeightsError(f"{path} does not match the sha256 of {name!r} (expected {entry.sha256}, got "
                           f"{digest}): the file is corrupt or was replaced; reinstall the package")
    return path, entry


def create_model(name: str, *, pretrained: Optional[str] = None, **kwargs):
    """Build the model registered under ``name`` with keyword arguments ``kwargs``.

    ``pretrained``: a weights name (``weights_names()``): the model is built from that entry's config
    (``kwargs`` on top, e.g. ``kernel_backend="torch"``), gets its weights, and is returned in eval mode
    on the CPU. ``name`` may itself be a weights name: ``create_model("esvae-mnist-preview")``.
    """
    if pretrained is None and name not in MODELS and name in WEIGHTS:
        name, pretrained = WEIGHTS[name].model, name
    builder = get_model_builder(name)
    if pretrained is None:
        return builder(**kwargs)
    import torch
    path, entry = verified_weights_file(pretrained)
    if get_model_builder(entry.model) is not builder:
        raise WeightsError(f"weights {pretrained!r} are for model {entry.model!r}, not {name!r}")
    config = {k: v for k, v in entry.config.items() if k != "model"}
    model = builder(**{**config, **kwargs})
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or not isinstance(blob.get("model"), dict):
        raise WeightsError(f"{path} is not a weights file of this package (no 'model' state dict)")
    try:
        model.load_state_dict(blob["model"])  # copy_ casts fp16 tensors to the fp32 parameters
    except RuntimeError as err:
        raise WeightsError(f"weights {pretrained!r} do not fit {name!r} built with {kwargs}: {err}") from None
    return model.eval()
