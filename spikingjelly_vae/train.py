"""The training loop: one process, or PyTorch DDP under `torchrun` (one process per GPU, or gloo on CPU).

`fit(TrainConfig(...))` trains any registered model through the interface of docs/architecture.md:
`out = model(x, generator=g)`, `terms = model.loss(x, out)`, `terms["loss"].backward()`,
`model.param_groups(lr)`, `model.sample(n)`, `model.config`; plus two optional hooks,
`model.set_epoch(epoch, max_epochs)` (called at each epoch start) and
`model.set_num_train_batches(n)` (called once with len(train_loader)).

Per epoch (rank 0 writes, other ranks only compute): `last.pt` (atomic), `best.pt` when the test loss
improves, a row of `log.csv` (and TensorBoard scalars if installed), and every `grid_every` epochs
`images/recon_epochNNNN.png` (originals and reconstructions, alternate rows) and
`images/samples_epochNNNN.png`.

Reproducibility: every random stream is re-seeded at the start of each epoch from (seed, epoch, rank):
the global torch RNG (model init, augmentation in the loading process), the DataLoader generator
(shuffling, worker seeds) and the generator handed to the model (Poisson / Gaussian latent draws).
A run resumed from the checkpoint of epoch k therefore reproduces an uninterrupted run exactly
(on the same device and software). Resuming continues at the epoch after the last checkpoint.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Subset

from .atomic import atomic_write, atomic_write_text
from .checkpoint import load_model, save_checkpoint
from .data import dataset_info, load_dataset, to_unit_range
from .presets import TRAIN_KEYS, get_preset

__all__ = ["TrainConfig", "NonFiniteLossError", "fit", "train_step", "evaluate_loader", "build_from_config",
           "resolve_device", "save_recon_grid", "save_sample_grid", "RUN_FILES"]

AMP_MODES = ("off", "bf16", "fp16")
RUN_FILES = ("last.pt", "best.pt", "log.csv", "train_config.json", "images", "tb", "checkpoints")


class NonFiniteLossError(ValueError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainConfig:
    """All options of a training run. `None` means: take the value of the preset of (model, dataset)."""

    dataset: str = "mnist"
    model: str = "esvae"
    data_root: Optional[str] = None           # default: env SJVAE_DATA, else ./data
    cache_dir: Optional[str] = None           # default: env SJVAE_CACHE, else ~/.cache/spikingjelly_vae
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
    # machinery
    seed: int = 42
    device: str = "auto"                      # auto | cpu | cuda | cuda:N
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
        from .models import MODELS
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
        _check_positive(cfg, ("batch_size", "test_batch_size", "epochs", "grid_images"), int)
        _check_positive(cfg, ("lr",), float)
        for key in ("max_steps", "train_subset", "test_subset"):
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
        return cfg


def _check_positive(cfg, keys, kind):
    for key in keys:
        value = getattr(cfg, key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0 \
                or (kind is int and int(value) != value):
            raise ValueError(f"{key} must be a positive {kind.__name__}, got {value!r}")


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """auto -> cuda:<local_rank> when CUDA is available, else cpu; a named CUDA device must exist."""
    if device in (None, "auto"):
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use auto, cpu or cuda") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for but CUDA is not available here; use --device cpu")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    elif dev.type != "cpu":
        raise ValueError(f"unsupported device {device!r}; use auto, cpu or cuda")
    return dev


def _derived_seed(seed: int, *parts) -> int:
    """A 63-bit seed from the run seed and (epoch, rank, stream): sha256 of their text."""
    digest = hashlib.sha256(":".join(str(p) for p in (seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def build_from_config(cfg: TrainConfig):
    """The model config dict of a resolved TrainConfig and the model built from it."""
    from .models import build_model
    info = dataset_info(cfg.dataset)
    model_config = {"model": cfg.model, "in_channels": info["in_channels"], "image_size": info["image_size"],
                    **cfg.model_kwargs}
    try:
        return model_config, build_model(model_config)
    except TypeError as err:
        raise ValueError(f"model {cfg.model!r} does not accept these options {cfg.model_kwargs}: {err}") from None


# --------------------------------------------------------------------------------------------- DDP
def _dist_setup():
    """(rank, world_size, local_rank, initialised_here); joins the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0, False
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    here = False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
        here = True
    return dist.get_rank(), dist.get_world_size(), local_rank, here


