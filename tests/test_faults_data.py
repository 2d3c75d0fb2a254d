"""Data, caches and a full disk through the real CLI (`python -m spikingjelly_vae.cli` in a subprocess): labels
are checked before training or evaluation; caches are checked by content and rebuilt with a warning when they
disagree; a full disk gives one "no space left on <path>" line and leaves the earlier files intact."""
import json
import os
import shutil
import tarfile
import warnings
from pathlib import Path

import pytest
import torch
from test_faults_files import MSE, SHARED, TINY, one_line, sjvae

from spikingjelly_vae import data

pytestmark = pytest.mark.skipif(not (SHARED / "MNIST").is_dir(), reason="shared data not found")

# torch.save reports a full disk as a RuntimeError of its zip writer; this makes every torch.save fail so
TORCH_DISK_FULL = """
import torch
_Writer = torch._C.PyTorchFileWriter
class _Full:
    def __init__(self, *a, **k): self._w = _Writer(*a, **k)
    def write_record(self, *a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")
    def __getattr__(self, name): return getattr(self._w, name)
torch._C.PyTorchFileWriter = _Full
"""
# ... and every text write (JSON, CSV rewrites) fail with ENOSPC
TEXT_DISK_FULL = """
import errno, os, pathlib
def _full(self, *a, **k): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
pathlib.Path.write_text = _full
"""


