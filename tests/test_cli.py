"""`sjvae train / sample / reconstruct / info` through click's CliRunner (tiny MNIST runs)."""
import json
import os
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from spikingjelly_vae.cli import main

SHARED = Path(os.environ.get("SJVAE_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
pytestmark = pytest.mark.skipif(not (SHARED / "MNIST").is_dir(), reason="shared data not found")
TINY = ["--data-root", str(SHARED), "--batch-size", "16", "--T", "4", "--latent-dim", "8", "--train-subset", "64",
        "--test-subset", "32", "--grid-images", "8", "--no-progress", "--no-tensorboard",
        "--model-opt", "hidden=4,4,8,8"]  # a tiny backbone (conv channels per stage)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    res = invoke("train", "--out", out, "--epochs", 1, *TINY)
    assert res.exit_code == 0, res.output
    assert "test MSE" in res.output and "over 32 test images" in res.output
    return out


def test_train_writes_run_and_resume_extends_it(run, tmp_path):
    assert {p.name for p in run.iterdir()} >= {"last.pt", "best.pt", "log.csv", "train_config.json", "images"}
    res = invoke("train", "--out", run, "--epochs", 1, *TINY)
    assert res.exit_code == 2 and "already holds a run" in res.output
    res = invoke("train", "--out", run, "--resume", "--epochs", 2)  # the other options come from the run
    assert res.exit_code == 0, res.output
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["config"]["latent_dim"] == 8 and ckpt["train_config"]["batch_size"] == 16
    assert ckpt["config"]["hidden"] == [4, 4, 8, 8]  # the model options come from the run too
    assert len((run / "log.csv").read_text().strip().splitlines()) == 3
    res = invoke("train", "--out", tmp_path / "none", "--resume")
    assert res.exit_code == 2 and "--resume needs --out" in res.output


def test_train_bad_input(tmp_path):
    res = invoke("train", "--dataset", "svhn", "--out", tmp_path / "a", *TINY)
    assert res.exit_code == 2 and "unknown dataset 'svhn'" in res.output
    res = invoke("train", "--out", tmp_path / "b", *TINY, "--data-root", tmp_path / "missing")
    assert res.exit_code == 2 and "--data-root" in res.output
    res = invoke("train", "--out", tmp_path / "c", *TINY, "--model-opt", "oops")
    assert res.exit_code == 2 and "KEY=VALUE" in res.output
    res = invoke("train", "--out", tmp_path / "d", *TINY, "--model-opt", "colour=3")
    assert res.exit_code == 2 and "does not accept" in res.output


def test_model_opt_values():
    from spikingjelly_vae.cli.options import parse_model_opts
    opts = parse_model_opts(None, None, ["hidden=4,4,8,8", "mmd_lambda=1e-3", "k=3", "scheduled=false",
                                         "kernel_backend=torch", "kld_weight=auto", "note=a,b", "w=0.5, 2"])
    assert opts == {"hidden": [4, 4, 8, 8], "mmd_lambda": 1e-3, "k": 3, "scheduled": False,
                    "kernel_backend": "torch", "kld_weight": "auto", "note": "a,b", "w": [0.5, 2]}
    assert type(opts["k"]) is int and [type(c) for c in opts["hidden"]] == [int] * 4
    for bad in ("oops", "=3"):
        with pytest.raises(click.BadParameter, match="KEY=VALUE"):
            parse_model_opts(None, None, [bad])


def test_sample_png_and_pt(run, tmp_path):
    res = invoke("sample", "--checkpoint", run / "last.pt", "-n", 10, "--out", tmp_path / "s.pt", "--seed", 3)
    assert res.exit_code == 0, res.output
    x = torch.load(tmp_path / "s.pt", weights_only=True)
    assert x.shape == (10, 1, 32, 32) and x.min() >= -1 and x.max() <= 1
    invoke("sample", "--checkpoint", run / "last.pt", "-n", 10, "--out", tmp_path / "t.pt", "--seed", 3,
           "--batch-size", 4)
    assert torch.equal(torch.load(tmp_path / "t.pt", weights_only=True), x)  # the seed fixes the draws
    res = invoke("sample", "--checkpoint", run / "last.pt", "-n", 10, "--out", tmp_path / "s.pt")
    assert res.exit_code == 2 and "exists; pass --force" in res.output
    assert torch.equal(torch.load(tmp_path / "s.pt", weights_only=True), x)
    res = invoke("sample", "--checkpoint", run / "last.pt", "-n", 10, "--out", tmp_path / "g.png", "--nrow", 5)
    assert res.exit_code == 0 and Image.open(tmp_path / "g.png").size == (5 * 34 + 2, 2 * 34 + 2)
    res = invoke("sample", "--checkpoint", run / "last.pt", "--out", tmp_path / "g.jpg")
    assert res.exit_code == 2 and ".png or .pt" in res.output


def test_reconstruct(run, tmp_path):
    res = invoke("reconstruct", "--checkpoint", run / "last.pt", "--out", tmp_path / "r.png", "-n", 12,
                 "--data-root", SHARED)
    assert res.exit_code == 0, res.output
    assert "12 mnist test images, MSE" in res.output
    assert Image.open(tmp_path / "r.png").size == (8 * 34 + 2, 4 * 34 + 2)  # 2 row pairs of 8
    res = invoke("reconstruct", "--checkpoint", run / "last.pt", "--out", tmp_path / "c.png", "--dataset", "cifar10",
                 "--data-root", SHARED)
    assert res.exit_code == 2 and "takes 1x32x32 images but cifar10 has 3x32x32" in res.output
    assert not (tmp_path / "c.png").exists()


def test_bad_checkpoints(run, tmp_path):
    blob = (run / "last.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(blob[:1000])
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    ckpt = torch.load(run / "last.pt", weights_only=True)
    ckpt["config"] = {**ckpt["config"], "latent_dim": 16}  # weights of another architecture
    torch.save(ckpt, tmp_path / "other.pt")
    for name, msg in [("cut.pt", "truncated, corrupt"), ("foreign.pt", "not a spikingjelly-vae checkpoint"),
                      ("other.pt", "weights do not fit")]:
        for cmd in (["sample", "--out", tmp_path / "x.png"], ["reconstruct", "--out", tmp_path / "x.png"],
                    ["info"]):
            res = invoke(*cmd, "--checkpoint", tmp_path / name, "--data-root", SHARED) if cmd[0] == "reconstruct" \
                else invoke(*cmd, "--checkpoint", tmp_path / name)
            assert res.exit_code == 2 and msg in res.output, (name, cmd, res.output)
    assert not (tmp_path / "x.png").exists()
    assert (tmp_path / "cut.pt").read_bytes() == blob[:1000]


def test_info(run):
    res = invoke("info", "--checkpoint", run / "last.pt", "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    model = torch.load(run / "last.pt", weights_only=True)["model"]
    assert info["parameters"] == sum(v.numel() for k, v in model.items() if "running" not in k
                                     and "num_batches" not in k)
    assert info["latent_dim"] == 8 and info["T"] == 4 and info["device"] == "cpu"
    assert info["kernel_backend"]["on_this_device"] == "torch" and info["checkpoint"]["epoch"] >= 1
    assert info["layers"]["PaperLIFNode"] == 10
    res = invoke("info", "--model", "esvae", "--dataset", "cifar10", "--device", "cpu")
    assert res.exit_code == 0 and "latent 128, T 16" in res.output and "images 3x32x32" in res.output
    res = invoke("info", "--model", "nope")
    assert res.exit_code == 2 and "unknown model 'nope'" in res.output


@pytest.mark.parametrize("command", ["train", "sample", "reconstruct", "info"])
def test_every_option_has_help(command):
    cmd = main.commands[command]
    missing = [p.name for p in cmd.params if getattr(p, "help", None) in (None, "")]
    assert missing == []
    res = invoke(command, "--help")
    assert res.exit_code == 0 and "--device" in res.output
