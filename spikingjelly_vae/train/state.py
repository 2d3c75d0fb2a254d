"""The state of a training run, built from a resolved TrainConfig: data, model (fresh, or from the
run's last.pt or step-exact resume.pt), optimizer, data loaders, the DDP wrapper and the open log files."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Subset

from ..checkpoint import load_model
from ..data import load_dataset
from ..runtime import derived_seed
from ..schemas import error_reason
from .config import TrainConfig, build_from_config
from .distributed import is_distributed, on_rank0
from .resume import RESUME_FILE, SkipSampler, StopControl, ignore_stop_signals, resume_source
from .outputs import (CsvLog, grid_due, grids_missing, open_tensorboard, release_lock, repair_epoch, write_grids,
                      write_train_config)

# TrainConfig fields a --resume may change: how long, where and how fast it runs, what it logs and keeps.
# Any other field (lr, weight decay, model options, batch, data, seed, ...) is fixed by the run's last.pt.
RESUME_MAY_CHANGE = ("epochs", "max_steps", "data_root", "cache_dir", "out", "device", "amp", "num_workers",
                     "resume", "force", "progress", "tensorboard", "find_unused_parameters", "grid_every",
                     "grid_images", "keep_every", "test_batch_size", "data_on_gpu", "download", "checkpoint_every")

__all__ = ["Loaders", "Run", "load_data", "make_loaders", "setup_run", "use_resident_data"]


@dataclass
class Loaders:
    """The train and test loaders (DataLoaders, or ResidentLoaders for data held on the device), the train
    sampler and the generator that seeds them."""

    train: Any                              # DataLoader or ResidentLoader
    test: Any
    sampler: Any
    generator: torch.Generator


@dataclass
class Run:
    """Everything one process of a run holds while it trains."""

    cfg: TrainConfig
    out: Path
    device: torch.device
    rank: int
    world: int
    model: torch.nn.Module
    model_config: dict
    ckpt: Optional[dict]
    optimizer: Any = None
    scaler: Any = None
    loaders: Optional[Loaders] = None
    net: Any = None                         # the model or its DDP wrapper
    grid_images: Optional[torch.Tensor] = None
    start_epoch: int = 0
    step: int = 0
    best: float = math.inf
    csv_log: Optional[CsvLog] = None
    writer: Any = None
    grids: list = field(default_factory=list)
    train_images: int = 0
    train_seconds: float = 0.0
    resume_point: Optional[dict] = None     # resume.pt's state, until the loop has restored it
    saved_step: Optional[int] = None        # optimizer steps of the newest state on disk (None: none yet)
    last_metrics: dict = field(default_factory=dict)  # of the last finished epoch
    control: StopControl = field(default_factory=StopControl)
    checkpoint_extras: Any = None           # callable(state) -> dict of entries added to every checkpoint

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def steps_done(self) -> bool:
        return self.cfg.max_steps is not None and self.step >= self.cfg.max_steps


def use_resident_data(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether the run holds its data on `device` (resident_data.py): `cfg.data_on_gpu`, or when None,
    on a CUDA device for mnist/fashion/cifar10 if both splits fit in its free memory."""
    from ..resident_data import RESIDENT_DATASETS, fits_on_device
    if cfg.data_on_gpu is not None:
        return bool(cfg.data_on_gpu)
    return device.type == "cuda" and cfg.dataset in RESIDENT_DATASETS and fits_on_device(cfg.dataset, device)


def _datasets(cfg: TrainConfig, device: Optional[torch.device]):
    """(train, test) splits: `ResidentDataset`s on `device` when `cfg.data_on_gpu`, else torch Datasets."""
    if cfg.data_on_gpu:
        from ..resident_data import ResidentDataset
        return tuple(ResidentDataset.load(cfg.dataset, split, root=cfg.data_root, cache_dir=cfg.cache_dir,
                                          device=device or "cpu") for split in ("train", "test"))
    return (load_dataset(cfg.dataset, "train", cfg.data_root, cfg.cache_dir),
            load_dataset(cfg.dataset, "test", cfg.data_root, cfg.cache_dir, augment=False))


def _subset(data, indices):
    return data.subset(indices) if hasattr(data, "subset") else Subset(data, indices)


