"""The training loop on tiny MNIST subsets: outputs, resume after a kill, NaN stop, DDP, bad input."""
import csv
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from spikingjelly_vae import presets, train
from spikingjelly_vae.runtime import derived_seed
from spikingjelly_vae.train import outputs
from spikingjelly_vae.checkpoint import CheckpointError, load_checkpoint, load_model

SHARED = Path(os.environ.get("SJVAE_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
pytestmark = pytest.mark.skipif(not (SHARED / "MNIST").is_dir(), reason="shared data not found")
TINY_HIDDEN = [4, 4, 8, 8]  # conv channels of a tiny 32x32 backbone (conftest.TINY_HIDDEN[32])
TINY = dict(dataset="mnist", data_root=str(SHARED), batch_size=16, T=4, latent_dim=8, train_subset=64,
            test_subset=32, grid_images=8, tensorboard=False, progress=False, model_kwargs={"hidden": TINY_HIDDEN})


def tiny(out, **kw):
    return train.TrainConfig(out=str(out), **{**TINY, **kw})


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_two_epoch_run_writes_all_outputs(tmp_path, one_thread):
    res = train.fit(tiny(tmp_path / "run", epochs=2))
    run = tmp_path / "run"
    names = sorted(p.relative_to(run).as_posix() for p in run.rglob("*"))
    assert names == ["best.pt", "images", "images/recon_epoch0001.png", "images/recon_epoch0002.png",
                     "images/samples_epoch0001.png", "images/samples_epoch0002.png", "last.pt", "log.csv",
                     "train_config.json"]
    rows = _rows(run / "log.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2] and [int(r["step"]) for r in rows] == [4, 8]
    assert float(rows[-1]["test_mse"]) == pytest.approx(res["metrics"]["test_mse"])
    assert int(rows[-1]["test_images"]) == 32
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["step"] == 8 and ckpt["dataset"] == "mnist"
    keys = ("model", "in_channels", "image_size", "latent_dim", "T", "mmd_lambda")
    assert {k: ckpt["config"][k] for k in keys} == dict(zip(keys, ("esvae", 1, 32, 8, 4, 1e-3)))
    model, _ = load_model(run / "best.pt")
    assert model.config["latent_dim"] == 8
    best = load_checkpoint(run / "best.pt")
    assert best["best_test_loss"] == min(float(r["test_loss"]) for r in rows)
    assert res["epochs"] == 2 and res["steps"] == 8 and len(res["grids"]) == 4
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["train_config"]["lr"] == presets.PRESETS[("esvae", "mnist")]["lr"]  # from the preset
    assert saved["train_config"]["batch_size"] == 16  # overridden
    # the reported test MSE is the per-image mean over the test images, recomputed independently
    from spikingjelly_vae.data import load_dataset
    x = torch.stack([load_dataset("mnist", "test", SHARED)[i][0] for i in range(32)])
    model, _ = load_model(run / "last.pt")
    gen = torch.Generator().manual_seed(derived_seed(42, 1, 0, "test"))
    mse = train.evaluate_loader(model, [(x, None)], torch.device("cpu"), gen)["mse"] / 32
    assert mse == pytest.approx(res["metrics"]["test_mse"], rel=1e-6)


def test_max_steps_and_grid_every(tmp_path):
    res = train.fit(tiny(tmp_path / "r", epochs=5, max_steps=6, grid_every=0))
    assert res["steps"] == 6 and res["epochs"] == 2  # 4 steps per epoch: stops inside epoch 2
    assert sorted(p.name for p in (tmp_path / "r" / "images").iterdir()) == [
        "recon_epoch0002.png", "samples_epoch0002.png"]


def test_keep_every_keeps_the_run_history(tmp_path):
    train.fit(tiny(tmp_path / "r", epochs=3, keep_every=2, grid_every=0))
    kept = sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir())
    assert kept == ["epoch0002.pt"]
    assert load_checkpoint(tmp_path / "r" / "checkpoints" / "epoch0002.pt")["epoch"] == 2
    with pytest.raises(ValueError, match="keep_every"):
        train.fit(tiny(tmp_path / "s", keep_every=-1))


def test_existing_run_needs_resume_or_force(tmp_path):
    out = tmp_path / "run"
    train.fit(tiny(out, epochs=1))
    before = (out / "last.pt").read_bytes()
    with pytest.raises(ValueError, match="already holds a run.*--resume.*--force"):
        train.fit(tiny(out, epochs=1))
    assert (out / "last.pt").read_bytes() == before
    (out / "notes.txt").write_text("mine")
    res = train.fit(tiny(out, epochs=1, force=True, seed=7))
    assert res["epochs"] == 1 and (out / "notes.txt").read_text() == "mine"  # only run files are replaced
    assert load_checkpoint(out / "last.pt")["train_config"]["seed"] == 7
    with pytest.raises(ValueError, match="nothing to resume"):
        train.fit(tiny(tmp_path / "empty", epochs=1, resume=True))
    with pytest.raises(ValueError, match="only one"):
        train.fit(tiny(out, resume=True, force=True))


def test_on_epoch_end_true_stops_after_that_epoch(tmp_path):
    seen = []

    def stop_after_first(epoch, metrics):
        seen.append((epoch, metrics["epoch"], (tmp_path / "run" / "last.pt").is_file()))
        return epoch == 1

    res = train.fit(tiny(tmp_path / "run", epochs=3), on_epoch_end=stop_after_first)
    assert seen == [(1, 1, True)]  # called once, after the epoch's checkpoint was written
    assert res["epochs"] == 1 and len(_rows(tmp_path / "run" / "log.csv")) == 1
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1
    assert len(list((tmp_path / "run" / "images").glob("*.png"))) == 2


KILL_SCRIPT = """
import os, signal, sys
from spikingjelly_vae import train
cfg = train.TrainConfig(**{cfg!r})
def kill(epoch, metrics):
    if epoch == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # dies between epochs, after epoch 1's checkpoint
train.fit(cfg, on_epoch_end=kill)
"""


def test_resume_after_kill_matches_uninterrupted_run(tmp_path, one_thread, same_training_state):
    full = train.fit(tiny(tmp_path / "full", epochs=3))
    cfg = {**TINY, "out": str(tmp_path / "cut"), "epochs": 3}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT.format(cfg=cfg)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 1
    resumed = train.fit(train.TrainConfig(**{**cfg, "resume": True}))
    assert resumed["start_epoch"] == 1 and resumed["epochs"] == 3 and resumed["steps"] == full["steps"]
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    same_training_state(a, b)
    assert a["best_test_loss"] == b["best_test_loss"]
    assert [r["train_loss"] for r in _rows(tmp_path / "full" / "log.csv")] == \
        [r["train_loss"] for r in _rows(tmp_path / "cut" / "log.csv")]
    # resuming a finished run trains nothing and reports the last metrics
    again = train.fit(train.TrainConfig(**{**cfg, "resume": True}))
    assert again["steps"] == full["steps"] and again["metrics"]["test_mse"] == full["metrics"]["test_mse"]


def test_resume_rejects_corrupt_or_foreign_checkpoint(tmp_path):
    out = tmp_path / "run"
    train.fit(tiny(out, epochs=1))
    good = (out / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        train.fit(tiny(out, epochs=2, resume=True))
    assert (out / "last.pt").read_bytes() == good[: len(good) // 2]  # left as it was, for the user to look at
    (out / "last.pt").write_bytes(good)
    with pytest.raises(ValueError, match="cannot resume it as esvae/fashion"):
        train.fit(tiny(out, epochs=2, resume=True, dataset="fashion"))
    assert len(_rows(out / "log.csv")) == 1


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    calls = {"n": 0}
    from spikingjelly_vae.models.esvae import ESVAE
    real_loss = ESVAE.loss

    def loss(self, x, o):
        terms = real_loss(self, x, o)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 6:  # epoch 2, second step
                terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(ESVAE, "loss", loss)
    with pytest.raises(train.NonFiniteLossError, match=r"became nan at epoch 2, step 6.*last good checkpoint.*epoch 1"):
        train.fit(tiny(out, epochs=3))
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert len(_rows(out / "log.csv")) == 1


def test_bad_options(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        train.fit(tiny(tmp_path / "a", dataset="svhn"))
    with pytest.raises(ValueError, match="unknown model 'gan'"):
        train.fit(tiny(tmp_path / "a", model="gan"))
    with pytest.raises(ValueError, match="does not exist.*--data-root"):
        train.fit(tiny(tmp_path / "a", data_root=str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="mnist not found"):
        train.fit(tiny(tmp_path / "a", data_root=str(tmp_path)))
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        train.fit(tiny(tmp_path / "a", batch_size=0))
    with pytest.raises(ValueError, match="needs a CUDA device"):
        train.fit(tiny(tmp_path / "a", amp="bf16", device="cpu"))
    with pytest.raises(ValueError, match="does not accept"):
        train.fit(tiny(tmp_path / "a", model_kwargs={"colour": 3}))
    assert not (tmp_path / "a" / "last.pt").exists()


class _TinyVAE(nn.Module):
    """A model written only against the documented interface, to show the loop is model-agnostic."""

    def __init__(self, in_channels=1, image_size=32, latent_dim=4, T=None):
        super().__init__()
        self.config = dict(model="tiny-test", in_channels=in_channels, image_size=image_size, latent_dim=latent_dim)
        self.enc = nn.Linear(in_channels * image_size ** 2, latent_dim)
        self.dec = nn.Linear(latent_dim, in_channels * image_size ** 2)
        self.shape = (in_channels, image_size, image_size)
        self.epochs_seen, self.num_batches = [], None

    def set_epoch(self, epoch, max_epochs):
        self.epochs_seen.append((epoch, max_epochs))

    def set_num_train_batches(self, n):
        self.num_batches = n

    def forward(self, x, generator=None):
        z = self.enc(x.flatten(1))
        z = z + torch.randn(z.shape, generator=generator)
        return torch.tanh(self.dec(z)).view(-1, *self.shape), z

    def loss(self, x, out):
        recon = nn.functional.mse_loss(out[0], x)
        return {"loss": recon, "recon": recon}

    def sample(self, n, generator=None):
        return torch.tanh(self.dec(torch.randn(n, self.enc.out_features, generator=generator))).view(-1, *self.shape)

    def param_groups(self, lr):
        return [{"params": list(self.parameters()), "lr": lr}]


def test_model_agnostic_hooks(tmp_path, monkeypatch):
    from spikingjelly_vae import models
    made = []
    monkeypatch.setitem(models.MODELS, "tiny-test", lambda **kw: made.append(_TinyVAE(**kw)) or made[-1])
    monkeypatch.setitem(presets.PRESETS, ("tiny-test", "mnist"), {
        "batch_size": 16, "lr": 1e-3, "epochs": 2, "weight_decay": 0.0, "drop_last": True, "model": {"latent_dim": 4}})
    res = train.fit(train.TrainConfig(dataset="mnist", model="tiny-test", data_root=str(SHARED),
                                      out=str(tmp_path / "r"), train_subset=40, test_subset=8, grid_images=4,
                                      tensorboard=False, progress=False))
    # made[-1]: the model trained (the build before it is on the meta device, a check of its size)
    assert made[-1].epochs_seen == [(0, 2), (1, 2)] and made[-1].num_batches == 2  # 40 // 16 with drop_last
    assert res["steps"] == 4 and set(res["metrics"]) >= {"train_loss", "test_recon", "test_mse"}
    with pytest.raises(ValueError, match="no bottleneck learning rate"):
        train.fit(train.TrainConfig(dataset="mnist", model="tiny-test", data_root=str(SHARED), out=str(tmp_path / "s"),
                                    bottleneck_lr_mult=10.0, train_subset=40, progress=False, tensorboard=False))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, cfg, report_dir):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    cwd = Path(report_dir) / f"cwd{rank}"
    cwd.mkdir()
    os.chdir(cwd)  # anything a rank writes by a relative path would land here
    saves = []
    real = outputs.save_checkpoint
    outputs.save_checkpoint = lambda path, state: saves.append(str(path)) or real(path, state)
    res = train.fit(train.TrainConfig(**cfg))
    weights = {k: v.sum().item() for k, v in load_checkpoint(Path(cfg["out"]) / "last.pt")["model"].items()}
    Path(report_dir, f"rank{rank}.json").write_text(json.dumps({"saves": saves, "results": res,
                                                                 "weights_seen": len(weights)}))


def test_ddp_two_processes_gloo(tmp_path):
    import torch.multiprocessing as mp
    out = tmp_path / "run"
    cfg = {**TINY, "out": str(out), "epochs": 1, "batch_size": 8, "device": "cpu"}
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert len(r0["saves"]) == 2 and r1["saves"] == []  # last.pt + best.pt, by rank 0 only
    assert list((tmp_path / "cwd0").iterdir()) == [] and list((tmp_path / "cwd1").iterdir()) == []
    assert len(_rows(out / "log.csv")) == 1
    # 64 images / (2 ranks x 8) = 4 steps per rank; both ranks see the same all-reduced metrics
    assert r0["results"]["steps"] == r1["results"]["steps"] == 4
    timing = ("epoch_seconds", "images_per_s")  # per-rank wall time; everything else is all-reduced
    assert {k: v for k, v in r0["results"]["metrics"].items() if k not in timing} == \
        {k: v for k, v in r1["results"]["metrics"].items() if k not in timing}
    assert r0["results"]["metrics"]["test_images"] == 32 and r0["results"]["world_size"] == 2
    assert load_checkpoint(out / "last.pt")["world_size"] == 2


def _ddp_fit(rank, world, port, cfg):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    train.fit(train.TrainConfig(**cfg))


def test_ddp_resume_inside_an_epoch_is_exact(tmp_path, same_training_state):
    """resume.pt of a 2-process run holds both ranks' streams and sums; resumed by 2 processes it ends equal."""
    import torch.multiprocessing as mp
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    base = {**TINY, "epochs": 1, "batch_size": 8, "device": "cpu"}  # 4 steps per rank
    for cfg in ({**base, "out": full}, {**base, "out": cut, "max_steps": 3}):
        mp.spawn(_ddp_fit, args=(2, _free_port(), cfg), nprocs=2, join=True)
    state = load_checkpoint(Path(cut) / "resume.pt")
    assert (state["batch"], state["step"], len(state["ranks"])) == (3, 3, 2)
    assert not torch.equal(state["ranks"][0]["streams"]["model"], state["ranks"][1]["streams"]["model"])
    mp.spawn(_ddp_fit, args=(2, _free_port(), {**base, "out": cut, "resume": True}), nprocs=2, join=True)
    a, b = load_checkpoint(Path(full) / "last.pt"), load_checkpoint(Path(cut) / "last.pt")
    same_training_state(a, b)
    assert [r["train_loss"] for r in _rows(Path(full) / "log.csv")] == \
        [r["train_loss"] for r in _rows(Path(cut) / "log.csv")]
    with pytest.raises(ValueError, match="state of 2 processes"):  # one process cannot take it over
        torch.save({**state, "step": 99}, Path(cut) / "resume.pt")
        train.fit(train.TrainConfig(**{**base, "out": cut, "resume": True, "epochs": 2}))


def test_reference_presets_and_overrides():
    """The official ESVAE configs (reference_spec 6.2): effective lr = lr * batch / 250, bottleneck x10."""
    rows = {d: presets.get_preset("esvae", d) for d in ("mnist", "fashion", "cifar10", "celeba")}
    assert {d: (r["batch_size"], r["lr"], r["model"]["latent_dim"]) for d, r in rows.items()} == {
        "mnist": (256, 0.003072, 32), "fashion": (256, 0.003072, 32), "cifar10": (256, 0.0006144, 128),
        "celeba": (64, 0.000256, 128)}
    assert all(r["epochs"] == 300 and r["weight_decay"] == 1e-3 and r["bottleneck_lr_mult"] == 10.0
               and r["model"]["T"] == 16 and r["model"]["mmd_lambda"] == 1e-3 for r in rows.values())
    cfg = train.TrainConfig(dataset="cifar10", lr=0.01, T=8, model_kwargs={"mmd_lambda": 0.5}).resolved()
    assert (cfg.lr, cfg.T, cfg.latent_dim, cfg.batch_size, cfg.test_batch_size, cfg.drop_last) == \
        (0.01, 8, 128, 256, 512, True)
    assert cfg.model_kwargs == {"latent_dim": 128, "T": 8, "mmd_lambda": 0.5}
    rows["mnist"]["lr"] = 1.0  # get_preset returns a copy
    assert presets.get_preset("esvae", "mnist")["lr"] == 0.003072
    with pytest.raises(ValueError, match="no preset for model 'esvae' on dataset 'svhn'"):
        presets.get_preset("esvae", "svhn")
    with pytest.raises(ValueError, match="missing"):
        presets.register_preset("x", "mnist", {"lr": 1.0})


def _load_example(name):
    import importlib.util
    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tiny_esvae_presets(monkeypatch):
    """The examples train with the presets; here their ESVAE rows build a tiny backbone (T 4) instead."""
    for key in (("esvae", "mnist"), ("esvae", "cifar10")):
        row = presets.get_preset(*key)
        row["model"] = {**row["model"], "T": 4, "hidden": TINY_HIDDEN}
        monkeypatch.setitem(presets.PRESETS, key, row)


def test_example_train_mnist_quick(tmp_path, tiny_esvae_presets):
    res = _load_example("train_mnist").main(["--quick", "--data-root", str(SHARED), "--out", str(tmp_path / "m"),
                                              "--device", "cpu"])
    assert res["steps"] == 5 and res["metrics"]["test_images"] == 32
    assert (tmp_path / "m" / "samples.png").is_file() and (tmp_path / "m" / "reconstructions.png").is_file()


def test_example_train_cifar10_quick(tmp_path, sjvae_cache, tiny_esvae_presets):
    cache = sjvae_cache  # the extracted CIFAR-10 JPEGs, shared with test_data
    res = _load_example("train_cifar10").main(["--quick", "--data-root", str(SHARED), "--cache-dir", str(cache),
                                                "--out", str(tmp_path / "c"), "--device", "cpu"])
    assert res["steps"] == 3 and res["model_config"]["in_channels"] == 3 and res["model_config"]["latent_dim"] == 128
    assert (tmp_path / "c" / "images" / "recon_epoch0001.png").is_file()