def _mnist_copy(tmp_path, edit_labels):
    """A data root whose MNIST t10k labels went through `edit_labels(header bytes, labels bytes)`."""
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        (raw / name).symlink_to(SHARED / "MNIST" / "raw" / name)
    content = (SHARED / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").read_bytes()
    header, labels = edit_labels(bytearray(content[:8]), bytearray(content[8:]))
    (raw / "t10k-labels-idx1-ubyte").write_bytes(bytes(header + labels))
    return tmp_path / "data"


def _label_out_of_range(header, labels):
    labels[5] = 200
    return header, labels


def _one_label_missing(header, labels):
    header[4:8] = (len(labels) - 1).to_bytes(4, "big")
    return header, labels[:-1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "run"
    res = sjvae("train", "--out", out, "--epochs", 1, *TINY)
    assert res.returncode == 0, res.stderr
    return out


# ------------------------------------------------------------------------------------------- 2. data
@pytest.mark.parametrize("edit,expect", [(_label_out_of_range, "label 200 of image 5 is outside 0..9"),
                                         (_one_label_missing, "10000 images but 9999 labels")])
def test_bad_labels_refused_before_training_and_evaluation(run, tmp_path, edit, expect):
    root = _mnist_copy(tmp_path, edit)
    args = [a if a != SHARED else root for a in TINY]
    assert expect in one_line(sjvae("train", "--out", tmp_path / "r", "--epochs", 1, *args))
    assert not (tmp_path / "r" / "last.pt").exists()
    msg = one_line(sjvae("evaluate", "--checkpoint", run / "last.pt", *[a if a != SHARED else root for a in MSE],
                         "--output", tmp_path / "e.json"))
    assert expect in msg and not (tmp_path / "e.json").exists()


# ------------------------------------------------------------------------------------------ 3. caches
def test_tampered_resident_cache_is_rebuilt(tmp_path):
    cache = tmp_path / "cache"
    args = ["--epochs", 1, "--data-on-gpu", "--device", "cpu", "--cache-dir", cache, *TINY]
    assert sjvae("train", "--out", tmp_path / "a", *args).returncode == 0
    path = next((cache / "resident").glob("mnist-test-*.pt"))
    entry = torch.load(path, weights_only=True)
    entry["images"][:32] = 255 - entry["images"][:32]  # the images the run tests on; metadata kept
    torch.save(entry, path)
    res = sjvae("train", "--out", tmp_path / "b", *args)
    assert res.returncode == 0, res.stderr
    assert "rebuilding the resident-data cache" in res.stderr and "payload sha256 differs" in res.stderr
    assert _numbers(tmp_path / "a") == _numbers(tmp_path / "b")
    assert torch.equal(torch.load(path, weights_only=True)["images"][:32], 255 - entry["images"][:32])


def _numbers(run):
    """log.csv up to its timing columns (the first eight columns of the header and each row)."""
    return [line.split(",")[:8] for line in (run / "log.csv").read_text().splitlines()]


def _tarball(path, colour, fmt="BMP", compress=True):
    """A CIFAR-10-images tarball, 3 images per class and split; BMP files have one size whatever the colour."""
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    img = path.parent / "img.jpg"
    Image.new("RGB", (32, 32), colour).save(img, format=fmt)
    with tarfile.open(path, "w:gz" if compress else "w") as tf:
        for split in ("train", "test"):
            for cls in data.CIFAR10_CLASSES:
                for k in range(3):
                    tf.add(img, f"CIFAR-10-images/{split}/{cls}/{k:04d}.jpg")
    img.unlink()
    return path


def test_cifar_cache_tree_with_deleted_or_changed_files_is_rebuilt(tmp_path):
    root = tmp_path / "root"
    _tarball(root / data.CIFAR10_TARBALL, (9, 99, 199))
    cache = tmp_path / "cache"
    args = ["--dataset", "cifar10", "--epochs", 1, "--cache-dir", cache,
            *[a if a != SHARED else root for a in TINY]]
    assert sjvae("train", "--out", tmp_path / "a", *args).returncode == 0
    tree = cache / "cifar10" / "CIFAR-10-images"
    (tree / "test" / "cat" / "0001.jpg").unlink()
    (tree / "train" / "dog" / "0000.jpg").write_bytes(b"rot")
    res = sjvae("train", "--out", tmp_path / "b", *args)
    assert res.returncode == 0, res.stderr
    assert "rebuilding the extraction cache" in res.stderr
    assert (tree / "test" / "cat" / "0001.jpg").is_file() and (tree / "train" / "dog" / "0000.jpg").stat().st_size > 3
    assert _numbers(tmp_path / "a") == _numbers(tmp_path / "b")


def test_swapped_tarball_with_same_name_size_and_mtime_is_extracted_again(tmp_path):
    root, cache = tmp_path / "root", tmp_path / "cache"
    old = _tarball(tmp_path / "old" / data.CIFAR10_TARBALL, (0, 0, 0), compress=False)
    new = _tarball(tmp_path / "new" / data.CIFAR10_TARBALL, (255, 255, 255), compress=False)
    assert old.stat().st_size == new.stat().st_size and old.read_bytes() != new.read_bytes()
    tarball = root / data.CIFAR10_TARBALL
    root.mkdir()
    shutil.copyfile(old, tarball)
    st = tarball.stat()
    first = data.load_dataset("cifar10", "test", root, cache)[0][0]
    shutil.copyfile(new, tarball)  # same name, same size, and the mtime set back
    os.utime(tarball, ns=(st.st_atime_ns, st.st_mtime_ns))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        second = data.load_dataset("cifar10", "test", root, cache)[0][0]
    assert float(first.mean()) == -1.0 and float(second.mean()) == 1.0
    assert any("another archive" in str(w.message) for w in seen)


# ------------------------------------------------------------------------------------- 5. full disk
def _no_temp_files(folder):
    return not [p for p in Path(folder).rglob(".*.tmp*")]


def test_full_disk_during_training_keeps_the_previous_checkpoint(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = {name: (copy / name).read_bytes() for name in ("last.pt", "best.pt")}
    rows = (copy / "log.csv").read_text().splitlines()
    msg = one_line(sjvae("train", "--resume", "--out", copy, "--epochs", 2, code=TORCH_DISK_FULL), code=1)
    assert msg.startswith(f"Error: no space left on {copy / 'last.pt'}"), msg
    assert {name: (copy / name).read_bytes() for name in before} == before
    assert (copy / "log.csv").read_text().splitlines() == rows
    assert _no_temp_files(copy) and not (copy / ".lock").exists()
    res = sjvae("train", "--resume", "--out", copy, "--epochs", 2)  # space again: it goes on
    assert res.returncode == 0, res.stderr


def test_full_disk_for_json_outputs(run, tmp_path):
    out = tmp_path / "e.json"
    assert sjvae("evaluate", "--checkpoint", run / "last.pt", *MSE, "--output", out).returncode == 0
    kept = out.read_bytes()
    msg = one_line(sjvae("evaluate", "--checkpoint", run / "last.pt", *MSE, "--output", out, "--force",
                         code=TEXT_DISK_FULL), code=1)
    assert f"no space left on {out}" in msg and out.read_bytes() == kept and _no_temp_files(tmp_path)
    repro = tmp_path / "repro"
    msg = one_line(sjvae("reproduce", "--dataset", "mnist", "--models", "esvae", "--out", repro, "--quick",
                         "--data-root", SHARED, "--device", "cpu", code=TEXT_DISK_FULL), code=1)
    assert "no space left on" in msg and "reproduce.json" in msg


def test_full_disk_for_prior_fit_and_resident_cache(run, tmp_path):
    out = tmp_path / "p.pt"
    msg = one_line(sjvae("prior", "fit", "--checkpoint", run / "last.pt", "--components", 2, "--max-images", 32,
                         "--data-root", SHARED, "--out", out, code=TORCH_DISK_FULL), code=1)
    assert f"no space left on {out}" in msg and not out.exists() and _no_temp_files(tmp_path)
    cache = tmp_path / "cache"
    msg = one_line(sjvae("train", "--out", tmp_path / "r", "--epochs", 1, "--data-on-gpu", "--device", "cpu",
                         "--cache-dir", cache, *TINY, code=TORCH_DISK_FULL), code=1)
    assert "no space left on" in msg and "resident" in msg and _no_temp_files(cache)
    assert not (tmp_path / "r" / ".lock").exists()


def test_tampered_statistics_cache_is_recomputed(tmp_path):
    """FID/FAD reference statistics caches (metrics/resources.py) carry a digest of their arrays."""
    import numpy as np

    from spikingjelly_vae.metrics.resources import load_npz_cache, save_npz_atomic
    proto = {"metric": "fid", "num": "all"}
    path = save_npz_atomic(tmp_path / "s.npz", mu=np.zeros(3), sigma=np.eye(3), count=np.int64(5),
                           protocol=np.array(json.dumps(proto, sort_keys=True)))
    assert load_npz_cache(path, proto)["count"] == 5 and load_npz_cache(path, {"other": 1}) is None
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["mu"] = arrays["mu"] + 1  # an edited mean, the old digest kept
    np.savez(path, **arrays)
    with pytest.warns(UserWarning, match="payload sha256 differs"):
        assert load_npz_cache(path, proto) is None
    path.write_bytes(b"rot")
    with pytest.warns(UserWarning, match="does not load"):
        assert load_npz_cache(path, proto) is None


def test_cifar_batches_that_are_not_the_official_files(tmp_path):
    """torchvision unpickles cifar-10-batches-py only after its md5 check; a failed check is one line."""
    batches = tmp_path / "root" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    (batches / "test_batch").write_bytes(b"\x80\x04not the official batch")
    msg = one_line(sjvae("train", "--dataset", "cifar10", "--out", tmp_path / "r", "--epochs", 1,
                         *[a if a != SHARED else tmp_path / "root" for a in TINY]))
    assert "md5 check failed" in msg and not (tmp_path / "r" / "last.pt").exists()
