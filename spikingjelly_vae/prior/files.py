"""Prior files: one weights_only torch file per fitted prior, with its provenance and a sha256 digest.

Every prior file is a dict ``{"format": ..., "format_version": ..., <fields>, "provenance": {...},
"digest": sha256}``; the digest covers everything else, so an edited file (or any other file) is refused
with one PriorError. The digest guards against accidents, not against someone who recomputes it.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

import torch

from ..atomic import atomic_write
from .base import PriorError

__all__ = ["digest", "save_payload", "load_payload"]


def _tensors(value) -> Iterable[torch.Tensor]:
    """A tensor field, or a {name: tensor} field (a state dict) in name order."""
    if isinstance(value, torch.Tensor):
        yield value
    else:
        for key in sorted(value):
            yield value[key]


def digest(payload: dict, scalars: tuple, tensors: tuple) -> str:
    """sha256 over the scalar fields (by repr), the tensor fields' bytes and the sorted provenance."""
    h = hashlib.sha256()
    for key in scalars:
        value = payload[key]
        h.update(repr((key, sorted(value.items()) if isinstance(value, dict) else value)).encode())
    for key in tensors:
        for t in _tensors(payload[key]):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(repr(sorted(payload["provenance"].items())).encode())
    return h.hexdigest()


def save_payload(path, payload: dict, scalars: tuple, tensors: tuple) -> Path:
    """Write ``payload`` plus its digest atomically (``torch.save``; loads with weights_only=True)."""
    payload = dict(payload, digest=digest(payload, scalars, tensors))
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _is_tensor_field(value) -> bool:
    return isinstance(value, torch.Tensor) or (
        isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                        for k, v in value.items()))


def load_payload(path, *, kind: str, fmt: str, version: int, scalars: tuple, tensors: tuple,
                 how: str) -> dict:
    """Read a file written by ``save_payload`` with format ``fmt``; anything else raises one PriorError.

    ``kind`` names the prior in messages ("GMM"), ``how`` says how to make a new file."""
    path = Path(path)
    what = f"{path} is not a {kind} prior written by spikingjelly_vae.prior ({how})"
    if path.is_dir():
        raise PriorError(f"{path} is a folder, not a {kind} prior file; {how}")
    if not path.is_file():
        raise PriorError(f"{kind} prior file {path} does not exist; {how}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        from ..schemas import load_error_line
        raise PriorError(f"{what}: unreadable as a weights-only torch file ({load_error_line(err, path)})"
                         ) from None
    keys = {"format", "format_version", *scalars, *tensors, "provenance", "digest"}
    if not isinstance(payload, dict) or set(payload) != keys or payload["format"] != fmt:
        raise PriorError(f"{what}: wrong contents")
    if payload["format_version"] != version:
        raise PriorError(f"{what}: format version {payload['format_version']} (this package reads {version})")
    if not all(_is_tensor_field(payload[k]) for k in tensors) or not isinstance(payload["provenance"], dict) \
            or payload["digest"] != digest(payload, ("format", "format_version", *scalars), tensors):
        raise PriorError(f"{what}: its contents do not match its digest (edited or corrupted); refit it")
    return payload
