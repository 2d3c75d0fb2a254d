"""Faults: resume, run folders, caches and inputs. The crash cases run the real CLI in a subprocess and kill it
from the outside (kill -9 once its progress is seen on disk), or leave a run folder as a kill between an
epoch's writes leaves it; then resume and compare with an uninterrupted run bit for bit.
Tiny runs: MNIST 64/32 images, batch 16, ESVAE hidden=(4,4,8,8), T=4, latent 8."""
import csv
import errno
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from spikingjelly_vae import data
from spikingjelly_vae.checkpoint import load_checkpoint
from spikingjelly_vae.cli import main

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SJVAE_TEST_DATA", REPO.parent / "shared" / "data"))
pytestmark = pytest.mark.skipif(not (SHARED / "MNIST").is_dir(), reason="shared data not found")
TINY = ["--data-root", str(SHARED), "--batch-size", "16", "--T", "4", "--latent-dim", "8", "--train-subset", "64",
        "--test-subset", "32", "--grid-images", "8", "--model-opt", "hidden=(4,4,8,8)", "--no-progress",
        "--no-tensorboard"]


def invoke(*args):
    """The CLI in this process; an exception that escapes the one error path fails the test."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def sjvae(*args, env=None):
    """The real CLI in a subprocess (python -m spikingjelly_vae.cli), one thread as in this process."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "spikingjelly_vae.cli", *[str(a) for a in args]], env=full_env,
                          capture_output=True, text=True, timeout=300)


def one_line_error(res, code=2):
    """The command failed with `code` (2: bad input, 1: a file it cannot read or write) and one `Error:` line."""
    assert res.exit_code == code, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert "Traceback" not in res.output and len(errors) == 1, res.output
    return errors[0]


@pytest.fixture(autouse=True)
def _one_thread_everywhere(one_thread):
    yield


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A finished 1-epoch MNIST run (its last.pt)."""
    out = tmp_path_factory.mktemp("faults") / "run"
    assert invoke("train", "--out", out, "--epochs", 1, *TINY).exit_code == 0
    return out / "last.pt"


def _rows(out):
    return [int(line.split(",")[0]) for line in (out / "log.csv").read_text().strip().splitlines()[1:]]


def _log_numbers(out):
    """log.csv without its timing columns."""
    with (out / "log.csv").open(newline="") as f:
        return [{k: v for k, v in r.items() if k not in ("images_per_s", "epoch_seconds")} for r in csv.DictReader(f)]


def _same_weights(a, b):
    sa, sb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# 1. --resume with other hyper-parameters: refused (naming --force / --out); recorded == run
@pytest.mark.parametrize("change", [["--lr", "0.5"], ["--lambda", "100"], ["--weight-decay", "0.5"],
                                    ["--model-opt", "half_width=0.25"]])
def test_resume_refuses_changed_hyper_parameters(ckpt, change):
    out = ckpt.parent
    before = (out / "train_config.json").read_bytes(), ckpt.read_bytes()
    msg = one_line_error(invoke("train", "--resume", "--out", out, "--epochs", 2, *change))
    assert "--force" in msg and "--out" in msg and "continues" in msg
    assert ((out / "train_config.json").read_bytes(), ckpt.read_bytes()) == before  # nothing recorded


def _nan_at(monkeypatch, call):
    from spikingjelly_vae.models.esvae import ESVAE
    real, calls = ESVAE.loss, {"n": 0}

    def loss(self, x, o):
        terms = real(self, x, o)
        if self.training:
            calls["n"] += 1
            if calls["n"] == call:
                terms["loss"] = terms["loss"] * float("nan")
        return terms
    monkeypatch.setattr(ESVAE, "loss", loss)


def test_nan_advice_is_true(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _nan_at(monkeypatch, 6)  # epoch 2, step 6
    msg = one_line_error(invoke("train", "--out", out, "--epochs", 2, *TINY))
    assert "became nan at epoch 2" in msg and "--force or another --out" in msg and "--resume continues" not in msg
    monkeypatch.undo()
    res = invoke("train", "--out", out, "--epochs", 2, "--force", "--lr", "0.001", *TINY)  # what it advises
    assert res.exit_code == 0, res.output
    assert load_checkpoint(out / "last.pt")["train_config"]["lr"] == 0.001
    assert json.loads((out / "train_config.json").read_text())["train_config"]["lr"] == 0.001


# 7. NaN before any checkpoint: no circle between "drop --resume" and "pass --resume or --force"
def test_nan_before_first_checkpoint_then_plain_rerun(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _nan_at(monkeypatch, 2)
    msg = one_line_error(invoke("train", "--out", out, "--epochs", 1, *TINY))
    assert "no checkpoint was written yet" in msg and "rerun the command" in msg
    monkeypatch.undo()
    msg = one_line_error(invoke("train", "--out", out, "--resume"))
    assert "without --resume" in msg
    res = invoke("train", "--out", out, "--epochs", 1, *TINY)  # the plain rerun it advises works
    assert res.exit_code == 0, res.output


# 2. a kill between an epoch's writes: resume redoes best.pt, the log row and the grids; ends bitwise equal
def _cut_between_writes(full, cut, point):
    """`cut`: the folder a kill right after epoch 2's `point` write (last.pt or log.csv) leaves: `full` after
    epoch 2 (same seed, same numbers), without that epoch's later writes."""
    shutil.copytree(full, cut)
    rows = (cut / "log.csv").read_text().splitlines()
    (cut / "log.csv").write_text("\n".join(rows[:2 if point == "last.pt" else 3]) + "\n")
    for grid in (cut / "images").glob("*_epoch0002.png"):
        grid.unlink()
    if point == "last.pt":
        shutil.copyfile(cut / "checkpoints" / "epoch0001.pt", cut / "best.pt")  # best.pt of epoch 1
    (cut / "checkpoints" / "epoch0002.pt").unlink()
    (cut / ".lock").write_text("999999999\n")  # the lock of a dead process


