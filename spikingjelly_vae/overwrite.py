"""Outputs never replace inputs: the one rule for every file a command writes (`claim_output`).

An existing file at an output path is replaced only with `--force` (as `sjvae sample` always did), and
never when it is a file of another kind than the one being written (a checkpoint, a GMM prior, a JSON
result of another command, an image, an archive), with or without `--force`: a JSON result written over
a checkpoint would lose the weights for good. `file_kind` tells the kinds apart by content, not by name.
"""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["file_kind", "claim_output"]

_MAGIC = ((b"\x89PNG", "PNG image"), (b"\xff\xd8\xff", "JPEG image"), (b"\x1f\x8b", "gzip archive"),
          (b"BZh", "bzip2 archive"), (b"\xfd7zXZ", "xz archive"))


def _torch_kind(path: Path) -> str:
    import torch
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - any zip that torch cannot read is just an archive
        return "zip archive"
    if isinstance(obj, torch.Tensor):
        return "tensor file"
    if isinstance(obj, dict) and obj.get("format") == "spikingjelly_vae.gmm_prior":
        return "GMM prior"
    if isinstance(obj, dict) and obj.get("format") == "spikingjelly_vae.diffusion_prior":
        return "diffusion prior"
    if isinstance(obj, dict) and "model" in obj and "config" in obj:
        return "checkpoint"
    return "torch file"


def _json_kind(data) -> str:
    if isinstance(data, dict) and isinstance(data.get("metrics"), dict) and "dataset" in data:
        return "evaluate result"
    if isinstance(data, dict) and isinstance(data.get("rows"), list) and "columns" in data:
        return "compare table"
    return "JSON file"


def file_kind(path) -> str:
    """What an existing file holds: "empty", "checkpoint", "GMM prior", "tensor file", "torch file",
    "evaluate result", "compare table", "JSON file", an image or archive kind, or "other file"."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04"):
        return _torch_kind(path)
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    try:
        return _json_kind(json.loads(path.read_text()))
    except (UnicodeDecodeError, ValueError):
        return "other file"


def claim_output(path, kind: str, *, force: bool, option: str = "--out") -> Path:
    """Check that `path` may receive a file of `kind` (a name from `file_kind`) before any work is done.

    A folder, or an existing file of another kind, is refused even with `force`; an existing file of the
    same kind (or an empty one) needs `force`. ValueError (one line) otherwise; returns `path`."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {str(path)!r} is a folder; name the {kind} file to write")
    if path.exists():
        found = file_kind(path)
        if found not in (kind, "empty"):
            raise ValueError(f"{option} {str(path)!r} is an existing {found}, not a {kind}: it is never replaced "
                             f"(not even with --force); choose another {option}")
        if not force:
            raise ValueError(f"{str(path)!r} exists; pass --force to replace it or choose another {option}")
    return path
