"""Step-exact resume: the format of `<out>/resume.pt`, the random streams it keeps, how a run continues
inside an epoch, and when a run stops between steps (SIGTERM / SIGINT, or the caller's stop rule).

`resume.pt` is a checkpoint (`checkpoint.save_checkpoint`, atomic: the previous file stays intact until the
rename) written at a step boundary: every `checkpoint_every` optimizer steps, on SIGTERM or SIGINT, when
the caller's stop rule (a `reproduce` budget) says so, and after a `--max-steps` stop inside an epoch.
Besides the keys of last.pt (model, optimizer, scaler, config, train_config, dataset, step,
best_test_loss, world_size, metrics of the last finished epoch) it holds, as RESUME_KEYS says:

- `epoch`: epochs finished (as in last.pt) and `batch`: batches done of the next one (of `batches`);
- `ranks`: one dict per process with its random streams at the boundary (torch CPU and CUDA, the model's
  generator, python, numpy) and its partial sums of the epoch's training terms (`sums`, `seen`, `seconds`).

A run continues from whichever of last.pt and resume.pt holds more optimizer steps (resume.pt on a tie: a
`--max-steps` stop inside an epoch). The data order is re-derived, not stored: the epoch re-seeds its
loader generator from (seed, epoch, rank) as always, then the first `batch` batches are skipped at the
sampler without loading them or, with DataLoader worker processes, fetched and dropped (the workers' own
random streams then advance as in the uninterrupted run). Then every stream is restored, so the run goes
on bit for bit as if it had never stopped.
"""
from __future__ import annotations

import random
import signal
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler

from ..checkpoint import CheckpointError, load_checkpoint
from ..runtime import derived_seed

__all__ = ["RESUME_FILE", "RESUME_KEYS", "EpochProgress", "seed_streams", "StopControl", "StopAtStep", "TrainingInterrupted", "SkipSampler",
           "capture_rank_state", "restore_rank_state", "gather", "batches_from", "resume_source",
           "ignore_stop_signals"]

RESUME_FILE = "resume.pt"
# keys resume.pt holds beyond those of last.pt, and what each rank's entry of `ranks` holds
RESUME_KEYS = ("batch", "batches", "ranks")
RANK_KEYS = ("streams", "sums", "seen", "seconds")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopAtStep(Exception):
    """Raised inside the loop after the state of a step boundary is saved; caught by `fit`."""

    def __init__(self, signum: Optional[int]):
        super().__init__(signum)
        self.signum = signum


class TrainingInterrupted(Exception):
    """SIGTERM or SIGINT stopped a run at a step boundary after its state was saved; `resume` is the
    command that continues it, `signum` the signal (the CLI exits with 128 + signum)."""

    def __init__(self, message: str, *, signum: int, path: Path, resume: str):
        super().__init__(message)
        self.signum, self.path, self.resume = signum, path, resume