def _on_rank0(world: int, rank: int, fn):
    """Run `fn` on rank 0 only and give every rank its result; a ValueError there is raised on all ranks."""
    result, error = None, None
    if rank == 0:
        try:
            result = fn()
        except ValueError as err:
            error = err
    if world > 1:
        box = [result, None if error is None else (type(error), str(error))]
        dist.broadcast_object_list(box, src=0)
        result = box[0]
        if box[1] is not None and error is None:
            error = box[1][0](box[1][1])
    if error is not None:
        raise error
    return result


def _all_sum(values: torch.Tensor, world: int) -> torch.Tensor:
    """Sum a small CPU tensor over ranks (through the current GPU when the backend is NCCL)."""
    if world > 1:
        nccl = dist.get_backend() == "nccl"
        t = values.to(torch.device("cuda", torch.cuda.current_device())) if nccl else values
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        values = t.cpu()
    return values


# ----------------------------------------------------------------------------------------- outputs
def _prepare_out(cfg: TrainConfig) -> Path:
    """Choose/check the run folder. Refuses to reuse a folder holding a run without --resume or --force."""
    if cfg.out is None:
        if cfg.resume:
            raise ValueError("--resume needs --out <run folder> (the folder holding last.pt)")
        base = Path("runs") / f"{cfg.dataset}-{cfg.model}-{datetime.now():%Y%m%d-%H%M%S}"
        out, k = base, 1
        while out.exists():
            k += 1
            out = base.with_name(f"{base.name}-{k}")
    else:
        out = Path(cfg.out)
    present = [name for name in RUN_FILES if (out / name).exists()]
    if cfg.resume:
        if not (out / "last.pt").is_file():
            raise ValueError(f"nothing to resume in {str(out)!r}: it has no last.pt; drop --resume to start "
                             "a new run there")
    elif present and not cfg.force:
        raise ValueError(f"{str(out)!r} already holds a run ({', '.join(present)}); pass --resume to continue "
                         "it, --force to start over (its run files are replaced), or another --out")
    elif present:
        for name in present:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


class _CsvLog:
    """log.csv, one row per epoch; on resume, rows after the checkpoint's epoch are dropped."""

    def __init__(self, path: Path, keep_through_epoch: Optional[int] = None):
        self.path, self.fields = path, None
        if path.is_file():
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                self.fields = reader.fieldnames
                rows = [r for r in reader if keep_through_epoch is not None and int(r["epoch"]) <= keep_through_epoch]
            buf = [",".join(self.fields)] + [",".join(r[k] for k in self.fields) for r in rows]
            atomic_write_text(path, "\n".join(buf) + "\n")

    def write(self, row: dict) -> None:
        new = self.fields is None
        if new:
            self.fields = list(row)
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)


def _tensorboard(out: Path, enabled: bool):
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: the CSV log is enough
        return None
    return SummaryWriter(str(out / "tb"))


@torch.no_grad()
def save_recon_grid(model, images: torch.Tensor, path, generator=None, nrow: int = 8) -> Path:
    """PNG of originals and reconstructions in alternating rows of `nrow` (eval mode)."""
    from torchvision.utils import save_image
    was = model.training
    model.eval()
    try:
        recon = model(images, generator=generator)[0].float()
    finally:
        model.train(was)
    rows = []
    for i in range(0, images.shape[0], nrow):
        rows += [images[i:i + nrow].float(), recon[i:i + nrow]]
        if rows[-1].shape[0] < nrow:  # pad a short last row pair so originals and recons stay aligned
            pad = nrow - rows[-1].shape[0]
            rows[-2:] = [torch.cat([r, -torch.ones(pad, *r.shape[1:], device=r.device)]) for r in rows[-2:]]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(to_unit_range(torch.cat(rows).cpu()), str(path), nrow=nrow, padding=2, pad_value=1.0)
    return path