@pytest.mark.parametrize("point", ["last.pt", "log.csv"])
def test_kill_between_epoch_writes_then_resume(tmp_path, point):
    full, two, cut = tmp_path / "full", tmp_path / "two", tmp_path / "cut"
    assert invoke("train", "--out", full, "--epochs", 3, *TINY).exit_code == 0
    assert invoke("train", "--out", two, "--epochs", 2, "--keep-every", 1, *TINY).exit_code == 0
    _cut_between_writes(two, cut, point)
    assert load_checkpoint(cut / "last.pt")["epoch"] == 2 and not (cut / "images" / "recon_epoch0002.png").exists()
    assert _rows(cut) == ([1] if point == "last.pt" else [1, 2])
    losses = [float(r["test_loss"]) for r in _log_numbers(full)]
    assert losses[1] < losses[0]  # epoch 2 improved: after a kill at last.pt@2, best.pt must be redone
    assert load_checkpoint(cut / "best.pt")["epoch"] == (1 if point == "last.pt" else 2)
    stale = cut / ".best.pt.k1ll3d.tmp.pt"  # what a kill during best.pt's atomic write leaves
    stale.write_bytes(os.urandom(1 << 20))
    res = invoke("train", "--out", cut, "--resume", "--epochs", 3, "--keep-every", 0)
    assert res.exit_code == 0, res.output
    assert not stale.exists() and not (cut / ".lock").exists()
    assert _rows(cut) == [1, 2, 3]
    assert _log_numbers(cut) == _log_numbers(full)
    for name in ("last.pt", "best.pt"):
        assert _same_weights(full / name, cut / name), name
        assert load_checkpoint(full / name)["epoch"] == load_checkpoint(cut / name)["epoch"]
    assert sorted(p.name for p in (cut / "images").iterdir()) == sorted(p.name for p in (full / "images").iterdir())
    grid = Path("images") / "recon_epoch0002.png"
    assert (cut / grid).read_bytes() == (full / grid).read_bytes()


