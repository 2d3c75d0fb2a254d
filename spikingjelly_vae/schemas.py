"""One typed schema per file format that the package reads back, checked in one place (`check`).

Formats: a checkpoint (`Checkpoint`, its model `config` in `ModelConfig`, a run's resume state in
`ResumeState`), a run's `train_config.json`, `reproduce.json`, the JSON of `sjvae evaluate` (what
`compare` reads) and the GMM prior file. A file that breaks its schema raises `FileFormatError` (a
ValueError, so the CLI prints it as one usage-error line) naming the file and the first bad field.
Sizes are bounded so that a hostile config cannot ask for a huge allocation.
"""
from __future__ import annotations

import math
import pickle
from typing import Any, Dict, List, Literal, Optional, Union

import torch
from pydantic import (AllowInfNan, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, StrictStr,
                      ValidationError, field_validator, model_validator)
from typing_extensions import Annotated

__all__ = ["FileFormatError", "check", "ModelConfig", "Checkpoint", "ResumeState", "TrainConfigFile",
           "ReproduceState", "EvaluateResult", "GMMPriorFile", "MAX_MODEL_ELEMENTS", "load_error_line", "error_reason",
           "finite_or_none"]

MAX_MODEL_ELEMENTS = 1_000_000_000  # parameters + buffers a checkpoint config may build (4 GB in fp32)


def _number(value):
    """A real number (int or float, not bool, str or tensor) that is finite, as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be a number, not {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError("must be a finite number (NaN and infinity are not valid here)")
    return float(value)


Number = Annotated[float, BeforeValidator(_number)]


def _loss_or_inf(value):
    """A finite number, or +inf (no test pass yet: the best loss of a run stopped inside its first epoch)."""
    if isinstance(value, float) and value == math.inf:
        return value
    return _number(value)


BestLoss = Annotated[float, AllowInfNan(True), BeforeValidator(_loss_or_inf)]


class FileFormatError(ValueError):
    """A file the package reads back breaks its format; the message names the file and the field."""


class _Lenient(BaseModel):
    """Typed fields are checked strictly (no "8" for 8, no True for 1); unknown extra keys are kept."""

    model_config = ConfigDict(strict=True, extra="allow", arbitrary_types_allowed=True, allow_inf_nan=False)


class _Tensor:
    """Validator helpers for tensor-valued fields (pydantic has no tensor type)."""

    @staticmethod
    def state_dict(value):
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in value.items()):
            raise ValueError("must be a dict of parameter names to tensors")
        return value


# ----------------------------------------------------------------------------------------- models
class ModelConfig(_Lenient):
    """A checkpoint's `config`: what `models.build_model` rebuilds the architecture from."""

    model: StrictStr = Field(min_length=1, max_length=64)
    in_channels: Optional[StrictInt] = Field(None, ge=1, le=4)
    image_size: Optional[StrictInt] = Field(None, ge=4, le=1024)
    latent_dim: Optional[StrictInt] = Field(None, ge=1, le=65536)
    T: Optional[StrictInt] = Field(None, ge=1, le=1024)
    hidden: Optional[List[StrictInt]] = Field(None, min_length=1, max_length=10)
    k: Optional[StrictInt] = Field(None, ge=1, le=1024)
    mmd_lambda: Optional[Number] = Field(None, ge=0)
    half_width: Optional[Number] = Field(None, gt=0, le=100)
    kernel_backend: Optional[Literal["auto", "cupy", "torch"]] = None
    fuse_bn_lif: Optional[StrictBool] = None
    scheduled: Optional[StrictBool] = None
    kld_weight: Optional[Union[Literal["auto"], Number]] = None

    @field_validator("hidden")
    @classmethod
    def _channels(cls, value):
        if value is not None and not all(1 <= c <= 8192 for c in value):
            raise ValueError("channel counts must lie in 1..8192")
        return value

    @field_validator("kld_weight")
    @classmethod
    def _kld(cls, value):
        if isinstance(value, (int, float)) and value < 0:
            raise ValueError("must be 'auto' or a number >= 0")
        return value


class Checkpoint(_Lenient):
    """Any checkpoint this package loads: weights and the config that rebuilds their model."""

    model: Dict[str, Any]
    config: ModelConfig
    epoch: Optional[StrictInt] = Field(None, ge=0)
    metrics: Optional[Dict[str, Any]] = None
    train_config: Optional[Dict[str, Any]] = None

    @field_validator("model")
    @classmethod
    def _weights(cls, value):
        return _Tensor.state_dict(value)