@torch.no_grad()
def save_sample_grid(model, n: int, path, generator=None, nrow: int = 8) -> Path:
    """PNG grid of `model.sample(n)` (eval mode)."""
    from torchvision.utils import save_image
    was = model.training
    model.eval()
    try:
        images = model.sample(n, generator=generator).float()
    finally:
        model.train(was)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(to_unit_range(images.cpu()), str(path), nrow=nrow, padding=2, pad_value=1.0)
    return path


# -------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_loader(model, loader, device, generator=None, amp: str = "off") -> dict:
    """Sums over a loader in eval mode: batch-size-weighted loss terms and per-image MSE.

    Returns `{"count": n, "<term>": sum_batches n_b * term_b, "mse": sum_i mean_pixels (x_hat_i - x_i)^2}`;
    divide by `count` for means (the reported test MSE is the per-image mean).
    """
    was = model.training
    model.eval()
    sums: dict = {}
    try:
        for x, _ in loader:
            x = x.to(device, non_blocking=True)
            with _autocast(device, amp):
                out = model(x, generator=generator)
                terms = model.loss(x, out)
            n = x.shape[0]
            sums["count"] = sums.get("count", 0.0) + n
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + float(value) * n
            per_image = (out[0].double() - x.double()).pow(2).flatten(1).mean(1)
            sums["mse"] = sums.get("mse", 0.0) + per_image.sum().item()
    finally:
        model.train(was)
    return sums


def _autocast(device: torch.device, amp: str):
    if amp == "off":
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


# ------------------------------------------------------------------------------------------ the loop
def train_step(net, model, optimizer, scaler, x, generator=None, amp: str = "off", world: int = 1):
    """One optimizer step: out = net(x, generator), terms = model.loss(x, out), backward, AdamW update.

    `net` is `model` or its DDP wrapper. Returns `(detached terms, loss value)`; when the loss is not
    finite on any rank, returns `(None, loss value)` and leaves the weights untouched.
    """
    with _autocast(x.device, amp):
        out = net(x, generator=generator)
        terms = model.loss(x, out)
    loss = terms["loss"]
    loss_value = loss.detach().item()  # one device sync per step, for this check and the progress bar
    bad = torch.tensor([0.0 if math.isfinite(loss_value) else 1.0])
    if _all_sum(bad, world).item() > 0:
        return None, loss_value
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return {k: v.detach() for k, v in terms.items()}, loss_value


def fit(config: TrainConfig, on_epoch_end: Optional[Callable[[int, dict], Optional[bool]]] = None) -> dict:
    """Train (or resume) a run; returns a results dict (same on every rank).

    `on_epoch_end(epoch, metrics)` is called on every rank after the epoch's files are written; when it
    returns True, training stops there and fit returns normally (every rank must return the same).
    Raises ValueError (or CheckpointError, NonFiniteLossError, both ValueErrors) for bad input.
    """
    rank, world, local_rank, own_group = _dist_setup()
    try:
        return _fit(config, rank, world, local_rank, on_epoch_end)
    finally:
        if own_group and dist.is_initialized():
            dist.destroy_process_group()


