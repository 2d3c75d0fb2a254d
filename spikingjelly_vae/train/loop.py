"""The training loop: one process, or PyTorch DDP under `torchrun` (one process per GPU, or gloo on CPU).

`fit(TrainConfig(...))` trains any registered model through the interface of docs/architecture.md:
`out = model(x, generator=g)`, `terms = model.loss(x, out)`, `terms["loss"].backward()`,
`model.param_groups(lr)`, `model.sample(n)`, `model.config`; plus two optional hooks,
`model.set_epoch(epoch, max_epochs)` (called at each epoch start) and
`model.set_num_train_batches(n)` (called once with len(train_loader)). What a run writes: `outputs.py`.

Reproducibility: every random stream is re-seeded at the start of each epoch from (seed, epoch, rank):
the global torch RNG (model init, augmentation in the loading process), python's and numpy's, the
DataLoader generator (shuffling, worker seeds) and the generator handed to the model (Poisson / Gaussian
latent draws). A run resumed from the checkpoint of epoch k therefore reproduces an uninterrupted run
exactly (on the same device and software). Inside an epoch, `resume.pt` (train/resume.py) keeps the step-
exact state: written every `checkpoint_every` steps, on SIGTERM / SIGINT (then `TrainingInterrupted` is
raised), and when the caller's `stop_rule` says stop (then fit returns with `stopped="rule"`).
"""
from __future__ import annotations

import math
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist

from ..runtime import derived_seed, eval_mode, progress_bar, resolve_device
from .config import TrainConfig
from .distributed import all_sum, barrier, dist_setup, is_distributed, on_rank0
from .outputs import grid_due, prepare_out, release_lock, write_epoch, write_grids
from .resume import (RESUME_FILE, EpochProgress, StopAtStep, TrainingInterrupted, batches_from, gather,
                     restore_rank_state, seed_streams)
from .state import Run, setup_run, use_resident_data
from ..checkpoint import save_checkpoint

__all__ = ["NonFiniteLossError", "TrainingInterrupted", "fit", "train_step", "evaluate_loader"]


