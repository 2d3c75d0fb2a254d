"""--download on the data commands: the flag reaches download.download_dataset with the user's data root,
nothing is downloaded without it, and a missing dataset's message says to pass --download."""
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from spikingjelly_vae import data, download
from spikingjelly_vae.cli import main

SHARED = Path(os.environ.get("SJVAE_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
CKPT = SHARED.parent / "checkpoints" / "esvae_mnist_e20_h200.pt"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def calls(monkeypatch):
    """download_dataset replaced by a recorder that fails like an offline machine (nothing is fetched)."""
    seen = []

    def fake(name, root=None, *, log=print):
        seen.append((name, str(root)))
        raise download.DownloadError(f"cannot download {name}: no network (test)")

    monkeypatch.setattr(download, "download_dataset", fake)
    return seen


def test_train_download_flag_reaches_download_dataset(tmp_path, calls):
    root = tmp_path / "data"
    res = invoke("train", "--out", tmp_path / "run", "--data-root", root, "--download", "--no-progress")
    assert res.exit_code == 2 and "cannot download mnist: no network (test)" in res.output
    assert calls == [("mnist", str(root))]


def test_load_dataset_download_param(tmp_path, calls):
    with pytest.raises(download.DownloadError):
        data.load_dataset("fashion", "test", tmp_path, download=True)
    assert calls == [("fashion", str(tmp_path))]


@pytest.mark.skipif(not CKPT.is_file(), reason="shared checkpoint not found")
@pytest.mark.parametrize("given", [True, False])
def test_evaluate_download_flag_reaches_download_dataset(tmp_path, calls, given):
    args = ["--dataset", "mnist"] if given else []  # else the dataset is read from the checkpoint
    res = invoke("evaluate", "--checkpoint", CKPT, "--metrics", "mse", "--data-root", tmp_path, "--download", *args)
    assert res.exit_code == 2 and "no network (test)" in res.output
    assert calls == [("mnist", str(tmp_path))]


def test_without_the_flag_nothing_is_downloaded(tmp_path, calls):
    res = invoke("train", "--out", tmp_path / "run", "--data-root", tmp_path, "--no-progress")
    assert res.exit_code == 2 and "mnist not found" in res.output and "--download" in res.output
    res = invoke("train", "--out", tmp_path / "run2", "--data-root", tmp_path / "missing", "--no-progress")
    assert res.exit_code == 2 and "--download" in res.output
    assert calls == []


@pytest.mark.skipif(not (SHARED / "MNIST").is_dir(), reason="shared data not found")
def test_mnist_needs_all_four_idx_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):  # one split only
        shutil.copy(SHARED / "MNIST" / "raw" / name, raw / name)
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.*t10k-labels-idx1-ubyte.*--download"):
        data.load_dataset("mnist", "train", tmp_path)
