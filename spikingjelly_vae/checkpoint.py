"""Checkpoints: a plain dict written atomically and read back with ``torch.load(weights_only=True)``.

Layout: ``{"model": state_dict, "optimizer": state_dict | None, "epoch": int, "config": dict,
"metrics": dict, "version": str, ...}``. ``config`` rebuilds the model through ``models.build_model``.
"""
import math
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


def load_checkpoint(path, map_location="cpu", *, resume: bool = False) -> Dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``) and check it against its schema
    (`schemas.Checkpoint`, or `schemas.ResumeState` with ``resume``); CheckpointError with what to do."""
    from .schemas import Checkpoint, ResumeState, check, load_error_line
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the .pt file written by `sjvae train` "
                              "(e.g. runs/<run>/last.pt)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, pickle with code, random bytes, ...
        raise CheckpointError(f"{path} is not a readable spikingjelly-vae checkpoint (truncated, corrupt or "
                              f"not saved by this package): {load_error_line(err, path)}") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict) \
            or not isinstance(ckpt.get("config"), dict):
        raise CheckpointError(f"{path} is a torch file but not a spikingjelly-vae checkpoint (it needs the "
                              "dicts 'model' and 'config'); train one with `sjvae train`")
    hint = ("start the run over with --force or another --out (or restore last.pt from a kept "
            "checkpoints/epochNNNN.pt)") if resume else "use a checkpoint written by `sjvae train`"
    try:
        check(ResumeState if resume else Checkpoint, ckpt, path, hint)
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    return ckpt


def _fit_report(path, name, model_shapes: dict, weights: dict) -> Optional[str]:
    """One line on how a state_dict differs from the model's (None when it fits)."""
    missing = [k for k in model_shapes if k not in weights]
    extra = [k for k in weights if k not in model_shapes]
    sized = [k for k in model_shapes if k in weights and tuple(weights[k].shape) != model_shapes[k]]
    if not (missing or extra or sized):
        return None
    parts = [f"{len(v)} {what} (first {v[0]})" for what, v in
             (("missing", missing), ("unexpected", extra), ("of another size", sized)) if v]
    if sized:
        k = sized[0]
        parts[-1] += f": {tuple(weights[k].shape)} in the file, {model_shapes[k]} in the model"
    return (f"{path}: weights do not fit the {name!r} model of its config: tensors " + "; ".join(parts)
            + "; the file was edited or saved by another version (`sjvae --debug` shows the details)")


def model_shapes(config: dict, where, hint: str) -> Dict[str, tuple]:
    """The state_dict shapes of the model `config` builds, from a build on the meta device (no memory).
    CheckpointError naming `where` (plus `hint`) when it cannot be built or holds more than
    `schemas.MAX_MODEL_ELEMENTS` values. `sjvae train` checks its model with it too, so that every model it
    trains can be loaded back."""
    from .models import build_model
    from .schemas import MAX_MODEL_ELEMENTS
    try:
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in build_model(config).state_dict().items()}
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"{where}: cannot rebuild the model from its config {config}: {err}") from None
    size = sum(math.prod(s) for s in shapes.values())
    if size > MAX_MODEL_ELEMENTS:
        raise CheckpointError(f"{where}: its config asks for a model of {size:,} values (more than "
                              f"{MAX_MODEL_ELEMENTS:,}); {hint}")
    return shapes


def load_model(path, map_location="cpu", expected_model: Optional[str] = None, *,
               resume: bool = False) -> Tuple[torch.nn.Module, dict]:
    """Rebuild the model of a checkpoint and load its weights; returns ``(model, checkpoint)``.

    The model is first built on the meta device (no memory), so a config that asks for more than
    `schemas.MAX_MODEL_ELEMENTS` values, or weights of other shapes, are refused before any allocation.
    Non-finite weights (NaN, inf) are refused too: nothing measured with them would mean anything."""
    from .models import build_model

    ckpt = load_checkpoint(path, map_location, resume=resume)
    config = ckpt["config"]
    name = config.get("model")
    if expected_model is not None and name != expected_model:
        raise CheckpointError(f"{path} holds a {name!r} model, expected {expected_model!r}")
    shapes = model_shapes(config, path, "the file is damaged or not one of ours")
    report = _fit_report(path, name, shapes, ckpt["model"])
    if report:
        raise CheckpointError(report)
    bad = next((k for k, v in ckpt["model"].items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise CheckpointError(f"{path}: weight {bad!r} holds NaN or infinite values, so every result of this model "
                              "would be NaN; use an earlier checkpoint (best.pt, checkpoints/epochNNNN.pt)")
    model = build_model(config)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the {name!r} model of its config: "
                              f"{str(err).splitlines()[0]}") from None
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