class NonFiniteLossError(ValueError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


def fit(config: TrainConfig, on_epoch_end: Optional[Callable[[int, dict], Optional[bool]]] = None, *,
        stop_rule: Optional[Callable[[int, Optional[float]], bool]] = None,
        checkpoint_extras: Optional[Callable[[dict], dict]] = None) -> dict:
    """Train (or resume) a run; returns a results dict (same on every rank).

    `on_epoch_end(epoch, metrics)` is called on every rank after the epoch's checkpoint, log row and
    grids are written; when it returns True (on any rank), training stops cleanly after that epoch.
    `stop_rule(units_done, next_seconds)` is asked at every step boundary and between test batches (units:
    optimizer steps and test passes this call finished; next_seconds: the measured cost of the next one, or
    None); True stops there with a step-exact resume.pt and results["stopped"] == "rule".
    `checkpoint_extras(state)` (rank 0) returns entries stored in every checkpoint written (last.pt, best.pt,
    resume.pt), in the same atomic write; `state` holds at least epoch, batch and step.
    SIGTERM / SIGINT save resume.pt at the next step boundary, then raise TrainingInterrupted.
    Raises ValueError (or CheckpointError, NonFiniteLossError, both ValueErrors) for bad input.
    """
    rank, world, local_rank, own_group = dist_setup()
    try:
        return _fit(config, rank, world, local_rank, on_epoch_end, stop_rule, checkpoint_extras)
    finally:
        if own_group and dist.is_initialized():
            dist.destroy_process_group()


def _fit(config: TrainConfig, rank: int, world: int, local_rank: int, on_epoch_end, stop_rule,
         checkpoint_extras) -> dict:
    t_start = time.time()
    cfg = config.resolved()
    device = resolve_device(cfg.device, local_rank)
    if cfg.amp != "off" and device.type != "cuda":
        raise ValueError(f"--amp {cfg.amp} needs a CUDA device (got {device}); use --amp off on CPU")
    cfg.data_on_gpu = use_resident_data(cfg, device)  # the resolved choice goes to train_config.json
    cfg.out = on_rank0(world, rank, lambda: str(prepare_out(cfg)))
    run = setup_run(cfg, Path(cfg.out), device, rank=rank, world=world)
    run.control.rule, run.checkpoint_extras = stop_rule, checkpoint_extras
    _announce(run)
    metrics, steps_bar, stop = {}, _steps_bar(run), None
    try:
        with run.control.signals():
            for epoch in range(run.start_epoch, cfg.epochs):
                if run.steps_done():
                    break
                metrics = _epoch(run, epoch, steps_bar=steps_bar)
                stop_now = bool(on_epoch_end(epoch + 1, metrics)) if on_epoch_end is not None else False
                if all_sum(torch.tensor([float(stop_now)]), world).item() > 0:
                    break
    except StopAtStep as stopped:
        stop = stopped
    finally:
        if steps_bar is not None:
            steps_bar.close()
        if run.writer is not None:
            run.writer.close()
        if run.is_main:
            release_lock(run.out)
    if stop is not None and stop.signum is not None:
        name = signal.Signals(stop.signum).name
        raise TrainingInterrupted(f"{name}: stopped at step {run.step} with its state saved in {run.out}; "
                                  f"resume with: {resume_command(run.out)}", signum=stop.signum,
                                  path=run.out / RESUME_FILE, resume=resume_command(run.out))
    return {**_results(run, metrics or run.last_metrics, t_start), "stopped": "rule" if stop else None,
            "units": run.control.units}


def resume_command(out) -> str:
    """The shell command that continues the run in `out` (its options come from train_config.json)."""
    return f"sjvae train --resume --out {shlex.quote(str(out))}"


def _announce(run: Run) -> None:
    """On rank 0 with progress on: the run folder, how to resume it, and where the data is held."""
    if not (run.is_main and run.cfg.progress):
        return
    data = (f"held on {run.device} ({len(run.loaders.train)} batches/epoch)" if run.cfg.data_on_gpu
            else f"DataLoader ({len(run.loaders.train)} batches/epoch)")
    print(f"run folder {run.out}; resume with: {resume_command(run.out)}\ndata: {run.cfg.dataset} {data}",
          file=sys.stderr, flush=True)


def _steps_bar(run: Run):
    """Under --max-steps, one bar over the optimizer steps that will run ("step k/N"); else None (per-epoch
    bars)."""
    cfg = run.cfg
    if cfg.max_steps is None:
        return None
    from tqdm.auto import tqdm
    total = min(cfg.max_steps, cfg.epochs * len(run.loaders.train))
    return tqdm(total=total, initial=min(run.step, total), desc=f"step {run.step}/{total}", unit="step",
                disable=not (run.is_main and cfg.progress), dynamic_ncols=True, leave=True)


def _epoch(run: Run, epoch: int, *, steps_bar=None) -> dict:
    """Train one epoch, evaluate, write the epoch's files (rank 0); returns the epoch's metrics.
    `steps_bar`: the run's step bar (under --max-steps), else each epoch shows its own bar."""
    cfg, rank = run.cfg, run.rank
    # re-seed every stream from (seed, epoch, rank): exact resume at epoch boundaries
    seed_streams(cfg.seed, epoch, rank)
    run.loaders.generator.manual_seed(derived_seed(cfg.seed, epoch, rank, "loader"))
    model_gen = torch.Generator(device=run.device).manual_seed(derived_seed(cfg.seed, epoch, rank, "model"))
    if is_distributed(run.world):
        run.loaders.sampler.set_epoch(epoch)
    if hasattr(run.model, "set_epoch"):
        run.model.set_epoch(epoch, cfg.epochs)
    run.model.train()
    progress = _train_epoch(run, epoch, model_gen, steps_bar)
    boundary = progress.entry(run.device, model_gen)  # the state a stop during the test pass saves
    test = _test_pass(run, epoch, progress.batch, boundary)
    train = _reduce({**progress.sums, "count": float(progress.seen)}, run.world)
    run.train_images += int(train["count"])
    run.train_seconds += progress.seconds
    metrics = {"epoch": epoch + 1, "step": run.step,
               **{f"train_{k}": v / train["count"] for k, v in train.items() if k != "count"},
               **{f"test_{k}": v / test["count"] for k, v in test.items() if k != "count"},
               "test_images": int(test["count"]), "lr": run.optimizer.param_groups[0]["lr"],
               "images_per_s": train["count"] / progress.seconds, "epoch_seconds": progress.seconds}
    if not math.isfinite(metrics["test_loss"]):
        raise NonFiniteLossError(f"the test loss became {metrics['test_loss']} after epoch {epoch + 1}; "
                                 f"stopped, {run.out / 'last.pt'} is left at epoch {epoch}. {_nan_advice(True)}")
    if run.is_main:
        _write_epoch_outputs(run, epoch, metrics)
    run.last_metrics = metrics
    if progress.batch < len(run.loaders.train):  # a --max-steps stop inside the epoch: keep the exact state
        _save_resume(run, epoch, progress.batch, boundary)
    barrier(run.world)
    return metrics


def _test_pass(run: Run, epoch: int, batch: int, boundary: dict) -> dict:
    """The epoch's test sums (summed over ranks); a stop asked for during the pass saves the state of the
    end of the training steps (`boundary`) and raises StopAtStep (the next run redoes the test pass)."""
    control = run.control
    test_gen = torch.Generator(device=run.device).manual_seed(derived_seed(run.cfg.seed, epoch, run.rank, "test"))
    stop = (lambda seconds: control.due(seconds)) if run.world == 1 else None  # shards may differ in batches
    test = evaluate_loader(run.model, run.loaders.test, run.device, test_gen, amp=run.cfg.amp, stop=stop,
                           progress=run.is_main and run.cfg.progress)
    if test is None:
        _stop(run, epoch, batch, boundary)
    control.units += 1
    return _reduce(test, run.world)


def _checkpoint_state(run: Run, epoch: int, batch: int, metrics: dict) -> dict:
    """What every checkpoint of the run holds at (`epoch` epochs finished, `batch` batches into the next),
    with the caller's extras."""
    state = {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(), "epoch": epoch,
             "batch": batch, "batches": len(run.loaders.train), "step": run.step, "config": run.model_config, "train_config": run.cfg.to_dict(),
             "dataset": run.cfg.dataset, "metrics": metrics,
             "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else None, "world_size": run.world}
    if run.checkpoint_extras is not None:
        state.update(run.checkpoint_extras(state))
    return state


def _write_epoch_outputs(run: Run, epoch: int, metrics: dict) -> None:
    """Checkpoints, log row and (when due) the image grids of epoch `epoch` (0-based), on rank 0."""
    state = _checkpoint_state(run, epoch + 1, 0, metrics)
    run.best = write_epoch(run.out, run.cfg, state, best=run.best, csv_log=run.csv_log, writer=run.writer)
    run.saved_step = run.step
    if grid_due(run.cfg, epoch + 1, epoch + 1 == run.cfg.epochs or run.steps_done()):
        g = torch.Generator(device=run.device).manual_seed(derived_seed(run.cfg.seed, "grid"))
        run.grids += write_grids(run.out, run.model, run.grid_images.to(run.device), n_samples=run.cfg.grid_images,
                                 epoch=epoch + 1, generator=g)


def _save_resume(run: Run, epoch: int, batch: int, entry: dict) -> None:
    """resume.pt at `batch` batches into epoch `epoch` (0-based), with every rank's `entry` (collective)."""
    ranks = gather(entry, run.world)
    if run.is_main:
        state = _checkpoint_state(run, epoch, batch, run.last_metrics)
        state.update(ranks=ranks, best_test_loss=run.best)
        save_checkpoint(run.out / RESUME_FILE, state)
    barrier(run.world)
    run.saved_step = run.step


def _stop(run: Run, epoch: int, batch: int, entry: dict) -> None:
    """Stop at this step boundary: save it unless the newest file on disk already holds it, then raise."""
    if run.saved_step != run.step:
        _save_resume(run, epoch, batch, entry)
    if run.is_main and run.cfg.progress and run.control.signum is None:
        print(f"stopped at step {run.step} (epoch {epoch + 1}, batch {batch}); state saved in {run.out}",
              file=sys.stderr, flush=True)
    raise StopAtStep(run.control.signum)


def _train_epoch(run: Run, epoch: int, model_gen: torch.Generator, steps_bar=None) -> EpochProgress:
    """The optimizer steps of one epoch (from resume.pt's batch when the run resumes inside it); returns this
    process's progress. Checks for a stop before every batch is fetched (a fetch may draw random numbers)."""
    from tqdm.auto import tqdm
    cfg, loader, control = run.cfg, run.loaders.train, run.control
    point, run.resume_point = run.resume_point, None
    progress = EpochProgress()
    batches = batches_from(loader, point["batch"] if point else 0)
    if point is not None:
        sums, seen, seconds = restore_rank_state(point["ranks"][run.rank], run.device, model_gen)
        progress = EpochProgress(int(point["batch"]), sums, seen, seconds)
    show = run.is_main and cfg.progress
    bar = steps_bar if steps_bar is not None else tqdm(total=len(loader), initial=progress.batch, leave=True,
                                                       desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not show,
                                                       dynamic_ncols=True)
    forecast = _forecast(run, epoch) if epoch == run.start_epoch else None
    while not run.steps_done():
        if control.due(control.spent / control.steps if control.steps else None, run.world):
            _stop(run, epoch, progress.batch, progress.entry(run.device, model_gen))
        t0 = time.time()
        try:
            x, _ = next(batches)
        except StopIteration:
            break
        except Exception:
            if control.signum is None:
                raise
            _stop(run, epoch, progress.batch, progress.entry(run.device, model_gen))  # a worker ended by the signal
        loss_value = _step(run, epoch, x, model_gen, progress)
        seconds = time.time() - t0
        progress.seconds += seconds
        control.spent, control.steps, control.units = control.spent + seconds, control.steps + 1, control.units + 1
        if show:
            if steps_bar is not None:
                bar.set_description_str(f"step {run.step}/{bar.total} (epoch {epoch + 1})", refresh=False)
            bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
        bar.update(1)
        if forecast is not None:
            forecast.step()
        if cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0:
            _save_resume(run, epoch, progress.batch, progress.entry(run.device, model_gen))
    if steps_bar is None:
        bar.close()
    return progress


def _forecast(run: Run, epoch: int):
    """A StepForecast for the first epoch of this call, reporting on rank 0 (with or without --progress)."""
    from tqdm.auto import tqdm

    from .forecast import StepForecast
    steps = len(run.loaders.train)
    total = run.cfg.epochs * steps if run.cfg.max_steps is None else min(run.cfg.max_steps, run.cfg.epochs * steps)
    report = (lambda line: tqdm.write(line, file=sys.stderr)) if run.is_main else (lambda line: None)
    return StepForecast(epoch=epoch + 1, epochs=None if total < run.cfg.epochs * steps else run.cfg.epochs,
                        epoch_steps=steps, call_steps=max(0, total - run.step), report=report)


def _step(run: Run, epoch: int, x, model_gen, progress: EpochProgress) -> float:
    """One optimizer step on batch `x`, added to `progress`; NonFiniteLossError on a NaN / inf loss."""
    x = x.to(run.device, non_blocking=True)
    terms, loss_value = train_step(run.net, run.model, run.optimizer, run.scaler, x, generator=model_gen,
                                   amp=run.cfg.amp, world=run.world)
    if terms is None:
        newest = run.out / (RESUME_FILE if (run.out / RESUME_FILE).is_file() else "last.pt")
        kept = (f"the last good checkpoint is {newest} (epoch {epoch}, step {run.saved_step})"
                if run.saved_step is not None else "no checkpoint was written yet")
        raise NonFiniteLossError(
            f"the training loss became {loss_value:.4g} at epoch {epoch + 1}, step {run.step + 1}; stopped, "
            f"{kept}. {_nan_advice(run.saved_step is not None)}")
    n = x.shape[0]
    progress.seen += n
    progress.batch += 1
    run.step += 1
    for key, value in terms.items():
        progress.sums[key] = progress.sums.get(key, 0.0) + value.double() * n
    return loss_value


def _nan_advice(saved: bool) -> str:
    """What to do after a NaN stop (a --resume keeps the run's options, so it would fail the same way)."""
    if not saved:
        return "Lower --lr, use --amp off or check the data, then rerun the command (the folder is reused)"
    return ("Lower --lr, use --amp off or check the data, then start over with --force or another --out "
            "(--resume keeps the run's own --lr and would stop here again)")


def _reduce(sums: dict, world: int) -> dict:
    """Sum `{"count": n, key: value}` over ranks (keys in sorted order on every rank) -> floats."""
    keys = ["count"] + sorted(k for k in sums if k != "count")
    total = all_sum(torch.tensor([float(sums.get(k, 0.0)) for k in keys], dtype=torch.float64), world)
    return {k: float(v) for k, v in zip(keys, total)}


def _results(run: Run, metrics: dict, t_start: float) -> dict:
    """The results dict of fit (the same on every rank)."""
    best = on_rank0(run.world, run.rank, lambda: run.best) if is_distributed(run.world) else run.best
    if not metrics and run.ckpt is not None:  # resumed a run that was already finished
        metrics = dict(run.ckpt.get("metrics") or {})
    out = run.out
    return {"out": str(out), "device": str(run.device), "world_size": run.world, "model_config": run.model_config,
            "start_epoch": run.start_epoch, "grids": run.grids, "files": {
                "last": str(out / "last.pt"), "best": str(out / "best.pt"), "log": str(out / "log.csv"),
                "config": str(out / "train_config.json")},
            "epochs": int(metrics.get("epoch", run.start_epoch)), "steps": run.step, "metrics": metrics,
            "best_test_loss": best, "seconds": time.time() - t_start,
            "train_images_per_s": run.train_images / run.train_seconds if run.train_seconds else None}


def autocast(device: torch.device, amp: str):
    """Mixed precision context of `amp` (off | bf16 | fp16; the last two on CUDA)."""
    if amp == "off":
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@torch.no_grad()
def evaluate_loader(model, loader, device, generator=None, *, amp: str = "off", stop=None,
                    progress: bool = False) -> Optional[dict]:
    """Sums over a loader in eval mode: batch-size-weighted loss terms and per-image MSE.

    Returns `{"count": n, "<term>": sum_batches n_b * term_b, "mse": sum_i mean_pixels (x_hat_i - x_i)^2}`;
    divide by `count` for means (the reported test MSE is the per-image mean). `stop(seconds per batch so
    far, or None)` is asked before every batch; when it returns True the pass ends and None is returned.
    `progress`: a bar over batches.
    """
    sums: dict = {}
    t0, done = time.time(), 0
    bar = progress_bar(total=len(loader), desc="test", unit="batch", enabled=progress)
    with eval_mode(model), bar:
        for x, _ in loader:
            if stop is not None and stop((time.time() - t0) / done if done else None):
                return None
            done += 1
            x = x.to(device, non_blocking=True)
            with autocast(device, amp):
                out = model(x, generator=generator)
                terms = model.loss(x, out)
            n = x.shape[0]
            sums["count"] = sums.get("count", 0.0) + n
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + float(value) * n
            per_image = (out[0].double() - x.double()).pow(2).flatten(1).mean(1)
            sums["mse"] = sums.get("mse", 0.0) + per_image.sum().item()
            bar.update(1)
    return sums


def train_step(net, model, optimizer, scaler, x, *, generator=None, amp: str = "off", world: int = 1):
    """One optimizer step: out = net(x, generator), terms = model.loss(x, out), backward, AdamW update.

    `net` is `model` or its DDP wrapper. Returns `(detached terms, loss value)`; when the loss is not
    finite on any rank, returns `(None, loss value)` and leaves the weights untouched.
    """
    with autocast(x.device, amp):
        out = net(x, generator=generator)
        terms = model.loss(x, out)
    loss = terms["loss"]
    loss_value = loss.detach().item()  # one device sync per step, for this check and the progress bar
    bad = torch.tensor([0.0 if math.isfinite(loss_value) else 1.0])
    if all_sum(bad, world).item() > 0:
        return None, loss_value
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return {k: v.detach() for k, v in terms.items()}, loss_value
