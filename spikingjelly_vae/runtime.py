"""Where and how a model runs: device choice, derived seeds, eval mode for a block of code, progress bars."""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Iterator, Optional

import torch

__all__ = ["DEVICE_HELP", "resolve_device", "derived_seed", "eval_mode", "progress_bar"]

DEVICE_HELP = "auto (CUDA when available, else CPU), cpu, cuda or cuda:N."


def resolve_device(device: Optional[str] = "auto", local_rank: int = 0) -> torch.device:
    """The device to run on. The default, ``auto`` (or None), is ``cuda:<local_rank>`` when CUDA is
    available, else ``cpu``; ``cuda`` without an index means ``cuda:<local_rank>``; a named CUDA
    device must exist. ValueError (saying what to pass) otherwise."""
    if device in (None, "auto"):
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use auto, cpu or cuda") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for but CUDA is not available here; use --device cpu")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    elif dev.type != "cpu":
        raise ValueError(f"unsupported device {device!r}; use auto, cpu or cuda")
    return dev


def derived_seed(seed: int, *parts) -> int:
    """A 63-bit seed from a run seed and named parts (epoch, rank, stream, batch index, ...):
    the first 8 bytes (little-endian) of sha256 of ``"seed:part1:part2..."``."""
    digest = hashlib.sha256(":".join(str(p) for p in (seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``with eval_mode(model):`` runs the block in eval mode and restores the model's train/eval mode
    afterwards, also when the block raises."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def progress_bar(iterable=None, *, total=None, desc: str = "", unit: str = "it", enabled: bool = True):
    """The package's one progress bar (tqdm, on stderr): over `iterable` if given, else updated by hand with
    `bar.update(n)`; a silent no-op bar when not `enabled`. Pass plain iterables (generators, lists), not
    a DataLoader whose iteration must not be repeated: count its batches with `update` instead."""
    from tqdm.auto import tqdm
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True,
                leave=False)