def test_kill_9_after_an_epochs_checkpoint_then_resume(tmp_path):
    """kill -9 as soon as epoch 2's last.pt is seen (wherever the process then is), then --resume."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert invoke("train", "--out", full, "--epochs", 3, *TINY).exit_code == 0
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "spikingjelly_vae.cli", "train", "--out", str(cut), "--epochs",
                             "3", *TINY], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None and not _epoch_at_least(cut / "last.pt", 2):
            time.sleep(0.005)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -9 and load_checkpoint(cut / "last.pt")["epoch"] >= 2
    res = invoke("train", "--out", cut, "--resume", "--epochs", 3)
    assert res.exit_code == 0, res.output
    assert _rows(cut) == [1, 2, 3] and _log_numbers(cut) == _log_numbers(full)
    for name in ("last.pt", "best.pt"):
        assert _same_weights(full / name, cut / name), name


def _epoch_at_least(path, epoch):
    try:
        return load_checkpoint(path)["epoch"] >= epoch
    except Exception:  # not there yet
        return False


def test_second_writer_is_refused(ckpt, tmp_path):
    out = ckpt.parent
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(f"{holder.pid}\n")
        msg = one_line_error(invoke("train", "--out", out, "--resume", "--epochs", 1))
        assert f"in use by process {holder.pid}" in msg
    finally:
        holder.kill()
        holder.wait()
    res = invoke("train", "--out", out, "--resume", "--epochs", 1)  # its pid is dead now: taken over
    assert res.exit_code == 0, res.output
    assert not (out / ".lock").exists()


# 3. a checkpoint evaluated or compared on another dataset
def test_dataset_mismatch_refused_or_marked(ckpt, tmp_path):
    args = ["evaluate", "--checkpoint", ckpt, "--metrics", "mse", "--mse-num", 16, "--mse-batch", 8,
            "--data-root", SHARED]
    msg = one_line_error(invoke(*args, "--dataset", "fashion", "--output", tmp_path / "x.json"))
    assert "trained on mnist" in msg and "--allow-dataset-mismatch" in msg and not (tmp_path / "x.json").exists()
    res = invoke(*args, "--dataset", "fashion", "--allow-dataset-mismatch", "--output", tmp_path / "m.json")
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["dataset"] == "fashion" and saved["checkpoint_dataset"] == "mnist" and saved["dataset_mismatch"]
    msg = one_line_error(invoke("compare", tmp_path / "m.json"))
    assert "a mnist model measured on fashion" in msg
    res = invoke("compare", tmp_path / "m.json", "--allow-dataset-mismatch")
    assert res.exit_code == 0 and "DATASET MISMATCH" in res.output
    for key in ("checkpoint_dataset", "dataset_mismatch"):  # a result written before these keys existed
        del saved[key]
    (tmp_path / "old.json").write_text(json.dumps(saved))
    one_line_error(invoke("compare", tmp_path / "old.json"))  # read from the checkpoint itself


def test_compare_refuses_a_result_of_an_older_checkpoint(ckpt, tmp_path):
    """After best.pt is redone (case 2), its old evaluate JSON no longer describes it."""
    best = tmp_path / "best.pt"
    shutil.copyfile(ckpt, best)
    res = invoke("evaluate", "--checkpoint", best, "--metrics", "mse", "--mse-num", 16, "--mse-batch", 8,
                 "--data-root", SHARED)
    assert res.exit_code == 0, res.output
    assert invoke("compare", tmp_path).exit_code == 0
    torch.save({**load_checkpoint(best), "epoch": 9}, best)  # a newer best.pt
    assert "sha256 differs" in one_line_error(invoke("compare", tmp_path))


# 4. CIFAR-10 extraction cache keyed by content; corrupt archives never marked complete
def _cifar_tarball(path, per_class=3):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    img = path.parent / "img.jpg"
    Image.new("RGB", (32, 32), (9, 99, 199)).save(img)
    with tarfile.open(path, "w:gz") as tf:
        for split in ("train", "test"):
            for cls in data.CIFAR10_CLASSES:
                for k in range(per_class):
                    tf.add(img, f"CIFAR-10-images/{split}/{cls}/{k:04d}.jpg")
    img.unlink()
    return path


def test_cifar_cache_keyed_by_content(tmp_path):
    good = _cifar_tarball(tmp_path / "good" / data.CIFAR10_TARBALL)
    root = tmp_path / "root"
    tarball = root / data.CIFAR10_TARBALL
    raw = bytearray(good.read_bytes())
    raw[len(raw) // 2:len(raw) // 2 + 16] = bytes(16)  # same name and size, 16 bytes zeroed
    root.mkdir()
    tarball.write_bytes(bytes(raw))
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match=f"{data.CIFAR10_TARBALL}.* corrupt"):
        data.load_dataset("cifar10", "test", root, cache)
    assert not (cache / "cifar10" / ".complete").exists() and not list(cache.glob("cifar10.partial-*"))
    shutil.copyfile(good, tarball)  # the good file, same name and size
    assert len(data.load_dataset("cifar10", "test", root, cache)) == 30
    marker = (cache / "cifar10" / ".complete").read_text()
    assert "sha256" in marker and marker.splitlines()[0].split()[-1] in (cache / "cifar10.source").read_text()
    tarball.write_bytes(good.read_bytes()[:len(raw) // 2])  # truncated
    with pytest.raises(ValueError, match="corrupt or truncated"):
        data.load_dataset("cifar10", "test", root, cache)
    tarball.write_bytes(os.urandom(4096))  # random bytes
    with pytest.raises(ValueError, match="corrupt or truncated"):
        data.load_dataset("cifar10", "test", root, cache)
    assert not list(cache.glob("cifar10.partial-*"))


# 5. raw tracebacks -> one line and a non-zero exit
@pytest.mark.parametrize("damage", ["truncate", "magic"])
def test_corrupt_idx_files(ckpt, tmp_path, damage):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        shutil.copyfile(SHARED / "MNIST" / "raw" / name, raw / name)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (raw / name).symlink_to(SHARED / "MNIST" / "raw" / name)
    images = raw / "t10k-images-idx3-ubyte"
    content = images.read_bytes()
    images.write_bytes(content[:len(content) // 3] if damage == "truncate" else bytes(4) + content[4:])
    msg = one_line_error(invoke("evaluate", "--checkpoint", ckpt, "--metrics", "mse", "--data-root", tmp_path,
                                "--output", tmp_path / "e.json"))
    assert "corrupt or truncated" in msg


def test_checkpoint_config_not_a_dict(tmp_path):
    torch.save({"model": {}, "config": "esvae"}, tmp_path / "odd.pt")
    assert "not a spikingjelly-vae checkpoint" in one_line_error(invoke("info", "--checkpoint", tmp_path / "odd.pt"))
    with pytest.raises(ValueError):  # --debug keeps the traceback
        invoke("--debug", "info", "--checkpoint", tmp_path / "odd.pt")


def test_unwritable_outputs_fail_before_the_work(ckpt, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    msg = one_line_error(invoke("train", "--out", blocker / "run", "--epochs", 1, *TINY), code=1)
    assert "cannot read or write" in msg
    res = invoke("evaluate", "--checkpoint", ckpt, "--metrics", "mse", "--data-root", SHARED,
                 "--output", blocker / "e.json")
    assert "cannot read or write" in one_line_error(res, code=1) and "reconstruction MSE" not in res.output
    assert "cannot read or write" in one_line_error(invoke("compare", "--output", blocker / "t.json"), code=1)


def test_full_disk(tmp_path, monkeypatch):
    def full(path, write):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    monkeypatch.setattr("spikingjelly_vae.checkpoint.atomic_write", full)
    out = tmp_path / "run"
    msg = one_line_error(invoke("train", "--out", out, "--epochs", 1, *TINY), code=1)
    assert "No space left on device" in msg and "last.pt" in msg and not (out / ".lock").exists()


# 6. a metric asked for that cannot be computed: exit non-zero after writing what was computed
@pytest.mark.parametrize("metric,option", [("fid", "--inception-weights"), ("is", "--is-weights"),
                                           ("fad", "--fad-checkpoint")])
def test_requested_metric_unavailable_exits_nonzero(ckpt, tmp_path, metric, option):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(os.urandom(256))
    out = tmp_path / "e.json"
    res = invoke("evaluate", "--checkpoint", ckpt, "--metrics", f"mse,{metric}", option, bad, "--mse-num", 16,
                 "--mse-batch", 8,
                 "--num-samples", 2, "--sample-batch", 2, "--is-batch", 2, "--is-batches", 1,
                 "--data-root", SHARED, "--cache-dir", tmp_path / "cache", "--output", out)
    assert res.exit_code == 1 and "requested metrics not computed" in res.output, res.output
    saved = json.loads(out.read_text())
    assert "mse" in saved["metrics"] and metric in saved["unavailable"]


# 8. evaluate --cache-dir inside the data root
def test_evaluate_cache_inside_data_root_refused(ckpt):
    msg = one_line_error(invoke("evaluate", "--checkpoint", ckpt, "--metrics", "mse", "--data-root", SHARED,
                                "--cache-dir", SHARED / "cache"))
    assert "inside the data root" in msg and not (SHARED / "cache").exists()
