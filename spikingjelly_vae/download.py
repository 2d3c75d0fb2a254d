"""Opt-in dataset download into the data root, in the layouts `data.py` reads.

Contract for callers: call `download_dataset` only when the user asked for a download (`--download`),
with the data root the user named (`--data-root`, else env SJVAE_DATA, else ./data, as data.py). It
writes only under that root: the dataset's own files (`MNIST/raw/`, `FashionMNIST/raw/`,
`cifar-10-batches-py/`, `celeba/`) and a hidden working folder `.sjvae-download-*` that is removed
before it returns. A dataset data.py can already read is reused and nothing is fetched.

URLs, mirrors and md5s are torchvision's (`datasets.MNIST.mirrors/resources`, `datasets.CIFAR10.url/
tgz_md5`, `datasets.CelebA.file_list`); files are fetched with torchvision's `download_url` (redirects,
https->http retry, md5 check) under a socket timeout, with a bounded retry of stalled or failed
connections; CelebA with gdown (Google Drive), and archives unpacked with
torchvision's `extract_archive`. Everything is fetched and unpacked inside the working folder, checked
(md5, idx sizes), and only then renamed into place, so an interrupted or corrupt download never leaves
a tree that looks complete. A file already in place that fails its check is never deleted or
overwritten: the error names it so the user can delete it.

Every failure is a `DownloadError` (a ValueError, so the CLI prints its one-line message).
"""
from __future__ import annotations

import http.client
import os
import shutil
import socket
import struct
import tarfile
import tempfile
import time
import urllib.error
import zipfile
import zlib
from contextlib import contextmanager
from math import prod
from pathlib import Path

from torchvision import datasets
from torchvision.datasets import utils as tvu

from .dataspec import DATASETS, EMBEDDED

__all__ = ["DownloadError", "download_dataset"]

WORK_PREFIX = ".sjvae-download-"
CELEBA_PAGE = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
_IDX_ITEM_BYTES = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}  # idx type code -> bytes
TIMEOUT_S = 30.0  # a connection or read that stalls this long fails (a server that accepts and never answers)
TRIES = 3  # attempts per URL after a timeout or network failure
RETRY_WAIT_S = 2.0  # pause before the second attempt, doubled before each further one
_UNPACK_ERRORS = (OSError, EOFError, zlib.error, tarfile.TarError, zipfile.BadZipFile)


class DownloadError(ValueError):
    """A download that could not be done; the message is one line saying what to do."""


def download_dataset(name: str, root=None, *, log=print) -> Path:
    """Make sure dataset `name` is under the data root, fetching what is missing; returns the root.

    Both splits are always fetched: CIFAR-10 and CelebA come as one archive each, and torchvision's
    MNIST class wants all four idx files even to read one split. log: called with progress lines.
    """
    if name not in DATASETS:
        raise DownloadError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    root = Path(root or os.environ.get("SJVAE_DATA") or "data").expanduser()
    if name in EMBEDDED:
        log(f"{name} ships inside the package: nothing to download")
        return root
    if root.exists() and not root.is_dir():
        raise DownloadError(f"data root {str(root)!r} is not a folder; pass --data-root to a folder")
    for left in sorted(root.glob(WORK_PREFIX + "*")) if root.is_dir() else []:
        log(f"{name}: {left} is left over from an interrupted download; you may delete it")
    if name in ("mnist", "fashion"):
        _mnist_like(name, root, log)
    elif name == "cifar10":
        _cifar10(root, log)
    else:
        _celeba(root, log)
    return root


@contextmanager
def _work_folder(root: Path):
    """A fresh hidden folder inside `root` (same file system: the final move is a rename); removed after,
    and `root` too if this call created it and nothing was placed in it."""
    created = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=root))
    except OSError as e:
        raise DownloadError(f"cannot write into data root {str(root)!r} ({e.strerror}); "
                            "pass --data-root to a writable folder") from None
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if created and not any(root.iterdir()):
            root.rmdir()