class _TrainOptions(_Lenient):
    dataset: StrictStr
    model: StrictStr
    batch_size: Optional[StrictInt] = Field(None, ge=1, le=1 << 20)
    test_batch_size: Optional[StrictInt] = Field(None, ge=1, le=1 << 20)
    lr: Optional[Number] = Field(None, gt=0)
    bottleneck_lr_mult: Optional[Number] = Field(None, gt=0)
    weight_decay: Optional[Number] = Field(None, ge=0)
    epochs: Optional[StrictInt] = Field(None, ge=1)
    max_steps: Optional[StrictInt] = Field(None, ge=1)
    latent_dim: Optional[StrictInt] = Field(None, ge=1, le=65536)
    T: Optional[StrictInt] = Field(None, ge=1, le=1024)
    seed: StrictInt = 42
    model_kwargs: Dict[str, Any] = {}
    train_subset: Optional[StrictInt] = Field(None, ge=1)
    test_subset: Optional[StrictInt] = Field(None, ge=1)
    drop_last: Optional[StrictBool] = None
    data_root: Optional[StrictStr] = None
    cache_dir: Optional[StrictStr] = None
    out: Optional[StrictStr] = None
    device: StrictStr = "auto"
    amp: Literal["off", "bf16", "fp16"] = "off"
    num_workers: Optional[StrictInt] = Field(None, ge=0, le=1024)
    grid_every: StrictInt = Field(1, ge=0)
    grid_images: StrictInt = Field(64, ge=1, le=4096)
    keep_every: StrictInt = Field(0, ge=0)
    download: StrictBool = False
    data_on_gpu: Optional[StrictBool] = None
    resume: StrictBool = False
    force: StrictBool = False
    progress: StrictBool = True
    tensorboard: StrictBool = True
    find_unused_parameters: StrictBool = False


class _EpochMetrics(_Lenient):
    epoch: StrictInt = Field(None, ge=0)
    step: StrictInt = Field(None, ge=0)
    test_loss: Number = None


class _OptimizerState(_Lenient):
    state: Dict[Any, Any]
    param_groups: List[Dict[str, Any]] = Field(min_length=1)


class ResumeState(Checkpoint):
    """A run's last.pt as `--resume` reads it: also the optimizer, the epoch and step, the best loss."""

    optimizer: _OptimizerState
    epoch: StrictInt = Field(ge=0)  # 0: a step checkpoint inside the first epoch
    step: StrictInt = Field(0, ge=0)
    best_test_loss: BestLoss = None  # absent in older files; never null; inf before the first test pass
    scaler: Optional[Dict[str, Any]] = None
    train_config: _TrainOptions
    metrics: Optional[_EpochMetrics] = None


# --------------------------------------------------------------------------------- run folders
class TrainConfigFile(_Lenient):
    """<run>/train_config.json."""

    train_config: _TrainOptions
    model_config_: Optional[Dict[str, Any]] = Field(None, alias="model_config")
    world_size: StrictInt = Field(1, ge=1)


class _Call(_Lenient):
    epochs: StrictInt = Field(ge=0)
    wall_seconds: Number = Field(ge=0)
    from_epoch: Optional[StrictInt] = Field(None, ge=0)
    to_epoch: Optional[StrictInt] = Field(None, ge=0)


class _Shipped(_Lenient):
    epoch: StrictInt = Field(ge=0)
    name: Optional[StrictStr] = None


class _Schedule(_TrainOptions):
    epochs: StrictInt = Field(ge=1)


class ReproduceState(_Lenient):
    """<out>/<dataset>/<model>/reproduce.json."""

    dataset: StrictStr
    model: StrictStr
    schedule: _Schedule
    calls: List[_Call]
    evaluated: Optional[Dict[str, Any]] = None
    shipped: Optional[_Shipped] = None


# -------------------------------------------------------------------------------- evaluate JSON
class _Metric(_Lenient):
    num_images: Optional[StrictInt] = Field(None, ge=0)
    note: Optional[StrictStr] = None


class _MSE(_Metric):
    mse: Optional[Number] = Field(None, ge=0)
    mse_batch_mean: Optional[Number] = Field(None, ge=0)


ROUND_OFF = 1e-3  # a Frechet distance of equal statistics may come out a hair below 0 (matrix square root)


class _FID(_Metric):
    fid: Optional[Number] = Field(None, ge=-ROUND_OFF)  # a distance: never negative
    mode: StrictStr = "clean"


class _IS(_Metric):
    is_: Optional[Number] = Field(None, alias="is", ge=1 - ROUND_OFF)  # exp of a mean KL divergence: >= 1
    is_std: Optional[Number] = Field(None, ge=0)


class _FAD(_Metric):
    fad: Optional[Number] = Field(None, ge=-ROUND_OFF)


class _Metrics(_Lenient):  # a metric that is present is a mapping (a missing one is simply absent)
    mse: _MSE = None
    fid: _FID = None
    is_: _IS = Field(None, alias="is")
    fad: _FAD = None


class _ModelRecord(_Lenient):
    model: StrictStr = "?"


class EvaluateResult(_Lenient):
    """The JSON `sjvae evaluate` writes (and `compare` reads): metric values are finite numbers or null."""

    dataset: StrictStr
    metrics: _Metrics
    unavailable: Dict[str, StrictStr] = {}
    checkpoint: Optional[StrictStr] = None
    checkpoint_sha256: Optional[StrictStr] = Field(None, pattern=r"^[0-9a-f]{64}$")
    checkpoint_dataset: Optional[StrictStr] = None
    dataset_mismatch: Optional[StrictBool] = None
    prior: StrictStr = "learned"
    protocol: Optional[StrictStr] = None
    model: Optional[Union[_ModelRecord, StrictStr]] = None
    epoch: Optional[StrictInt] = None