class StopControl:
    """When a run stops between steps: a SIGTERM / SIGINT caught while `signals()` is active, or
    `rule(units_done, next_seconds)` returning True (units: optimizer steps and finished test passes of this
    `fit` call; next_seconds: the measured cost of the next one, None before it is measured)."""

    def __init__(self, rule: Optional[Callable[[int, Optional[float]], bool]] = None):
        self.rule, self.signum, self.units = rule, None, 0
        self.steps, self.spent = 0, 0.0  # optimizer steps of this call and their wall seconds

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        if signal.SIGINT in self._old:  # a second Ctrl-C stops at once; further SIGTERMs change nothing
            signal.signal(signal.SIGINT, self._old.pop(signal.SIGINT))
        print(f"received {signal.Signals(signum).name}: saving the run at the next step boundary "
              "(Ctrl-C again stops at once, without saving)", file=sys.stderr, flush=True)

    @contextmanager
    def signals(self):
        """Catch SIGINT and SIGTERM while the block runs (main thread only; elsewhere nothing changes)."""
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            self._old = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        try:
            yield self
        finally:
            for sig, old in self._old.items():
                signal.signal(sig, old)

    def due(self, next_seconds: Optional[float], world: int = 1) -> bool:
        """Whether to stop at this boundary (agreed by every rank)."""
        from .distributed import all_sum
        want = self.signum is not None or (self.rule is not None and bool(self.rule(self.units, next_seconds)))
        return bool(all_sum(torch.tensor([float(want)]), world).item() > 0)


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: workers ignore a Ctrl-C (SIGINT to the whole process group), so the main
    process can finish its step and save; they end with it. (SIGTERM stays: it is how they are ended.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class SkipSampler(Sampler):
    """The indices of `sampler`; the next pass drops its first `skip` indices (then `skip` is 0 again). The
    wrapped sampler is iterated whole, so its generator is used exactly as in a full pass."""

    def __init__(self, sampler):
        self.sampler, self.skip = sampler, 0

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        skip, self.skip = self.skip, 0
        for i, index in enumerate(self.sampler):
            if i >= skip:
                yield index


def batches_from(loader, start: int):
    """An iterator over `loader`'s batches from batch `start` on, drawing the loader's random streams as a
    whole pass does: ResidentLoader and single-process DataLoader skip at the sampler, a DataLoader with
    workers fetches and drops the first batches."""
    if start and hasattr(loader, "skip"):  # ResidentLoader
        loader.skip = start
    elif start and isinstance(loader, DataLoader) and loader.num_workers == 0 \
            and isinstance(loader.sampler, SkipSampler):
        loader.sampler.skip = start * loader.batch_size
    elif start:
        it = iter(loader)
        for _ in range(start):
            next(it)
        return it
    return iter(loader)


# ------------------------------------------------------------------------------ random streams and sums
def seed_streams(seed: int, epoch: int, rank: int) -> None:
    """Re-seed the global torch, python and numpy streams from (seed, epoch, rank) (each epoch's start)."""
    torch.manual_seed(derived_seed(seed, epoch, rank, "torch"))
    random.seed(derived_seed(seed, epoch, rank, "python"))
    np.random.seed(derived_seed(seed, epoch, rank, "numpy") % 2 ** 32)


@dataclass
class EpochProgress:
    """Where one process stands in an epoch: batches done, its (unreduced) sums of the batch-size-weighted
    loss terms, images seen and training seconds."""

    batch: int = 0
    sums: dict = field(default_factory=dict)
    seen: int = 0
    seconds: float = 0.0

    def entry(self, device: torch.device, model_gen: torch.Generator) -> dict:
        """This process's `ranks` entry of resume.pt at the current step boundary."""
        return capture_rank_state(device, model_gen, self.sums, self.seen, self.seconds)


def capture_rank_state(device: torch.device, model_gen: torch.Generator, sums: dict, seen: int,
                       seconds: float) -> dict:
    """This process's entry of `ranks` at a step boundary."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    streams = {"torch": torch.get_rng_state(), "model": model_gen.get_state(),
               "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
               "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                         "has_gauss": int(has_gauss), "cached": float(cached)}}
    if device.type == "cuda":
        streams["cuda"] = torch.cuda.get_rng_state(device)
    return {"streams": streams, "sums": {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in sums.items()},
            "seen": int(seen), "seconds": float(seconds)}


def restore_rank_state(entry: dict, device: torch.device, model_gen: torch.Generator):
    """Restore the streams of a `ranks` entry; returns (sums on `device`, seen, seconds)."""
    s = entry["streams"]
    torch.set_rng_state(s["torch"])
    model_gen.set_state(s["model"])
    py = s["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = s["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached"]))
    if device.type == "cuda" and "cuda" in s:
        torch.cuda.set_rng_state(s["cuda"], device)
    sums = {k: v.to(device) if torch.is_tensor(v) else v for k, v in entry["sums"].items()}
    return sums, int(entry["seen"]), float(entry["seconds"])


def gather(entry: dict, world: int) -> list:
    """Every rank's entry, in rank order (on every rank)."""
    if world <= 1:
        return [entry]
    out = [None] * world
    dist.all_gather_object(out, entry)
    return out


# ------------------------------------------------------------------------------------- which file
def resume_source(out: Path) -> Path:
    """The checkpoint a --resume continues from: last.pt or resume.pt, whichever holds more optimizer steps
    (resume.pt on a tie); ValueError when the folder has neither."""
    last, step_file = out / "last.pt", out / RESUME_FILE
    if not step_file.is_file():
        return last
    try:
        step = int(load_checkpoint(step_file).get("step", 0))
    except CheckpointError as err:
        raise CheckpointError(f"{err}; delete {step_file} to continue from last.pt (the end of the last finished "
                              "epoch) instead") from None
    if not last.is_file():
        return step_file
    return step_file if step >= int(load_checkpoint(last).get("step", 0)) else last