def _fit(config, rank, world, local_rank, on_epoch_end):
    t_start = time.time()
    cfg = config.resolved()
    device = resolve_device(cfg.device, local_rank)
    if cfg.amp != "off" and device.type != "cuda":
        raise ValueError(f"--amp {cfg.amp} needs a CUDA device (got {device}); use --amp off on CPU")
    out = Path(_on_rank0(world, rank, lambda: str(_prepare_out(cfg))))
    cfg.out = str(out)
    is_main = rank == 0

    # data
    train_set = load_dataset(cfg.dataset, "train", cfg.data_root, cfg.cache_dir)
    test_set = load_dataset(cfg.dataset, "test", cfg.data_root, cfg.cache_dir, augment=False)
    if cfg.train_subset is not None and cfg.train_subset < len(train_set):
        perm = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(cfg.seed))
        train_set = Subset(train_set, perm[:cfg.train_subset].tolist())
    if cfg.test_subset is not None and cfg.test_subset < len(test_set):
        test_set = Subset(test_set, range(cfg.test_subset))
    grid_images = torch.stack([test_set[i][0] for i in range(min(cfg.grid_images, len(test_set)))])
    test_shard = Subset(test_set, range(rank, len(test_set), world))
    if len(train_set) < cfg.batch_size * world and cfg.drop_last:
        raise ValueError(f"only {len(train_set)} training images for batch {cfg.batch_size} x {world} "
                         "processes with drop_last; lower --batch-size or use more images")

    # model and optimizer (fresh, or from the run's last checkpoint)
    ckpt = None
    if cfg.resume:
        model, ckpt = load_model(out / "last.pt", map_location="cpu")  # CheckpointError if unusable
        saved = ckpt.get("train_config") or {}
        if (saved.get("dataset"), saved.get("model")) != (cfg.dataset, cfg.model):
            raise ValueError(f"{out / 'last.pt'} is a {saved.get('model')}/{saved.get('dataset')} run; "
                             f"cannot resume it as {cfg.model}/{cfg.dataset}")
        model_config = dict(ckpt["config"])
    else:
        torch.manual_seed(cfg.seed)
        model_config, model = build_from_config(cfg)
    model.to(device)
    group_kwargs = {}
    if cfg.bottleneck_lr_mult is not None:
        group_kwargs["bottleneck_lr_mult"] = cfg.bottleneck_lr_mult
    try:
        groups = model.param_groups(cfg.lr, **group_kwargs)
    except TypeError:
        raise ValueError(f"model {cfg.model!r} has no bottleneck learning rate; drop --bottleneck-lr-mult") from None
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16")
    start_epoch, step, best = 0, 0, math.inf
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, step = int(ckpt["epoch"]), int(ckpt.get("step", 0))
        best = float(ckpt.get("best_test_loss", math.inf))

    # loaders
    workers = cfg.num_workers if cfg.num_workers is not None else (4 if device.type == "cuda" else 0)
    loader_gen = torch.Generator()
    if world > 1:
        sampler = DistributedSampler(train_set, world, rank, shuffle=True, seed=cfg.seed, drop_last=cfg.drop_last)
    else:
        sampler = RandomSampler(train_set, generator=loader_gen)
    pin = device.type == "cuda"
    train_loader = DataLoader(train_set, cfg.batch_size, sampler=sampler, num_workers=workers,
                              drop_last=cfg.drop_last, generator=loader_gen, pin_memory=pin)
    test_loader = DataLoader(test_shard, cfg.test_batch_size, shuffle=False, num_workers=workers, pin_memory=pin)
    if hasattr(model, "set_num_train_batches"):
        model.set_num_train_batches(len(train_loader))
        model_config = dict(model.config)

    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=cfg.find_unused_parameters)

    # files (rank 0)
    csv_log = writer = None
    if is_main:
        atomic_write_text(out / "train_config.json", json.dumps(
            {"train_config": cfg.to_dict(), "model_config": model_config, "world_size": world}, indent=2) + "\n")
        csv_log = _CsvLog(out / "log.csv", keep_through_epoch=start_epoch if cfg.resume else None)
        writer = _tensorboard(out, cfg.tensorboard)

    results = {"out": str(out), "device": str(device), "world_size": world, "model_config": model_config,
               "start_epoch": start_epoch, "grids": [], "files": {}}
    train_images, train_seconds, metrics = 0, 0.0, {}
    try:
        from tqdm.auto import tqdm
        for epoch in range(start_epoch, cfg.epochs):
            if cfg.max_steps is not None and step >= cfg.max_steps:
                break
            # re-seed every stream from (seed, epoch, rank): exact resume at epoch boundaries
            torch.manual_seed(_derived_seed(cfg.seed, epoch, rank, "torch"))
            loader_gen.manual_seed(_derived_seed(cfg.seed, epoch, rank, "loader"))
            model_gen = torch.Generator(device=device).manual_seed(_derived_seed(cfg.seed, epoch, rank, "model"))
            if world > 1:
                sampler.set_epoch(epoch)
            if hasattr(model, "set_epoch"):
                model.set_epoch(epoch, cfg.epochs)
            model.train()
            sums, t0, seen = {}, time.time(), 0
            total = len(train_loader) if cfg.max_steps is None else min(len(train_loader), cfg.max_steps - step)
            bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (is_main and cfg.progress),
                       total=total, dynamic_ncols=True, leave=True)
            for x, _ in bar:
                x = x.to(device, non_blocking=True)
                terms, loss_value = train_step(net, model, optimizer, scaler, x, model_gen, cfg.amp, world)
                if terms is None:
                    kept = (f"the last good checkpoint is {out / 'last.pt'} (epoch {epoch})" if epoch
                            else "no checkpoint was written yet")
                    raise NonFiniteLossError(
                        f"the training loss became {loss_value:.4g} at epoch {epoch + 1}, step {step + 1}; stopped, "
                        f"{kept}. Lower --lr, use --amp off or check the data, then rerun (--resume continues)")
                n = x.shape[0]
                seen += n
                step += 1
                for key, value in terms.items():
                    sums[key] = sums.get(key, 0.0) + value.double() * n
                if is_main and cfg.progress:
                    bar.set_postfix(loss=f"{loss_value:.4f}", img_s=f"{seen * world / (time.time() - t0):.0f}",
                                    refresh=False)
                if cfg.max_steps is not None and step >= cfg.max_steps:
                    break
            bar.close()
            epoch_seconds = time.time() - t0
            keys = sorted(sums)
            train = _all_sum(torch.tensor([seen] + [float(sums[k]) for k in keys], dtype=torch.float64), world)
            train_images += int(train[0])
            train_seconds += epoch_seconds
            test_gen = torch.Generator(device=device).manual_seed(_derived_seed(cfg.seed, epoch, rank, "test"))
            test_sums = evaluate_loader(model, test_loader, device, test_gen, cfg.amp)
            tkeys = sorted(k for k in test_sums if k != "count")
            test = _all_sum(torch.tensor([test_sums.get("count", 0.0)] + [test_sums.get(k, 0.0) for k in tkeys],
                                         dtype=torch.float64), world)
            metrics = {"epoch": epoch + 1, "step": step,
                       **{f"train_{k}": float(v) / float(train[0]) for k, v in zip(keys, train[1:])},
                       **{f"test_{k}": float(v) / float(test[0]) for k, v in zip(tkeys, test[1:])},
                       "test_images": int(test[0]), "lr": optimizer.param_groups[0]["lr"],
                       "images_per_s": float(train[0]) / epoch_seconds, "epoch_seconds": epoch_seconds}
            if not math.isfinite(metrics["test_loss"]):
                raise NonFiniteLossError(f"the test loss became {metrics['test_loss']} after epoch {epoch + 1}; "
                                         f"stopped, {out / 'last.pt'} is left at epoch {epoch}")
            last_epoch = epoch + 1 == cfg.epochs or (cfg.max_steps is not None and step >= cfg.max_steps)
            if is_main:
                best = _write_epoch(cfg, out, model, model_config, optimizer, scaler, epoch, step, metrics, best,
                                    csv_log, writer, world)
                if (cfg.grid_every and (epoch + 1) % cfg.grid_every == 0) or last_epoch:
                    g = torch.Generator(device=device).manual_seed(_derived_seed(cfg.seed, "grid"))
                    results["grids"].append(str(save_recon_grid(
                        model, grid_images.to(device), out / "images" / f"recon_epoch{epoch + 1:04d}.png", g)))
                    results["grids"].append(str(save_sample_grid(
                        model, cfg.grid_images, out / "images" / f"samples_epoch{epoch + 1:04d}.png", g)))
            if world > 1:
                dist.barrier()
            if on_epoch_end is not None and on_epoch_end(epoch + 1, metrics):
                break  # the caller asked to stop; this epoch's checkpoint and log row are written
    finally:
        if writer is not None:
            writer.close()

    if world > 1:
        best = _on_rank0(world, rank, lambda: best)
    if not metrics and ckpt is not None:  # resumed a run that was already finished
        metrics = dict(ckpt.get("metrics") or {})
    results.update({
        "epochs": int(metrics.get("epoch", start_epoch)), "steps": step, "metrics": metrics,
        "best_test_loss": best, "seconds": time.time() - t_start,
        "train_images_per_s": train_images / train_seconds if train_seconds else None,
        "files": {"last": str(out / "last.pt"), "best": str(out / "best.pt"), "log": str(out / "log.csv"),
                  "config": str(out / "train_config.json")},
    })
    return results


