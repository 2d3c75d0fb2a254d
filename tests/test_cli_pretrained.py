"""`--pretrained NAME` on the model commands and `sjvae pretrained`: a name still training is refused with
its message; a registered entry (sha256-checked weights file) samples, reconstructs and evaluates."""
import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from spikingjelly_vae import pretrained as pt
from spikingjelly_vae.atomic import sha256_file
from spikingjelly_vae.cli import main

SHARED = Path(os.environ.get("SJVAE_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
NAME = "test-cli-esvae-mnist"
MODEL_COMMANDS = {"sample": ["--out", "x.png"], "reconstruct": ["--out", "x.png"], "evaluate": [],
                  "robustness": ["--kind", "shuffle"], "classify": [], "analyze": []}


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def entry(tmp_path, tiny_model):
    """A registered, available entry whose weights file (as `export_weights` writes it) is in tmp_path."""
    model = tiny_model("esvae")
    path = tmp_path / f"{NAME}.pt"
    torch.save({"model": model.state_dict(), "config": dict(model.config)}, path)
    e = pt.PretrainedEntry(name=NAME, model="esvae", dataset="mnist", status="available", epochs_total=1,
                           epochs_reached=1, config=dict(model.config), file=str(path),
                           sha256=sha256_file(path), metrics={"mse": 0.5})
    pt.register_pretrained(e)
    yield e
    pt.REGISTRY.pop(NAME, None)


@pytest.mark.parametrize("command", sorted(MODEL_COMMANDS))
def test_still_training_name_is_refused_with_its_message(command, tmp_path):
    args = [a if a != "x.png" else tmp_path / a for a in MODEL_COMMANDS[command]]
    res = invoke(command, "--pretrained", "esvae-mnist", *args)
    assert res.exit_code == 2
    assert "'esvae-mnist' is still training" in res.output and "sjvae reproduce --dataset mnist" in res.output
    res = invoke(command, "--pretrained", "esvae-svhn", *args)
    assert res.exit_code == 2 and "no pretrained weights named 'esvae-svhn'" in res.output
    res = invoke(command, *args)  # neither --checkpoint nor --pretrained
    assert res.exit_code == 2 and "exactly one of --checkpoint PATH and --pretrained NAME" in res.output
    assert not (tmp_path / "x.png").exists()


def test_checkpoint_and_pretrained_together_are_refused(entry, tmp_path):
    res = invoke("sample", "--pretrained", NAME, "--checkpoint", entry.file, "--out", tmp_path / "x.png")
    assert res.exit_code == 2 and "exactly one of" in res.output


def test_pretrained_lists_names():
    res = invoke("pretrained")
    assert res.exit_code == 0 and "esvae-mnist" in res.output and "training" in res.output
    listed = json.loads(invoke("pretrained", "--json").output)
    assert listed["fsvae-cifar10"]["epochs_total"] == 150


def test_sample_with_pretrained_equals_the_same_weights_as_checkpoint(entry, tmp_path):
    res = invoke("sample", "--pretrained", NAME, "-n", 6, "--out", tmp_path / "a.pt", "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "learned prior" in res.output
    invoke("sample", "--checkpoint", entry.file, "-n", 6, "--out", tmp_path / "b.pt", "--device", "cpu")
    a, b = (torch.load(tmp_path / f, weights_only=True) for f in ("a.pt", "b.pt"))
    assert a.shape == (6, 1, 32, 32) and torch.equal(a, b)


def test_tampered_weights_are_refused(entry, tmp_path):
    data = bytearray(Path(entry.file).read_bytes())
    data[len(data) // 2] ^= 1
    Path(entry.file).write_bytes(bytes(data))
    res = invoke("sample", "--pretrained", NAME, "--out", tmp_path / "x.png")
    assert res.exit_code == 2 and "does not match the sha256" in res.output


@pytest.mark.skipif(not (SHARED / "MNIST").is_dir(), reason="shared data not found")
def test_evaluate_and_reconstruct_with_pretrained(entry, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default output goes to results/pretrained/ under the working folder
    res = invoke("evaluate", "--pretrained", NAME, "--metrics", "mse", "--mse-num", 32, "--data-root", SHARED,
                 "--device", "cpu")
    assert res.exit_code == 0, res.output
    out = tmp_path / "results" / "pretrained" / f"{NAME}.eval-reference.json"
    got = json.loads(out.read_text())
    assert got["dataset"] == "mnist" and got["pretrained"] == NAME and got["prior"] == "learned"
    assert got["checkpoint_sha256"] == entry.sha256 and got["metrics"]["mse"]["num_images"] == 32
    res = invoke("reconstruct", "--pretrained", NAME, "-n", 4, "--out", tmp_path / "r.png", "--data-root",
                 SHARED, "--device", "cpu")
    assert res.exit_code == 0 and "4 mnist test images" in res.output
    res = invoke("robustness", "--pretrained", NAME, "--kind", "shuffle", "--num-images", 8, "--batch-size", 8,
                 "--num-examples", 2, "--data-root", SHARED, "--device", "cpu", "--out-dir", tmp_path / "rob")
    assert res.exit_code == 0, res.output
    assert f"esvae:{NAME}" in json.loads((tmp_path / "rob" / "robustness_shuffle.json").read_text())["models"]
