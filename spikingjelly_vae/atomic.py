"""Files: atomic writes (write a temp file in the target's folder, then rename it over the target)
and checksums.

A crash or error mid-write leaves the previous file untouched and no temp file behind.
"""
import errno
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "write_json", "sha256_file"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` (the temp name keeps ``path``'s suffix), fsync, then rename to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        try:
            write(Path(tmp))
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        except (OSError, RuntimeError) as err:
            raise _write_error(err, path) from err
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _write_error(err: Exception, path: Path) -> Exception:
    """A failed write as an OSError naming the target `path` (not the temp file). torch.save reports a
    full disk as a RuntimeError of its zip writer ("PytorchStreamWriter failed writing file ... file write
    failed"); that becomes OSError(ENOSPC). Other RuntimeErrors are returned unchanged."""
    if isinstance(err, OSError):
        return OSError(err.errno, err.strerror or str(err), str(path))
    text = str(err)
    if "PytorchStreamWriter" in text or "inline_container" in text or "file write failed" in text:
        return OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (torch could not write the file)", str(path))
    return err


def atomic_write_bytes(path, data: bytes) -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_text(path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def _jsonable(value: Any):
    """JSON fallback: tensors as lists, anything else (paths, devices, ...) as its text."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _strict(value):
    """`value` with NaN and infinite floats as None: JSON has no such numbers (json.dumps would write
    `NaN`, which is not JSON). Whoever records a number that can be non-finite says why it is null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def write_json(path, obj) -> Path:
    """Write ``obj`` as indented, valid JSON (tensors as lists, other objects as text, NaN/inf as null)
    atomically."""
    text = json.dumps(_strict(json.loads(json.dumps(obj, default=_jsonable))), indent=2, allow_nan=False)
    return atomic_write_text(path, text + "\n")


_SHA_CACHE: dict = {}


def sha256_file(path, *, cached: bool = True) -> str:
    """Hex sha256 of a file (memoised on path, size, mtime, inode and ctime unless ``cached=False``, as for
    a check against tampering)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    if not cached:
        _SHA_CACHE.pop(key, None)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]
