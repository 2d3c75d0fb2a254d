"""Training with the data held on the device (resident_data.py; the CPU device stands in for CUDA): the same
batches as the DataLoader path (bit-equal weights on MNIST, which has no flips) and an exact resume."""
import json
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from spikingjelly_vae import train
from spikingjelly_vae.checkpoint import load_checkpoint

SHARED = Path(os.environ.get("SJVAE_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
pytestmark = pytest.mark.skipif(not (SHARED / "MNIST").is_dir(), reason="shared data not found")


def _write_idx_head(src: Path, dst: Path, n: int) -> None:
    """The first `n` items of an idx file (header count rewritten), so a tiny split decodes fast."""
    raw = src.read_bytes()
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    item = int(np.prod(dims[1:])) if ndim > 1 else 1
    head = raw[:4] + struct.pack(f">{ndim}I", n, *dims[1:])
    dst.write_bytes(head + raw[4 + 4 * ndim:4 + 4 * ndim + n * item])


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """A data root holding the first 96 MNIST train and 40 test images, and a cache folder outside it."""
    base = tmp_path_factory.mktemp("resident")
    raw = base / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 96), ("t10k", 40)):
        for kind, d in (("images", 3), ("labels", 1)):
            name = f"{prefix}-{kind}-idx{d}-ubyte"
            _write_idx_head(SHARED / "MNIST" / "raw" / name, raw / name, n)
    return base / "data", base / "cache"


def _cfg(root, cache, out, **kw):
    base = dict(dataset="mnist", data_root=str(root), cache_dir=str(cache), out=str(out), batch_size=16, T=4,
                latent_dim=8, train_subset=64, test_subset=24, grid_images=8, tensorboard=False, progress=False,
                device="cpu")
    return {**base, **kw}


def test_resident_run_equals_dataloader_run(tiny_root, tmp_path, one_thread, same_training_state):
    root, cache = tiny_root
    loader = train.fit(train.TrainConfig(**_cfg(root, cache, tmp_path / "dl", epochs=2, data_on_gpu=False)))
    resident = train.fit(train.TrainConfig(**_cfg(root, cache, tmp_path / "res", epochs=2, data_on_gpu=True)))
    assert loader["steps"] == resident["steps"] == 8
    a, b = load_checkpoint(tmp_path / "dl" / "last.pt"), load_checkpoint(tmp_path / "res" / "last.pt")
    same_training_state(a, b, optimizer=False)
    assert a["metrics"]["test_mse"] == b["metrics"]["test_mse"]
    assert a["metrics"]["test_images"] == b["metrics"]["test_images"] == 24
    # the resolved choice is recorded (auto on a CPU device: the DataLoader path)
    saved = json.loads((tmp_path / "res" / "train_config.json").read_text())["train_config"]
    assert saved["data_on_gpu"] is True
    assert sorted(p.name.split("-")[1] for p in (cache / "resident").glob("mnist-*.pt")) == ["test", "train"]
    auto = train.fit(train.TrainConfig(**_cfg(root, cache, tmp_path / "auto", epochs=1, max_steps=1)))
    assert json.loads((tmp_path / "auto" / "train_config.json").read_text())["train_config"]["data_on_gpu"] is False
    assert auto["steps"] == 1


KILL_SCRIPT = """
import os, signal
from spikingjelly_vae import train
def kill(epoch, metrics):
    if epoch == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # dies between epochs, after epoch 1's checkpoint
train.fit(train.TrainConfig(**{cfg!r}), on_epoch_end=kill)
"""


def test_resident_resume_after_kill_is_exact(tiny_root, tmp_path, one_thread, same_training_state):
    root, cache = tiny_root
    full = train.fit(train.TrainConfig(**_cfg(root, cache, tmp_path / "full", epochs=3, data_on_gpu=True)))
    cfg = _cfg(root, cache, tmp_path / "cut", epochs=3, data_on_gpu=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT.format(cfg=cfg)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 1
    resumed = train.fit(train.TrainConfig(**{**cfg, "resume": True}))
    assert resumed["start_epoch"] == 1 and resumed["steps"] == full["steps"] == 12
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    same_training_state(a, b)
    assert a["best_test_loss"] == b["best_test_loss"]


def _ddp_worker(rank, world, port, cfg):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    train.fit(train.TrainConfig(**cfg))


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_resident_ddp_equals_dataloader_ddp(tiny_root, tmp_path, same_training_state):
    """Two gloo processes: the resident loaders take the DistributedSampler's shard, as the DataLoaders."""
    import torch.multiprocessing as mp
    root, cache = tiny_root
    for name, on in (("dl", False), ("res", True)):
        cfg = _cfg(root, cache, tmp_path / name, epochs=1, batch_size=8, data_on_gpu=on)
        mp.spawn(_ddp_worker, args=(2, _free_port(), cfg), nprocs=2, join=True)
    a, b = load_checkpoint(tmp_path / "dl" / "last.pt"), load_checkpoint(tmp_path / "res" / "last.pt")
    assert a["step"] == b["step"] == 4 and b["world_size"] == 2
    same_training_state(a, b, optimizer=False)
    assert a["metrics"]["test_mse"] == b["metrics"]["test_mse"]