def load_data(cfg: TrainConfig, rank: int, world: int, device: Optional[torch.device] = None):
    """(train set, this rank's test shard, the grid images) with the run's subsets applied; resident on
    `device` (ResidentDataset) when `cfg.data_on_gpu`, with the same subsets and shard as the Datasets.
    With `cfg.download`, rank 0 first fetches a missing dataset into the data root."""
    if cfg.download:
        from ..download import download_dataset
        on_rank0(world, rank, lambda: download_dataset(cfg.dataset, cfg.data_root))
    train_set, test_set = _datasets(cfg, device)
    if cfg.train_subset is not None and cfg.train_subset < len(train_set):
        perm = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(cfg.seed))
        train_set = _subset(train_set, perm[:cfg.train_subset].tolist())
    if cfg.test_subset is not None and cfg.test_subset < len(test_set):
        test_set = _subset(test_set, range(cfg.test_subset))
    grid_images = torch.stack([test_set[i][0] for i in range(min(cfg.grid_images, len(test_set)))]).cpu()
    test_shard = _subset(test_set, range(rank, len(test_set), world))
    if len(train_set) < cfg.batch_size * world and cfg.drop_last:
        raise ValueError(f"only {len(train_set)} training images for batch {cfg.batch_size} x {world} "
                         "processes with drop_last; lower --batch-size or use more images")
    return train_set, test_shard, grid_images


def make_loaders(cfg: TrainConfig, train_set, test_set, device: torch.device, *, rank: int, world: int) -> Loaders:
    """Shuffled train loader (a DistributedSampler under DDP) and the in-order test loader; `ResidentLoader`s
    (same batches, same generator use) for resident datasets."""
    from ..resident_data import ResidentDataset, ResidentLoader
    workers = cfg.num_workers if cfg.num_workers is not None else (4 if device.type == "cuda" else 0)
    generator = torch.Generator()
    resident = isinstance(train_set, ResidentDataset)
    if is_distributed(world):
        sampler = DistributedSampler(train_set, world, rank, shuffle=True, seed=cfg.seed, drop_last=cfg.drop_last)
    else:
        sampler = None if resident else RandomSampler(train_set, generator=generator)
    if resident:
        train = ResidentLoader(train_set, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                               drop_last=cfg.drop_last, generator=generator)
        test = ResidentLoader(test_set, batch_size=cfg.test_batch_size)
        return Loaders(train, test, sampler, generator)
    pin = device.type == "cuda"
    init = ignore_stop_signals if workers else None  # the main process saves the run on SIGINT / SIGTERM
    train = DataLoader(train_set, cfg.batch_size, sampler=SkipSampler(sampler), num_workers=workers,
                       drop_last=cfg.drop_last, generator=generator, pin_memory=pin, worker_init_fn=init)
    test = DataLoader(test_set, cfg.test_batch_size, shuffle=False, num_workers=workers, pin_memory=pin,
                      worker_init_fn=init)
    return Loaders(train, test, sampler, generator)


def _model(cfg: TrainConfig, out: Path):
    """(model, model config, checkpoint or None): fresh from the seed, or on resume the run's last.pt or
    resume.pt, whichever holds more steps (resume.resume_source)."""
    if not cfg.resume:
        torch.manual_seed(cfg.seed)
        model_config, model = build_from_config(cfg)
        return model, model_config, None
    path = resume_source(out)
    model, ckpt = load_model(path, map_location="cpu", resume=True)  # CheckpointError if unusable
    saved = ckpt.get("train_config") or {}
    if (saved.get("dataset"), saved.get("model")) != (cfg.dataset, cfg.model):
        raise ValueError(f"{path} is a {saved.get('model')}/{saved.get('dataset')} run; "
                         f"cannot resume it as {cfg.model}/{cfg.dataset}")
    check_resume_options(cfg, saved, out)
    return model, dict(ckpt["config"]), ckpt


def check_resume_options(cfg: TrainConfig, saved: dict, out: Path) -> None:
    """ValueError when a resumed run would train with other hyper-parameters than its last.pt records
    (they would be ignored by the restored optimizer and model); names --force and another --out."""
    def plain(value):
        return json.loads(json.dumps(value))
    now = plain(cfg.to_dict())
    changed = [k for k in now if k not in RESUME_MAY_CHANGE and k in saved and plain(saved[k]) != now[k]]
    if changed:
        diff = ", ".join(f"{k} {saved[k]!r} -> {now[k]!r}" for k in changed)
        raise ValueError(f"--resume continues {str(out)!r} with the options it was started with; this command "
                         f"changes {diff}. To train with new values start over: --force (replaces the run in "
                         "that folder) or another --out")


