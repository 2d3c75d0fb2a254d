"""The options of a training run (`TrainConfig`), their preset values and checks, and the model they build."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from ..data import dataset_info
from ..presets import TRAIN_KEYS, get_preset

__all__ = ["AMP_MODES", "TrainConfig", "build_from_config"]

AMP_MODES = ("off", "bf16", "fp16")


@dataclass
class TrainConfig:
    """All options of a training run. `None` means: take the value of the preset of (model, dataset)."""

    dataset: str = "mnist"
    model: str = "esvae"
    data_root: Optional[str] = None           # default: env SJVAE_DATA, else ./data
    cache_dir: Optional[str] = None           # default: env SJVAE_CACHE, else ~/.cache/spikingjelly_vae
    download: bool = False                    # fetch a missing dataset into the data root first (download.py)
    data_on_gpu: Optional[bool] = None        # whole dataset resident on the device (resident_data.py); None:
    #                                           auto (CUDA, mnist/fashion/cifar10, fits); True on a CPU device:
    #                                           resident on the CPU. The run records the resolved choice.
    out: Optional[str] = None                 # default: runs/<dataset>-<model>-<timestamp>
    # preset values (presets.py)
    batch_size: Optional[int] = None          # per process; under DDP the global batch is world_size x this
    lr: Optional[float] = None                # effective lr (the official lr * batch / 250)
    bottleneck_lr_mult: Optional[float] = None  # passed to model.param_groups (ESVAE: 10)
    weight_decay: Optional[float] = None
    epochs: Optional[int] = None
    drop_last: Optional[bool] = None
    latent_dim: Optional[int] = None
    T: Optional[int] = None
    model_kwargs: dict = field(default_factory=dict)  # other model-builder options, e.g. {"mmd_lambda": 1e-3}
    # run length and evaluation
    test_batch_size: Optional[int] = None     # default 2 x batch_size (as ESVAE's code)
    max_steps: Optional[int] = None           # stop after this many optimizer steps (in total)
    train_subset: Optional[int] = None        # train on a fixed random subset of this many images
    test_subset: Optional[int] = None         # evaluate on the first this many test images
    grid_every: int = 1                       # image grids every N epochs and after the last (0: last only)
    grid_images: int = 64
    keep_every: int = 0                       # also keep checkpoints/epochNNNN.pt every N epochs (0: never)
    checkpoint_every: Optional[int] = None    # also write the step-exact resume.pt every N optimizer steps
    # machinery
    seed: int = 42
    device: str = "auto"                      # auto | cpu | cuda | cuda:N (runtime.resolve_device)
    amp: str = "off"                          # off | bf16 | fp16 (CUDA only)
    num_workers: Optional[int] = None         # default 0 on CPU, 4 on CUDA
    resume: bool = False                      # continue the run in `out` from its last.pt
    force: bool = False                       # start over in an `out` that already holds a run
    progress: bool = True
    tensorboard: bool = True
    find_unused_parameters: bool = False      # DDP option for models with parameters a step may not use

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown training options {unknown}")
        return cls(**d)

    def resolved(self) -> "TrainConfig":
        """A copy with the preset values filled in and every option checked (ValueError otherwise)."""
        dataset_info(self.dataset)  # unknown dataset -> ValueError
        from ..models import MODELS
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of {', '.join(sorted(MODELS))}")
        preset = get_preset(self.model, self.dataset)
        cfg = dataclasses.replace(self, model_kwargs=dict(self.model_kwargs))
        for key in TRAIN_KEYS:
            if getattr(cfg, key) is None:
                setattr(cfg, key, preset.get(key))
        cfg.model_kwargs = {**preset["model"], **cfg.model_kwargs}
        for key in ("latent_dim", "T"):
            if getattr(cfg, key) is not None:
                cfg.model_kwargs[key] = getattr(cfg, key)
            setattr(cfg, key, cfg.model_kwargs.get(key))
        if cfg.test_batch_size is None:
            cfg.test_batch_size = 2 * cfg.batch_size
        _check(cfg)
        return cfg


def _check(cfg: TrainConfig) -> None:
    """ValueError for the first option of a resolved config that is out of range."""
    _check_positive(cfg, ("batch_size", "test_batch_size", "epochs", "grid_images"), int)
    _check_positive(cfg, ("lr",), float)
    for key in ("max_steps", "train_subset", "test_subset", "checkpoint_every"):
        if getattr(cfg, key) is not None:
            _check_positive(cfg, (key,), int)
    if cfg.keep_every < 0:
        raise ValueError("keep_every must be >= 0")
    if cfg.weight_decay < 0 or cfg.grid_every < 0 or (cfg.num_workers is not None and cfg.num_workers < 0):
        raise ValueError("weight_decay, grid_every and num_workers must be >= 0")
    if cfg.amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {cfg.amp!r}")
    if cfg.resume and cfg.force:
        raise ValueError("--resume continues a run and --force starts it over: pass only one")


def _check_positive(cfg, keys, kind):
    for key in keys:
        value = getattr(cfg, key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0 \
                or (kind is int and int(value) != value):
            raise ValueError(f"{key} must be a positive {kind.__name__}, got {value!r}")


def build_from_config(cfg: TrainConfig):
    """The model config dict of a resolved TrainConfig and the model built from it."""
    import torch

    from ..checkpoint import model_shapes
    from ..models import build_model
    from ..schemas import ModelConfig, check
    info = dataset_info(cfg.dataset)
    model_config = {"model": cfg.model, "in_channels": info["in_channels"], "image_size": info["image_size"],
                    **cfg.model_kwargs}
    hint = "a checkpoint of it could not be loaded back: lower the sizes (--latent-dim, --T, --model-opt)"
    check(ModelConfig, model_config, "the model options", hint)  # the bounds every checkpoint is read with
    try:
        with torch.device("meta"):  # unknown options and bad values, before anything is allocated
            build_model(model_config)
    except TypeError as err:
        raise ValueError(f"model {cfg.model!r} does not accept these options {cfg.model_kwargs}: {err}") from None
    model_shapes(model_config, "the model options", hint)  # its size, on the meta device too
    return model_config, build_model(model_config)
