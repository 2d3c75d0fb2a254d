"""Checkpoints: a plain dict written atomically and read back with ``torch.load(weights_only=True)``.

Layout: ``{"model": state_dict, "optimizer": state_dict | None, "epoch": int, "config": dict,
"metrics": dict, "version": str, ...}``. ``config`` rebuilds the model through ``models.build_model``.
"""
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from . import __version__
from .atomic import atomic_write


# Where a checkpoint may record its dataset (ours: "dataset" and "train_config"; the first hit wins).
_DATASET_KEYS = (("dataset",), ("config", "dataset"), ("args", "dataset"), ("train_config", "dataset"),
                 ("run", "dataset"), ("metrics", "dataset"))


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or not one of ours."""


def save_checkpoint(path, state: Dict[str, Any]) -> Path:
    """Write ``state`` (with ``version`` added) to ``path`` atomically (temp file + rename).

    A crash mid-write leaves the previous file untouched.
    """
    state = {**state, "version": __version__}
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path, map_location="cpu") -> Dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``); raise CheckpointError with what to do."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the .pt file written by `sjvae train` "
                              "(e.g. runs/<run>/last.pt)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, pickle with code, random bytes, ...
        raise CheckpointError(f"{path} is not a readable spikingjelly-vae checkpoint (truncated, corrupt or "
                              f"not saved by this package): {type(err).__name__}: {err}") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict) \
            or not isinstance(ckpt.get("config"), dict):
        raise CheckpointError(f"{path} is a torch file but not a spikingjelly-vae checkpoint (it needs the "
                              "dicts 'model' and 'config'); train one with `sjvae train`")
    return ckpt


def load_model(path, map_location="cpu", expected_model: Optional[str] = None) -> Tuple[torch.nn.Module, dict]:
    """Rebuild the model of a checkpoint and load its weights; returns ``(model, checkpoint)``."""
    from .models import build_model

    ckpt = load_checkpoint(path, map_location)
    config = ckpt["config"]
    name = config.get("model")
    if expected_model is not None and name != expected_model:
        raise CheckpointError(f"{path} holds a {name!r} model, expected {expected_model!r}")
    try:
        model = build_model(config)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot rebuild the model from its config {config}: {err}") from None
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the {name!r} model of its config: {err}") from None
    return model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu"), ckpt


def checkpoint_dataset(ckpt: dict) -> Optional[str]:
    """The dataset name a checkpoint records, if any."""
    for keys in _DATASET_KEYS:
        value = ckpt
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, str):
            return value
    return None