def _optimizer(run: Run) -> None:
    """AdamW over model.param_groups and the fp16 gradient scaler; on resume their state, epoch and step."""
    cfg = run.cfg
    group_kwargs = {}
    if cfg.bottleneck_lr_mult is not None:
        group_kwargs["bottleneck_lr_mult"] = cfg.bottleneck_lr_mult
    try:
        groups = run.model.param_groups(cfg.lr, **group_kwargs)
    except TypeError:
        raise ValueError(f"model {cfg.model!r} has no bottleneck learning rate; drop --bottleneck-lr-mult") from None
    run.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    run.scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16")
    if run.ckpt is not None:
        try:
            run.optimizer.load_state_dict(run.ckpt["optimizer"])
            if run.ckpt.get("scaler"):
                run.scaler.load_state_dict(run.ckpt["scaler"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
            why = error_reason(err)
            raise ValueError(f"{resume_source(run.out)}: its optimizer state does not fit this model ({why}); start "
                             "the run over with --force or another --out") from None
        run.start_epoch, run.step = int(run.ckpt["epoch"]), int(run.ckpt.get("step", 0))
        run.best = float(run.ckpt.get("best_test_loss", math.inf))
        run.saved_step, run.last_metrics = run.step, dict(run.ckpt.get("metrics") or {})
        if "ranks" in run.ckpt:  # resume.pt: continue inside epoch start_epoch + 1
            _check_world(run)
            run.resume_point = run.ckpt


def _check_world(run: Run) -> None:
    saved = len(run.ckpt["ranks"])
    if saved != run.world:
        raise ValueError(f"{run.out / RESUME_FILE} holds the state of {saved} processes, this run has {run.world}; "
                         f"resume it with {saved}, or delete {RESUME_FILE} to continue from last.pt")


def setup_run(cfg: TrainConfig, out: Path, device: torch.device, *, rank: int, world: int) -> Run:
    """Data, model, optimizer, loaders, DDP wrapper and (rank 0) train_config.json and the open logs.
    On error rank 0 frees the run folder's lock (taken by prepare_out)."""
    try:
        return _setup_run(cfg, out, device, rank=rank, world=world)
    except BaseException:
        if rank == 0:
            release_lock(out)
        raise


def _setup_run(cfg: TrainConfig, out: Path, device: torch.device, *, rank: int, world: int) -> Run:
    train_set, test_shard, grid_images = load_data(cfg, rank, world, device)
    model, model_config, ckpt = _model(cfg, out)
    model.to(device)
    run = Run(cfg, out, device, rank, world, model, model_config, ckpt, grid_images=grid_images)
    _optimizer(run)
    run.loaders = make_loaders(cfg, train_set, test_shard, device, rank=rank, world=world)
    if hasattr(model, "set_num_train_batches"):
        model.set_num_train_batches(len(run.loaders.train))
        run.model_config = dict(model.config)
    run.net = model
    if is_distributed(world):
        from torch.nn.parallel import DistributedDataParallel
        run.net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                          find_unused_parameters=cfg.find_unused_parameters)
    if run.is_main:
        # log.csv and best.pt first: another run's are refused before train_config.json is rewritten
        run.csv_log = CsvLog(out / "log.csv", keep_through_epoch=run.start_epoch if cfg.resume else None,
                             checkpoint_metrics=(run.ckpt or {}).get("metrics") if cfg.resume else None)
        if run.ckpt is not None and run.resume_point is None:  # resumed from last.pt
            _repair(run)
        write_train_config(out, cfg, run.model_config, world)
        run.writer = open_tensorboard(out, cfg.tensorboard)
    return run


def _repair(run: Run) -> None:
    """Redo the outputs of last.pt's epoch that a crash left unwritten (outputs.repair_epoch, the grids)."""
    redone = repair_epoch(run.out, run.cfg, run.ckpt, run.csv_log)
    epoch = run.start_epoch
    if epoch and grid_due(run.cfg, epoch, epoch == run.cfg.epochs or run.steps_done()) \
            and grids_missing(run.out, epoch):
        g = torch.Generator(device=run.device).manual_seed(derived_seed(run.cfg.seed, "grid"))
        run.grids += write_grids(run.out, run.model, run.grid_images.to(run.device), n_samples=run.cfg.grid_images,
                                 epoch=epoch, generator=g)
        redone.append("grids")
    if redone:
        print(f"resume: redid {', '.join(redone)} of epoch {epoch} from {run.out / 'last.pt'} "
              "(an earlier run stopped before writing them)", flush=True)