# ---------------------------------------------------------------------------------- GMM prior
def _plain(value, depth: int = 0) -> bool:
    """JSON-like: str, int, float, bool, None, and lists / str-keyed dicts of them (no tensors, no objects)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return True
    if isinstance(value, (list, tuple)) and depth < 8:
        return all(_plain(v, depth + 1) for v in value)
    if isinstance(value, dict) and depth < 8:
        return all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    return False


class _Provenance(_Lenient):
    checkpoint: Optional[StrictStr] = None
    checkpoint_sha256: Optional[StrictStr] = Field(None, pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="before")
    @classmethod
    def _no_tensors(cls, data):
        bad = [k for k, v in data.items() if not _plain(v)] if isinstance(data, dict) else []
        if bad:
            raise ValueError(f"{bad[0]!r} must be a plain value, not {type(data[bad[0]]).__name__}")
        return data


class GMMPriorFile(_Lenient):
    """The torch file of `sjvae prior fit` (prior.GaussianMixturePrior.save): plain values, float tensors."""

    model_config = ConfigDict(strict=True, extra="forbid", arbitrary_types_allowed=True, allow_inf_nan=False)
    format: Literal["spikingjelly_vae.gmm_prior"]
    format_version: StrictInt
    covariance: Literal["full", "diag"]
    eps: Number = Field(gt=0, lt=0.5)  # the range `fit_gmm_prior` accepts
    weights: Any
    means: Any
    covariances: Any
    provenance: _Provenance
    digest: StrictStr = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("weights", "means", "covariances")
    @classmethod
    def _float_tensor(cls, value, info):
        dims = {"weights": 1, "means": 2}.get(info.field_name)
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise ValueError("must be a float tensor")
        if (dims is not None and value.dim() != dims) or value.dim() not in (1, 2, 3) or value.numel() == 0:
            raise ValueError(f"has the wrong shape {tuple(value.shape)}")
        if not torch.isfinite(value).all():
            raise ValueError("holds NaN or infinite values")
        return value


# -------------------------------------------------------------------------------------- check
_WHAT = {ModelConfig: "checkpoint config", Checkpoint: "checkpoint", ResumeState: "resume state (last.pt)",
         TrainConfigFile: "train_config.json", ReproduceState: "reproduce.json",
         EvaluateResult: "`sjvae evaluate` result", GMMPriorFile: "GMM prior file"}


def _field(loc) -> str:
    return ".".join(str(p) for p in loc if p not in ("function-after",)) or "(the whole file)"


def check(schema, data, path, hint: str = ""):
    """`data` (a file's parsed contents) as an instance of `schema`; FileFormatError naming `path`, the
    first bad field and what is wrong with it (plus `hint`: what to do) otherwise."""
    if not isinstance(data, dict):
        raise FileFormatError(f"{path}: not a {_WHAT[schema]} (expected a mapping, found {type(data).__name__})"
                              + (f"; {hint}" if hint else ""))
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        msg = first["msg"].replace("\n", " ").removeprefix("Value error, ")
        got = first.get("input")
        hidden = first["type"] == "missing" or isinstance(got, (dict, list, torch.Tensor))
        shown = "" if hidden else f", got {got!r:.60}"
        raise FileFormatError(f"{path}: bad {_WHAT[schema]}: field {_field(first['loc'])!r} {msg}{shown}"
                              + (f"; {hint}" if hint else "")) from None


_PLAIN_WORDS = {EOFError: "the file ends too early (empty or cut short)",
                UnicodeDecodeError: "it is not text in UTF-8", IndexError: "it is cut short or malformed",
                KeyError: "a part of it is missing", MemoryError: "it asks for more memory than there is"}


def error_reason(err: BaseException) -> str:
    """Why something failed, in one line of words for a user: the error's first line, or, when that is empty
    or only a library's internals (EOFError, IndexError, ...), a plain description; never a class name."""
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    for kind, words in _PLAIN_WORDS.items():
        if isinstance(err, kind) and (not first or kind in (IndexError, KeyError)):
            return words
    return first[:200] or "it is malformed"


def load_error_line(err: Exception, path=None) -> str:
    """One line for why `torch.load` failed (its own text runs to many lines and advises weights_only=False)."""
    head = b""
    if path is not None:
        try:
            with open(path, "rb") as f:
                head = f.read(4)
        except OSError:
            pass
        if not head:
            return "the file is empty (0 bytes)"
        if not (head.startswith(b"PK") or head[:1] == b"\x80"):
            return "it is not a torch file at all (neither a zip archive nor a pickle)"
    if isinstance(err, pickle.UnpicklingError) or "Weights only load failed" in str(err):
        return "it holds Python objects other than tensors and plain values, which are never loaded (unsafe)"
    return error_reason(err)


def finite_or_none(value):
    """A float that JSON can hold: `value`, or None for NaN and infinities."""
    return value if not isinstance(value, float) or math.isfinite(value) else None
