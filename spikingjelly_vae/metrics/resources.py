"""Where metric weights and caches live: path resolution, atomic npz writes (checksums: ``atomic.sha256_file``).

Nothing is ever downloaded: every weights file comes from an option or an environment variable,
and a missing one raises `MetricUnavailable` naming both.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_write

__all__ = ["MetricUnavailable", "resolve_file", "save_npz_atomic", "load_npz_cache", "protocol_key"]


class MetricUnavailable(RuntimeError):
    """A metric cannot be computed here (missing weights or statistics); the message says why."""


def resolve_file(value, env: str, option: str, what: str, *, names=()) -> Path:
    """The file for `what`: `value`, else env `env`; a folder is searched for `names`.

    Raises MetricUnavailable naming `option` and `env` when it is not given or not there.
    """
    raw = value or os.environ.get(env)
    if not raw:
        raise MetricUnavailable(f"{what} is not available: pass {option} PATH or set {env}")
    path = Path(raw).expanduser()
    if path.is_dir():
        found = [path / n for n in names if (path / n).is_file()]
        if not found:
            raise MetricUnavailable(f"{what}: folder {str(path)!r} (from {option} / {env}) holds none of "
                                    f"{', '.join(names) or 'the expected files'}")
        path = found[0]
    if not path.is_file():
        raise MetricUnavailable(f"{what}: file {str(path)!r} (from {option} / {env}) does not exist")
    return path


def protocol_key(protocol: dict) -> str:
    """A short stable hash of a protocol dict (sorted JSON), used in cache file names."""
    return hashlib.sha256(json.dumps(protocol, sort_keys=True).encode()).hexdigest()[:16]


def _payload_sha256(arrays: dict) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}|{a.dtype.str}|{a.shape}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_npz_atomic(path, **arrays) -> Path:
    """np.savez to a temp file in the same folder, then rename (a crash never leaves half a file); the file
    also holds `payload_sha256`, a digest of the arrays that `load_npz_cache` checks."""
    arrays = {**arrays, "payload_sha256": np.array(_payload_sha256(arrays))}
    return atomic_write(path, lambda tmp: np.savez(tmp, **arrays))


def load_npz_cache(path, protocol: dict) -> dict | None:
    """The arrays of a statistics cache (`save_npz_atomic`) if it was computed for `protocol` (its JSON entry)
    and its arrays still match their digest; else None, with a warning when the file is there but damaged or
    edited (the caller computes the statistics again and rewrites it)."""
    import warnings
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {key: z[key] for key in z.files}
        if json.loads(str(arrays["protocol"])) != protocol:
            return None  # another protocol under a colliding name: simply recomputed
        if str(arrays.pop("payload_sha256")) == _payload_sha256(arrays):
            return arrays
        reason = "its arrays changed since it was written (payload sha256 differs)"
    except Exception as err:  # noqa: BLE001 - any unreadable cache is rebuilt, never trusted
        reason = f"it does not load ({type(err).__name__})"
    warnings.warn(f"rebuilding the statistics cache {path}: {reason}", stacklevel=3)
    return None

