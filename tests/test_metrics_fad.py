"""FAD: official AE and stats, train-mode BN protocol, sanity values, our own AE trainer and the CLI."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from spikingjelly_vae.metrics.fad import ae_features, compute_fad, fad_test_stats, load_fad_model
from spikingjelly_vae.metrics.frechet import frechet_distance, gaussian_stats
from spikingjelly_vae.metrics.resources import MetricUnavailable
from spikingjelly_vae.metrics.sources import collect, dataset_batches, tensor_batches
from spikingjelly_vae.models.autoencoder import AE

SHARED = Path(os.environ.get("SJVAE_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
FAD_DIR = SHARED / "esvae_fad"
needs_fad = pytest.mark.skipif(not (FAD_DIR / "stat_checkpoints").is_dir() or not (SHARED / "MNIST").is_dir(),
                               reason="official FAD files / MNIST not found")


def test_reference_protocol_uses_batch_stats_and_leaves_the_ae_alone():
    torch.manual_seed(0)
    ae = AE(1, 8)
    before = {k: v.clone() for k, v in ae.state_dict().items()}
    x = torch.rand(6, 1, 32, 32) * 2 - 1
    ref = ae_features([x[:3], x[3:]], ae, "reference")
    copy = AE(1, 8)
    copy.load_state_dict(before)
    copy.train()
    with torch.no_grad():
        want = torch.cat([copy.encode(x[:3]), copy.encode(x[3:])]).double().numpy()
    np.testing.assert_allclose(ref, want, rtol=1e-6, atol=1e-6)
    for k, v in ae.state_dict().items():  # running statistics untouched
        torch.testing.assert_close(v, before[k])
    # standard: eval mode, a feature depends on its own image only
    std = ae_features([x[:3], x[3:]], ae, "standard")
    np.testing.assert_allclose(std, ae_features([x], ae, "standard"), rtol=1e-6, atol=1e-6)
    assert not np.allclose(ref, std)
    with pytest.raises(ValueError, match="batches of one"):
        ae_features([x[:1]], ae, "reference")


def test_missing_ae_says_how_to_get_one(monkeypatch, tmp_path):
    monkeypatch.delenv("SJVAE_FAD", raising=False)
    with pytest.raises(MetricUnavailable, match="sjvae fad-ae train --dataset cifar10"):
        load_fad_model("cifar10", fad_dir=tmp_path, cache_dir=tmp_path)
    with pytest.raises(ValueError):
        load_fad_model("svhn")


@needs_fad
def test_official_files_load_and_cifar10_has_no_official_ae(tmp_path):
    fad = load_fad_model("mnist", fad_dir=FAD_DIR, cache_dir=tmp_path)
    assert fad.source == "official" and fad.comparable and fad.ref_mu.shape == (64,)
    d = fad.describe()
    assert len(d["checkpoint_sha256"]) == 64 and d["comparable_with_paper"]
    with pytest.raises(MetricUnavailable, match="not comparable"):
        load_fad_model("cifar10", fad_dir=FAD_DIR, cache_dir=tmp_path)


@pytest.fixture(scope="module")
def real():
    from spikingjelly_vae.data import load_dataset
    return {ds: collect(dataset_batches(load_dataset(ds, "test", root=SHARED), 1000)) for ds in ("mnist", "fashion")}


@needs_fad
@pytest.mark.slow
@pytest.mark.parametrize("ds", ["mnist", "fashion"])
def test_real_test_images_reproduce_the_official_stats(ds, real, tmp_path):
    fad = load_fad_model(ds, fad_dir=FAD_DIR, cache_dir=tmp_path)
    x = real[ds]
    # the official stats maker: whole test split in order, batch 256, train-mode BN -> the same statistics
    whole = compute_fad(tensor_batches(x, 256), fad, "reference")
    assert whole["num_images"] == 10000 and abs(whole["fad"]) < 1e-4
    # the paper's sampling protocol on real images: 5,120 random test images in batches of 128
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:5120]
    sub = compute_fad(tensor_batches(x[idx], 128), fad, "reference")
    assert 0 < sub["fad"] < 2.0  # measured 0.90 (MNIST), 0.34 (Fashion); paper's models: 10.99 / 11.13
    noise = torch.rand(1024, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert compute_fad(tensor_batches(noise, 128), fad, "reference")["fad"] > 100  # 5,120: 241 / 219


@needs_fad
def test_standard_protocol_stats_are_computed_and_cached(real, tmp_path):
    fad = load_fad_model("mnist", fad_dir=FAD_DIR, cache_dir=tmp_path)
    a = fad_test_stats(fad, "standard", root=SHARED, cache_dir=tmp_path, num=512)
    b = fad_test_stats(fad, "standard", root=SHARED, cache_dir=tmp_path, num=512)
    assert not a["cached"] and b["cached"] and a["count"] == 512
    mu, sigma = gaussian_stats(ae_features(tensor_batches(real["mnist"][:512], 100), fad.ae, "standard"))
    assert abs(frechet_distance(mu, sigma, a["mu"], a["sigma"])) < 1e-6
    r = compute_fad(tensor_batches(real["mnist"][:512], 128), fad, "standard", reference=a)
    assert not r["comparable_with_paper"] and "standard" in r["note"]


@needs_fad
def test_fad_ae_train_cli_writes_a_usable_ae(tmp_path):
    from spikingjelly_vae.cli import main
    out = tmp_path / "ae"
    args = ["fad-ae", "train", "--dataset", "mnist", "--data-root", str(SHARED), "--out", str(out),
            "--epochs", "1", "--batch-size", "50", "--limit", "100", "--device", "cpu"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "NOT comparable" in res.output
    meta = json.loads((out / "mnist_64.json").read_text())
    assert meta["source"] == "ours" and meta["recipe"]["epochs"] == 1 and meta["test_images"] == 100
    fad = load_fad_model("mnist", checkpoint=out / "mnist_64.pth")
    assert fad.source == "ours" and not fad.comparable
    with np.load(out / "mnist_test_64.npz") as z:
        assert int(z["count"]) == 100 and json.loads(str(z["protocol"]))["protocol"] == "reference"
    r = compute_fad([torch.rand(8, 1, 32, 32) * 2 - 1], fad, "reference")
    assert "not comparable" in r["note"]
    # a second run refuses to overwrite the first one's files
    again = CliRunner().invoke(main, args)
    assert again.exit_code != 0 and "--overwrite" in again.output
    assert (out / "mnist_64.pth").is_file()