def _place(src: Path, dst: Path) -> None:
    """Rename a checked file or folder into place (atomic on one file system)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        try:
            src.rename(dst)  # fails if dst appeared meanwhile: nothing is overwritten
        except OSError:
            raise DownloadError(f"{dst} appeared during the download (another download running?); "
                                "run again once it has finished") from None
    else:
        os.replace(src, dst)


def _corrupt(path: Path, why: str) -> DownloadError:
    if any(part.startswith(WORK_PREFIX) for part in path.parts):  # fetched just now, already removed
        return DownloadError(f"downloaded {path.name} is corrupt ({why}) and was not kept; run again")
    return DownloadError(f"{path} is incomplete or corrupt ({why}); delete it and run again with --download")


def _check_md5(path: Path, md5: str) -> None:
    if not tvu.check_integrity(str(path), md5):
        raise _corrupt(path, f"md5 {tvu.calculate_md5(str(path))}, torchvision expects {md5}")


def _one_line(e: BaseException) -> str:
    reason = getattr(e, "reason", None) or e
    return " ".join(str(reason).split()) or type(e).__name__


@contextmanager
def _socket_timeout(seconds: float):
    """urllib (and so torchvision's download_url) has no timeout of its own: set the socket default."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _attempt(url: str, work: Path, filename: str, md5: str):
    """One torchvision ``download_url`` of `url`: None on success, else (kind, detail); a partial file is
    removed. Kinds: timeout, network and server (HTTP 5xx) are retried; http and corrupt (md5) are not."""
    try:
        with _socket_timeout(TIMEOUT_S):
            tvu.download_url(url, str(work), filename, md5)
        return None
    except urllib.error.HTTPError as e:
        problem = ("server" if e.code >= 500 else "http", f"HTTP {e.code} from {url}")
    except RecursionError:
        problem = ("http", f"too many redirects from {url}")
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        stalled = isinstance(e, TimeoutError) or isinstance(getattr(e, "reason", None), TimeoutError)
        problem = ("timeout", f"{url} did not answer within {TIMEOUT_S:g} s") if stalled else \
            ("network", _one_line(e))
    except RuntimeError:  # download_url's md5 check failed after a complete transfer
        problem = ("corrupt", url)
    (work / filename).unlink(missing_ok=True)
    return problem


def _fetch(urls, work: Path, filename: str, md5: str, *, what: str, expect: str, hand: Path, log) -> Path:
    """`work/filename` downloaded from the first of `urls` that gives the file with torchvision's md5; a
    URL that times out or fails on the network or server side is tried ``TRIES`` times, ``RETRY_WAIT_S`` apart (doubling)."""
    problems = []
    for url in urls:
        for attempt in range(TRIES):
            if attempt:
                time.sleep(RETRY_WAIT_S * 2 ** (attempt - 1))
            log(f"downloading {url}" + (f" (try {attempt + 1} of {TRIES})" if attempt else ""))
            problem = _attempt(url, work, filename, md5)
            if problem is None:
                return work / filename
            if problem[0] not in ("timeout", "network", "server"):
                break
        problems.append(problem)
    kinds = {kind for kind, _ in problems}
    detail = {kind: d for kind, d in reversed(problems)}  # first detail of each kind
    if "corrupt" in kinds:
        raise DownloadError(f"{filename} from {detail['corrupt']} does not match torchvision's md5 {md5} "
                            f"(corrupt or truncated transfer) and was not kept; run again, or download it "
                            f"by hand and put it at {hand}")
    by_hand = f"put {expect} under a folder and pass that folder as --data-root (or set SJVAE_DATA)"
    if kinds == {"network"}:
        raise DownloadError(f"cannot download {what}: no network ({detail['network']}); {by_hand}")
    if kinds == {"timeout"}:
        raise DownloadError(f"cannot download {what}: {detail['timeout']} ({TRIES} tries); run again later, "
                            f"or {by_hand}")
    raise DownloadError(f"cannot download {what}: {'; '.join(d for _, d in problems)}; download {filename} "
                        f"by hand and put it at {hand}, or pass --data-root to a folder holding {expect}")


def _unpack(archive: Path, dest: Path) -> None:
    """torchvision's extract_archive (tar, zip or single .gz), with any failure named."""
    try:
        tvu.extract_archive(str(archive), str(dest))
    except _UNPACK_ERRORS as e:
        raise _corrupt(archive, f"cannot unpack: {_one_line(e)}") from None


# --- MNIST and Fashion-MNIST: four gzipped idx files, kept decompressed in <Folder>/raw/ ---------------
def _idx_problem(path: Path) -> str | None:
    """Why `path` is not a whole idx file (its size must match the sizes in its header), or None."""
    with open(path, "rb") as f:
        head = f.read(4)
        if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in _IDX_ITEM_BYTES:
            return "not an idx file"
        raw = f.read(4 * head[3])
    if len(raw) < 4 * head[3]:
        return "header cut short"
    expected = 4 + len(raw) + prod(struct.unpack(f">{head[3]}I", raw)) * _IDX_ITEM_BYTES[head[2]]
    size = path.stat().st_size
    return None if size == expected else f"{size} bytes where its header says {expected}"


def _mnist_like(name: str, root: Path, log) -> None:
    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    raw = root / cls.__name__ / "raw"
    missing = []
    for gz, md5 in cls.resources:
        target = raw / gz[:-3]
        if target.is_file():
            if (problem := _idx_problem(target)) is not None:
                raise _corrupt(target, problem)
        else:
            missing.append((gz, md5))
    if not missing:
        log(f"{name}: {raw} is complete; nothing to download")
        return
    expect = f"{cls.__name__}/raw/" + "{train,t10k}-{images-idx3,labels-idx1}-ubyte (decompressed)"
    with _work_folder(root) as work:
        for gz, md5 in missing:
            archive = raw / gz  # torchvision keeps the .gz here: reuse one that passes the md5 check
            if archive.is_file():
                _check_md5(archive, md5)
            else:
                archive = _fetch([m + gz for m in cls.mirrors], work, gz, md5, what=name, expect=expect,
                                 hand=raw / gz, log=log)
            _unpack(archive, work)
            out = work / gz[:-3]
            if (problem := _idx_problem(out)) is not None:
                raise _corrupt(archive, f"it unpacks to a bad idx file: {problem}")
            _place(out, raw / gz[:-3])
    log(f"{name}: {raw} is complete")


# --- CIFAR-10: torchvision's python batches, cifar-10-batches-py/ -------------------------------------
def _cifar10_files():
    cls = datasets.CIFAR10
    return [tuple(x) for x in cls.train_list + cls.test_list] + [(cls.meta["filename"], cls.meta["md5"])]


def _cifar10_other_layout(root: Path) -> Path | None:
    """A CIFAR-10 copy data.py reads besides the python batches (JPEG trees or tarball), or None."""
    candidates = [root / t / s for t in ("CIFAR-10-images", "cifar10") for s in ("train", "test")]
    candidates += [root / "CIFAR-10-images.tar.gz", root / "cifar10_jpeg_q75" / "CIFAR-10-images.tar.gz"]
    return next((p for p in candidates if p.exists()), None)


def _cifar10(root: Path, log) -> None:
    cls = datasets.CIFAR10
    folder = root / cls.base_folder
    if folder.is_dir():  # it is replaced as a whole, so a bad batch means deleting the folder
        for filename, md5 in _cifar10_files():
            if not tvu.check_integrity(str(folder / filename), md5):
                raise _corrupt(folder, f"its {filename} is missing or fails torchvision's md5")
        log(f"cifar10: {folder} is complete; nothing to download")
        return
    if (other := _cifar10_other_layout(root)) is not None:
        log(f"cifar10: data.py reads {other}; nothing downloaded (for the original python batches, "
            f"download into another --data-root)")
        return
    archive = root / cls.filename  # where torchvision leaves its archive: reuse one that passes the md5
    with _work_folder(root) as work:
        if archive.is_file():
            _check_md5(archive, cls.tgz_md5)
        else:
            archive = _fetch([cls.url], work, cls.filename, cls.tgz_md5, what="cifar10",
                             expect=f"{cls.base_folder}/ (python batches)", hand=archive, log=log)
        _unpack(archive, work / "unpacked")
        for filename, md5 in _cifar10_files():
            if not tvu.check_integrity(str(work / "unpacked" / cls.base_folder / filename), md5):
                raise _corrupt(archive, f"its {cls.base_folder}/{filename} is missing or fails its md5")
        _place(work / "unpacked" / cls.base_folder, folder)
    log(f"cifar10: {folder} is complete")


# --- CelebA: Google Drive files (torchvision's list) into celeba/ ---------------------------------------
def _celeba_by_hand(root: Path) -> str:
    return (f"download img_align_celeba.zip by hand ({CELEBA_PAGE}) and unzip it into {root / 'celeba'} "
            f"(giving celeba/img_align_celeba/; list_eval_partition.txt beside it is optional)")


def _gdrive(file_id: str, work: Path, filename: str, md5: str, root: Path, log) -> Path:
    """One CelebA file from Google Drive with gdown (no cookie file: nothing is written outside root)."""
    import gdown

    log(f"downloading {filename} from Google Drive")
    out = work / filename
    try:
        got = gdown.download(id=file_id, output=str(out), quiet=False, use_cookies=False)
    except Exception as e:  # gdown's error types differ between versions (quota, network, permission)
        raise DownloadError(f"CelebA {filename} could not be downloaded from Google Drive ({_one_line(e)}; "
                            f"often its daily quota); {_celeba_by_hand(root)}") from None
    if got is None or not tvu.check_integrity(str(out), md5):
        raise DownloadError(f"CelebA {filename} from Google Drive is missing or fails torchvision's md5 "
                            f"(often Drive's daily quota page instead of the file); {_celeba_by_hand(root)}")
    return out


def _celeba(root: Path, log) -> None:
    folders = (root / "celeba" / "img_align_celeba", root / "celeba_sample" / "img_align_celeba",
               root / "img_align_celeba")
    found = next((f for f in folders if f.is_dir() and any(f.iterdir())), None)
    if found is not None:
        log(f"celeba: data.py reads {found}; nothing to download")
        return
    try:
        import gdown  # noqa: F401
    except ImportError:
        raise DownloadError(f"downloading CelebA needs the gdown package (pip install 'spikingjelly-vae[celeba]'); "
                            f"or {_celeba_by_hand(root)}") from None
    dest = root / "celeba"
    files = sorted(datasets.CelebA.file_list, key=lambda f: f[2].endswith(".zip"))  # small files first
    with _work_folder(root) as work:
        for file_id, md5, filename in files:
            target = dest / filename
            if target.is_file():  # a file already in place is reused if it passes the md5 check
                _check_md5(target, md5)
            else:  # checked, then kept where torchvision keeps it (the zip too: a rerun reuses it)
                _place(_gdrive(file_id, work, filename, md5, root, log), target)
        zipped = dest / "img_align_celeba.zip"
        _unpack(zipped, work / "unpacked")
        if not (work / "unpacked" / "img_align_celeba").is_dir():
            raise _corrupt(zipped, "it holds no img_align_celeba/ folder")
        _place(work / "unpacked" / "img_align_celeba", dest / "img_align_celeba")  # last: marks it complete
    log(f"celeba: {dest} is complete")
