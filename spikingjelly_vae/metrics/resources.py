"""Where metric weights and caches live: path resolution, checksums, atomic npz writes.

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

__all__ = ["MetricUnavailable", "resolve_file", "sha256_file", "save_npz_atomic", "protocol_key",
           "default_cache_dir"]


class MetricUnavailable(RuntimeError):
    """A metric cannot be computed here (missing weights or statistics); the message says why."""


def resolve_file(value, env: str, option: str, what: str, names=()) -> Path:
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


_SHA_CACHE: dict = {}


def sha256_file(path) -> str:
    """Hex sha256 of a file (memoised on path, size and mtime)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def protocol_key(protocol: dict) -> str:
    """A short stable hash of a protocol dict (sorted JSON), used in cache file names."""
    return hashlib.sha256(json.dumps(protocol, sort_keys=True).encode()).hexdigest()[:16]


def save_npz_atomic(path, **arrays) -> Path:
    """np.savez to a temp file in the same folder, then rename (a crash never leaves half a file)."""
    return atomic_write(path, lambda tmp: np.savez(tmp, **arrays))


def default_cache_dir(cache_dir=None) -> Path:
    """`cache_dir`, else env SJVAE_CACHE, else ~/.cache/spikingjelly_vae (never under the data)."""
    return Path(cache_dir or os.environ.get("SJVAE_CACHE") or "~/.cache/spikingjelly_vae").expanduser()