def _write_epoch(cfg, out, model, model_config, optimizer, scaler, epoch, step, metrics, best, csv_log, writer,
                 world):
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1, "step": step,
             "config": model_config, "train_config": cfg.to_dict(), "dataset": cfg.dataset, "metrics": metrics,
             "scaler": scaler.state_dict() if scaler.is_enabled() else None, "world_size": world}
    improved = metrics["test_loss"] < best
    best = min(best, metrics["test_loss"])
    state["best_test_loss"] = best
    save_checkpoint(out / "last.pt", state)
    if improved:
        save_checkpoint(out / "best.pt", state)
    if cfg.keep_every and (epoch + 1) % cfg.keep_every == 0:  # the history of a run (Fig. 7 of the paper)
        save_checkpoint(out / "checkpoints" / f"epoch{epoch + 1:04d}.pt", state)
    csv_log.write(metrics)
    if writer is not None:
        for key, value in metrics.items():
            if key not in ("epoch", "step"):
                writer.add_scalar(key, value, epoch + 1)
        writer.flush()
    return best


# ------------------------------------------------------------------------------ using a trained model
def _checkpoint_dataset(ckpt: dict) -> Optional[str]:
    return ckpt.get("dataset") or (ckpt.get("train_config") or {}).get("dataset")


def _output_path(out, suffixes, force: bool) -> Path:
    out = Path(out)
    if out.suffix.lower() not in suffixes:
        raise ValueError(f"output {str(out)!r} must end in {' or '.join(suffixes)}")
    if out.exists() and not force:
        raise ValueError(f"{str(out)!r} exists; pass --force to replace it or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def sample_to_file(checkpoint, n: int, out, seed: int = 0, device: str = "auto", batch_size: int = 256,
                   nrow: int = 8, force: bool = False) -> dict:
    """Generate `n` images with `model.sample`; write a PNG grid (`.png`) or the tensor `[n, C, H, W]` in
    [-1, 1] (`.pt`). Draws come from one generator seeded with `seed`, so a repeat gives the same images."""
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be >= 1, got {n}, {batch_size}")
    out = _output_path(out, (".png", ".pt"), force)
    dev = resolve_device(device)
    model, ckpt = load_model(checkpoint, map_location=dev)
    model.eval()
    gen = torch.Generator(device=dev).manual_seed(seed)
    with torch.no_grad():
        images = torch.cat([model.sample(min(batch_size, n - i), generator=gen).float().cpu()
                            for i in range(0, n, batch_size)])
    if out.suffix.lower() == ".pt":
        atomic_write(out, lambda p: torch.save(images, p))
    else:
        from torchvision.utils import save_image
        atomic_write(out, lambda p: save_image(to_unit_range(images), str(p), nrow=nrow, padding=2, pad_value=1.0))
    return {"out": str(out), "n": n, "shape": list(images.shape), "model": model.config.get("model"),
            "epoch": ckpt.get("epoch"), "seed": seed, "device": str(dev)}


