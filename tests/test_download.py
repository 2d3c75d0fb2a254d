"""Dataset download without network: torchvision's URLs/md5s are pointed at a local HTTP server on
127.0.0.1 serving tiny but valid archives (or at a closed port for "offline")."""
import functools
import gzip
import hashlib
import http.server
import io
import os
import pickle
import socket
import struct
import sys
import tarfile
import tempfile
import threading
import types
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision import datasets
from torchvision.datasets import utils as tvu

from spikingjelly_vae import data, download
from spikingjelly_vae.download import WORK_PREFIX, DownloadError, download_dataset

SHARED = Path(os.environ.get("SJVAE_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def _md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def _tree(folder: Path):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


_WRITES = None  # paths written while a test's sandbox is active (None: not recording)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT
_WRITE_EVENTS = {"os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "os.unlink", "shutil.rmtree",
                 "tempfile.mkstemp", "tempfile.mkdtemp"}


def _record_writes(event, args):
    if _WRITES is None or not args or isinstance(args[0], int):
        return
    if event == "open":
        mode, flags = args[1], args[2]
        if (mode and set(mode) & set("wax+")) or (mode is None and flags & _WRITE_FLAGS):
            _WRITES.append(os.path.abspath(args[0]))
    elif event in _WRITE_EVENTS:
        relative_to_fd = isinstance(args[-1], int) and not os.path.isabs(args[0])  # inside rmtree's own tree
        if not relative_to_fd:
            _WRITES.extend(os.path.abspath(a) for a in args[:2] if isinstance(a, (str, os.PathLike)))


sys.addaudithook(_record_writes)


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """tmp_path/root is the data root; every file-system write made during the test must lie in it
    (TMPDIR and HOME point at tmp_path/outside so that a write there would show)."""
    global _WRITES
    outside = tmp_path / "outside"
    outside.mkdir()
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TMPDIR", str(outside))
    monkeypatch.setenv("HOME", str(outside))
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.setattr(download, "RETRY_WAIT_S", 0.0)  # retries without the pause
    root = tmp_path / "root"
    _WRITES = []
    try:
        yield root
        writes = [w for w in _WRITES if not str(w).startswith(str(tmp_path / "served"))]  # the test's own
    finally:
        _WRITES = None
    assert [w for w in writes if not Path(w).is_relative_to(root) and Path(w) != root] == []
    assert _tree(outside) == []
    assert not list(root.glob(WORK_PREFIX + "*"))  # no working folder left behind


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """(base URL, folder it serves) of an HTTP server on 127.0.0.1."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(_QuietHandler, directory=folder)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/", folder
    srv.shutdown()
    srv.server_close()
    thread.join()


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"  # nothing listens there: connection refused, like no network


# --- tiny MNIST: idx files, gzipped ---------------------------------------------------------------
def _idx(array: np.ndarray) -> bytes:
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def _mnist_archives(n=3):
    rng = np.random.default_rng(0)
    out = {}
    for prefix in ("train", "t10k"):
        images = rng.integers(0, 256, (n, 28, 28), np.uint8)
        out[f"{prefix}-images-idx3-ubyte.gz"] = gzip.compress(_idx(images))
        out[f"{prefix}-labels-idx1-ubyte.gz"] = gzip.compress(_idx(np.arange(n, dtype=np.uint8) % 10))
    return out


@pytest.fixture
def mnist_server(server, monkeypatch):
    url, folder = server
    archives = _mnist_archives()
    for name, blob in archives.items():
        (folder / name).write_bytes(blob)
    monkeypatch.setattr(datasets.MNIST, "mirrors", [_closed_port_url(), url])  # first mirror down
    monkeypatch.setattr(datasets.MNIST, "resources", [(n, _md5(b)) for n, b in archives.items()])
    return folder, archives


def test_mnist_download_then_load_then_reuse(sandbox, mnist_server, monkeypatch):
    lines = []
    assert download_dataset("mnist", sandbox, log=lines.append) == sandbox
    raw = ["MNIST", "MNIST/raw"] + [f"MNIST/raw/{p}-{k}-ubyte" for p in ("t10k", "train")
                                    for k in ("images-idx3", "labels-idx1")]
    assert _tree(sandbox) == raw  # decompressed idx files only, nothing else under the root
    train = data.load_dataset("mnist", "train", root=sandbox)
    assert len(train) == 3 and [train[i][1] for i in range(3)] == [0, 1, 2]
    assert train[0][0].shape == (1, 32, 32)

    def no_download(*args, **kwargs):
        raise AssertionError("a complete download was fetched again")

    monkeypatch.setattr(tvu, "download_url", no_download)
    lines.clear()
    download_dataset("mnist", sandbox, log=lines.append)
    assert lines == [f"mnist: {sandbox / 'MNIST' / 'raw'} is complete; nothing to download"]


def test_mnist_reuses_whole_files_and_a_checked_archive(sandbox, mnist_server):
    folder, archives = mnist_server
    raw = sandbox / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(gzip.decompress(archives["t10k-labels-idx1-ubyte.gz"]))
    # a .gz that torchvision left in raw/ and that passes the md5 check is unpacked, not fetched
    (raw / "train-images-idx3-ubyte.gz").write_bytes(archives["train-images-idx3-ubyte.gz"])
    for name in ("t10k-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz"):
        (folder / name).unlink()  # the server no longer has them
    download_dataset("mnist", sandbox, log=lambda s: None)
    assert len(data.load_dataset("mnist", "test", root=sandbox)) == 3
    assert len(data.load_dataset("mnist", "train", root=sandbox)) == 3


def test_offline_one_line_and_nothing_written(sandbox, monkeypatch):
    monkeypatch.setattr(datasets.FashionMNIST, "mirrors", [_closed_port_url()])
    with pytest.raises(DownloadError) as err:
        download_dataset("fashion", sandbox, log=lambda s: None)
    msg = str(err.value)
    assert "\n" not in msg and isinstance(err.value, ValueError)
    assert msg.startswith("cannot download fashion: no network (") and "--data-root" in msg
    assert "FashionMNIST/raw/" in msg
    assert not sandbox.exists()  # the root was created for the download, and removed again (empty)


def test_offline_dns_failure(sandbox, monkeypatch):
    def no_dns(*args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", no_dns)
    with pytest.raises(DownloadError, match=r"cifar10: no network \(\[Errno -3\] Temporary failure in "
                                            r"name resolution\); put cifar-10-batches-py/"):
        download_dataset("cifar10", sandbox, log=lambda s: None)


@pytest.fixture
def stalling_server():
    """(URL, connections seen, answer) of a server that accepts, sends `answer` (b"" by default: nothing) and
    never sends more."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.05)
    held, answer, done = [], [], threading.Event()

    def serve():
        while not done.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            held.append(conn)
            conn.sendall(b"".join(answer))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}/", held, answer
    done.set()
    thread.join()
    srv.close()
    for conn in held:
        conn.close()


@pytest.mark.parametrize("answer", [b"", b"HTTP/1.0 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"\0" * 10])
def test_stalling_server_times_out_after_bounded_tries(sandbox, stalling_server, monkeypatch, answer):
    """A server that accepts and never answers (or stops mid-file) fails after TRIES timeouts, with one line,
    and leaves no partial file."""
    url, held, send = stalling_server
    send.append(answer)
    monkeypatch.setattr(download, "TIMEOUT_S", 0.2)
    monkeypatch.setattr(datasets.MNIST, "mirrors", [url])
    result = []

    def run():
        try:
            download_dataset("mnist", sandbox, log=lambda s: None)
        except DownloadError as err:
            result.append(str(err))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(60)  # a hang shows as a live thread, not as a stuck test run
    assert not worker.is_alive(), "download hung on a server that never answers"
    assert result and "\n" not in result[0]
    assert result[0].startswith(f"cannot download mnist: {url}train-images-idx3-ubyte.gz did not answer within "
                                f"0.2 s ({download.TRIES} tries); run again later, or put MNIST/raw/")
    assert len(held) == download.TRIES * (2 if answer else 1)  # torchvision asks HEAD (redirects), then GET
    assert not sandbox.exists()  # no partial file: the root made for the download is removed again


def test_http_error_names_the_file_to_fetch_by_hand(sandbox, server, monkeypatch):
    url, _ = server  # serves an empty folder: 404
    monkeypatch.setattr(datasets.MNIST, "mirrors", [url])
    with pytest.raises(DownloadError, match=r"HTTP 404 from .*train-images-idx3-ubyte.gz; download "
                                            r"train-images-idx3-ubyte.gz by hand and put it at .*MNIST/raw/"):
        download_dataset("mnist", sandbox, log=lambda s: None)


def test_corrupt_transfer_is_not_kept(sandbox, mnist_server):
    folder, archives = mnist_server
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(archives["t10k-labels-idx1-ubyte.gz"][:-5])
    with pytest.raises(DownloadError, match=r"t10k-labels-idx1-ubyte.gz from http://127.0.0.1:\d+/"
                                            r"t10k-labels-idx1-ubyte.gz does not match torchvision's md5"):
        download_dataset("mnist", sandbox, log=lambda s: None)
    assert _tree(sandbox / "MNIST" / "raw") == ["t10k-images-idx3-ubyte", "train-images-idx3-ubyte",
                                                "train-labels-idx1-ubyte"]  # only whole, checked files
    with pytest.raises(ValueError, match="missing"):
        data.load_dataset("mnist", "test", root=sandbox)


def test_corrupt_files_in_place_are_named_never_deleted(sandbox, mnist_server):
    download_dataset("mnist", sandbox, log=lambda s: None)
    images = sandbox / "MNIST" / "raw" / "train-images-idx3-ubyte"
    whole = images.read_bytes()
    images.write_bytes(whole[:-100])  # an interrupted copy
    with pytest.raises(DownloadError, match=f"^{images} is incomplete or corrupt .*header says "
                                            f"{len(whole)}.*; delete it and run again with --download$"):
        download_dataset("mnist", sandbox, log=lambda s: None)
    assert images.stat().st_size == len(whole) - 100
    images.unlink()
    partial = sandbox / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"  # a torchvision download cut short
    partial.write_bytes(b"\x1f\x8b\x08")
    with pytest.raises(DownloadError, match=f"^{partial} is incomplete or corrupt \\(md5 "):
        download_dataset("mnist", sandbox, log=lambda s: None)
    assert partial.read_bytes() == b"\x1f\x8b\x08"


@pytest.mark.skipif(not (SHARED / "MNIST" / "raw").is_dir(), reason="shared data not found")
def test_complete_shared_copy_is_reused_without_writing(monkeypatch):
    monkeypatch.setattr(tvu, "download_url", None)  # any fetch would fail
    before = _tree(SHARED / "MNIST")
    lines = []
    download_dataset("mnist", SHARED, log=lines.append)
    assert lines[-1].endswith("is complete; nothing to download") and _tree(SHARED / "MNIST") == before


# --- tiny CIFAR-10: python batches in a tar.gz -------------------------------------------------------
def _cifar10_tarball(n=2):
    rng = np.random.default_rng(1)
    files = {f"data_batch_{i}": {"data": rng.integers(0, 256, (n, 3072), np.uint8), "labels": [i % 10] * n}
             for i in range(1, 6)}
    files["test_batch"] = {"data": rng.integers(0, 256, (n, 3072), np.uint8), "labels": list(range(n))}
    files["batches.meta"] = {"label_names": list(data.CIFAR10_CLASSES)}
    blobs = {k: pickle.dumps(v) for k, v in files.items()}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, blob in blobs.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    return buf.getvalue(), {k: _md5(b) for k, b in blobs.items()}


@pytest.fixture
def cifar_server(server, monkeypatch):
    url, folder = server
    tgz, md5s = _cifar10_tarball()
    (folder / "cifar-10-python.tar.gz").write_bytes(tgz)
    monkeypatch.setattr(datasets.CIFAR10, "url", url + "cifar-10-python.tar.gz")
    monkeypatch.setattr(datasets.CIFAR10, "tgz_md5", _md5(tgz))
    monkeypatch.setattr(datasets.CIFAR10, "train_list", [[f"data_batch_{i}", md5s[f"data_batch_{i}"]]
                                                         for i in range(1, 6)])
    monkeypatch.setattr(datasets.CIFAR10, "test_list", [["test_batch", md5s["test_batch"]]])
    monkeypatch.setattr(datasets.CIFAR10, "meta", {**datasets.CIFAR10.meta, "md5": md5s["batches.meta"]})
    return folder


def test_cifar10_download_load_reuse_and_corrupt_batch(sandbox, cifar_server, monkeypatch):
    download_dataset("cifar10", sandbox, log=lambda s: None)
    assert _tree(sandbox)[0] == "cifar-10-batches-py" and len(_tree(sandbox)) == 8  # no archive kept
    train, test = (data.load_dataset("cifar10", s, root=sandbox) for s in ("train", "test"))
    assert (len(train), len(test)) == (10, 2) and [test[i][1] for i in range(2)] == [0, 1]
    assert test[0][0].shape == (3, 32, 32)
    monkeypatch.setattr(tvu, "download_url", None)  # reused: any fetch would fail
    lines = []
    download_dataset("cifar10", sandbox, log=lines.append)
    assert lines == [f"cifar10: {sandbox / 'cifar-10-batches-py'} is complete; nothing to download"]
    batch = sandbox / "cifar-10-batches-py" / "data_batch_3"
    expected = (f"^{batch.parent} is incomplete or corrupt \\(its data_batch_3 is missing or fails "
                "torchvision's md5\\); delete it")
    for damage in (lambda: batch.write_bytes(batch.read_bytes()[:50]), batch.unlink):
        damage()
        with pytest.raises(DownloadError, match=expected):
            download_dataset("cifar10", sandbox, log=lambda s: None)


def test_cifar10_archive_missing_a_batch(sandbox, cifar_server, monkeypatch):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:  # right md5 (patched), but test_batch is absent
        info = tarfile.TarInfo("cifar-10-batches-py/readme")
        tf.addfile(info, io.BytesIO(b""))
    (cifar_server / "cifar-10-python.tar.gz").write_bytes(buf.getvalue())
    monkeypatch.setattr(datasets.CIFAR10, "tgz_md5", _md5(buf.getvalue()))
    with pytest.raises(DownloadError, match="^downloaded cifar-10-python.tar.gz is corrupt .*not kept"):
        download_dataset("cifar10", sandbox, log=lambda s: None)
    assert not sandbox.exists()


def test_cifar10_other_layout_is_used_without_fetching(sandbox, monkeypatch):
    (sandbox / "cifar10_jpeg_q75").mkdir(parents=True)
    (sandbox / "cifar10_jpeg_q75" / "CIFAR-10-images.tar.gz").write_bytes(b"")
    monkeypatch.setattr(tvu, "download_url", None)
    lines = []
    download_dataset("cifar10", sandbox, log=lines.append)
    assert "nothing downloaded" in lines[-1] and "another --data-root" in lines[-1]


# --- CelebA: Google Drive through gdown (a stand-in module here) ---------------------------------
def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (178, 218), (90, 120, 150)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def fake_drive(monkeypatch):
    """CelebA's file list pointed at in-memory files; `gdown.download` serves them or raises `drive.fail`."""
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as zf:
        for i in (1, 2, 162771):
            zf.writestr(f"img_align_celeba/{i:06d}.jpg", _jpeg_bytes())
    files = {"img_align_celeba.zip": zbuf.getvalue(), "list_eval_partition.txt": b"000001.jpg 0\n"}
    monkeypatch.setattr(datasets.CelebA, "file_list", [(f"id-{n}", _md5(b), n) for n, b in files.items()])
    drive = types.SimpleNamespace(fail=None, calls=[])

    def download(id, output, quiet, use_cookies):
        drive.calls.append(id)
        assert use_cookies is False  # gdown would otherwise write ~/.cache/gdown/cookies
        if drive.fail:
            raise drive.fail
        Path(output).write_bytes(files[id[3:]])
        return output

    monkeypatch.setitem(sys.modules, "gdown", types.SimpleNamespace(download=download))
    return drive


def test_celeba_download_load_and_reuse(sandbox, fake_drive):
    download_dataset("celeba", sandbox, log=lambda s: None)
    assert fake_drive.calls == ["id-list_eval_partition.txt", "id-img_align_celeba.zip"]  # small first
    assert _tree(sandbox / "celeba") == ["img_align_celeba", "img_align_celeba.zip",
                                         "img_align_celeba/000001.jpg", "img_align_celeba/000002.jpg",
                                         "img_align_celeba/162771.jpg", "list_eval_partition.txt"]
    ds = data.load_dataset("celeba", "train", root=sandbox)
    assert len(ds) == 2 and ds[0][0].shape == (3, 64, 64) and ds[0][1] == 0
    download_dataset("celeba", sandbox, log=lambda s: None)
    assert len(fake_drive.calls) == 2


def test_celeba_quota_and_missing_gdown(sandbox, fake_drive, monkeypatch):
    fake_drive.fail = RuntimeError("Too many users have viewed or downloaded this file recently.\nTry later")
    with pytest.raises(DownloadError) as err:
        download_dataset("celeba", sandbox, log=lambda s: None)
    msg = str(err.value)
    assert "\n" not in msg and "Too many users" in msg and "daily quota" in msg
    assert f"unzip it into {sandbox / 'celeba'}" in msg and "by hand (https://mmlab" in msg
    assert not sandbox.exists()
    monkeypatch.setitem(sys.modules, "gdown", None)  # not installed
    with pytest.raises(DownloadError, match=r"needs the gdown package \(pip install 'spikingjelly-vae\[celeba\]'\); or download"):
        download_dataset("celeba", sandbox, log=lambda s: None)


def test_bad_arguments(tmp_path):
    with pytest.raises(DownloadError, match="unknown dataset 'svhn'"):
        download_dataset("svhn", tmp_path)
    (tmp_path / "afile").write_text("")
    with pytest.raises(DownloadError, match="is not a folder"):
        download_dataset("mnist", tmp_path / "afile")


def test_folder_appearing_meanwhile_is_not_overwritten(sandbox, cifar_server, monkeypatch):
    real = tvu.download_url

    def racing_download(*args, **kwargs):  # another process finishes first
        (sandbox / "cifar-10-batches-py").mkdir(parents=True)
        (sandbox / "cifar-10-batches-py" / "theirs").write_text("x")
        return real(*args, **kwargs)

    monkeypatch.setattr(tvu, "download_url", racing_download)
    with pytest.raises(DownloadError, match="cifar-10-batches-py appeared during the download"):
        download_dataset("cifar10", sandbox, log=lambda s: None)
    assert _tree(sandbox) == ["cifar-10-batches-py", "cifar-10-batches-py/theirs"]