def reconstruct_to_file(checkpoint, out, n: int = 32, dataset: Optional[str] = None, data_root=None,
                        cache_dir=None, split: str = "test", seed: int = 0, device: str = "auto", nrow: int = 8,
                        force: bool = False) -> dict:
    """PNG of the first `n` images of a split (rows of originals) above their reconstructions; also
    returns their per-image mean MSE."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out = _output_path(out, (".png",), force)
    dev = resolve_device(device)
    model, ckpt = load_model(checkpoint, map_location=dev)
    dataset = dataset or _checkpoint_dataset(ckpt)
    if dataset is None:
        raise ValueError(f"{checkpoint} does not say which dataset it was trained on; pass --dataset")
    info = dataset_info(dataset)
    want = (model.config.get("in_channels"), model.config.get("image_size"))
    if want != (info["in_channels"], info["image_size"]):
        raise ValueError(f"the model of {checkpoint} takes {want[0]}x{want[1]}x{want[1]} images but {dataset} has "
                         f"{info['in_channels']}x{info['image_size']}x{info['image_size']}; pass the right --dataset")
    data = load_dataset(dataset, split, data_root, cache_dir, augment=False)
    x = torch.stack([data[i][0] for i in range(min(n, len(data)))]).to(dev)
    gen = torch.Generator(device=dev).manual_seed(seed)
    atomic_write(out, lambda p: save_recon_grid(model, x, p, torch.Generator(device=dev).manual_seed(seed), nrow))
    with torch.no_grad():
        model.eval()
        mse = (model(x, generator=gen)[0].double() - x.double()).pow(2).flatten(1).mean(1).mean().item()
    return {"out": str(out), "n": x.shape[0], "dataset": dataset, "split": split, "mse": mse,
            "epoch": ckpt.get("epoch"), "seed": seed, "device": str(dev)}


def model_summary(model, device="cpu", checkpoint: Optional[dict] = None) -> dict:
    """Parameters (total, trainable, per top-level block), layer types and counts, latent size, T,
    device and the kernel backend our neurons would use there."""
    from collections import Counter
    device = torch.device(device)
    cfg = dict(getattr(model, "config", {}))
    blocks = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    containers = (torch.nn.Sequential, torch.nn.ModuleList, torch.nn.ModuleDict)
    layers = Counter(type(m).__name__ for m in list(model.modules())[1:] if not isinstance(m, containers))
    backend = cfg.get("backend", "auto")
    try:
        from .kernels import select_backend
        chosen = (select_backend(torch.empty(1, device=device), backend) if "backend" in cfg
                  else "n/a (no spiking layers)")
    except Exception as err:  # kernels unavailable: report why rather than fail the summary
        chosen = f"unknown ({type(err).__name__}: {err})"
    res = {"model": cfg.get("model", type(model).__name__), "class": type(model).__name__, "config": cfg,
           "parameters": sum(p.numel() for p in model.parameters()),
           "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
           "blocks": blocks, "layers": dict(sorted(layers.items())), "latent_dim": cfg.get("latent_dim"),
           "T": cfg.get("T"), "image_shape": [cfg.get("in_channels"), cfg.get("image_size"), cfg.get("image_size")],
           "device": str(device), "kernel_backend": {"requested": backend if "backend" in cfg else None,
                                                     "on_this_device": chosen}}
    if checkpoint is not None:
        res["checkpoint"] = {k: checkpoint.get(k) for k in ("epoch", "step", "dataset", "version", "best_test_loss")}
        res["checkpoint"]["metrics"] = checkpoint.get("metrics")
    return res
