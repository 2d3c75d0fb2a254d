"""`sjvae evaluate` end to end on a tiny ESVAE checkpoint: table, JSON, unavailable metrics."""
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from spikingjelly_vae.checkpoint import save_checkpoint
from spikingjelly_vae.cli import main
from spikingjelly_vae.models import build_model

SHARED = Path(os.environ.get("SJVAE_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
needs_shared = pytest.mark.skipif(not (SHARED / "esvae_fad" / "stats").is_dir() or not (SHARED / "MNIST").is_dir(),
                                  reason="shared MNIST / FAD files not found")
TINY_HIDDEN = [4, 4, 8, 8]  # conv channels of a tiny 32x32 backbone (conftest.TINY_HIDDEN[32])


@pytest.fixture()
def tiny_checkpoint(tmp_path):
    model = build_model(dict(model="esvae", in_channels=1, image_size=32, latent_dim=8, T=4,
                             hidden=TINY_HIDDEN))
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, {"model": model.state_dict(), "optimizer": None, "epoch": 3, "config": model.config,
                           "metrics": {}, "dataset": "mnist"})
    return path


@needs_shared
def test_evaluate_writes_every_number_and_reasons(tiny_checkpoint, tmp_path, monkeypatch):
    for env in ("SJVAE_IS_WEIGHTS", "SJVAE_INCEPTION", "SJVAE_FAD"):
        monkeypatch.delenv(env, raising=False)
    out = tmp_path / "eval.json"
    args = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--metrics", "mse,fid,is,fad",
            "--data-root", str(SHARED), "--fad-dir", str(SHARED / "esvae_fad"), "--cache-dir", str(tmp_path / "c"),
            "--num-samples", "16", "--sample-batch", "8", "--mse-num", "12", "--mse-batch", "8",
            "--device", "cpu", "--output", str(out)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "FAD" in res.output and "IS" in res.output and "unavailable" in res.output
    r = json.loads(out.read_text())
    assert r["dataset"] == "mnist" and r["protocol"] == "reference" and r["epoch"] == 3
    assert len(r["checkpoint_sha256"]) == 64 and r["num_generated"] == 16
    mse = r["metrics"]["mse"]
    assert mse["num_images"] == 12 and mse["batch_size"] == 8 and mse["mse"] >= 0
    fad = r["metrics"]["fad"]
    assert fad["num_images"] == 16 and fad["source"] == "official" and fad["comparable_with_paper"]
    assert r["weights"]["fad_ae"]["checkpoint_sha256"] and r["weights"]["fad_ae"]["stats_sha256"]
    assert "--is-weights" in r["unavailable"]["is"] and "--inception-weights" in r["unavailable"]["fid"]
    assert "is" not in r["metrics"] and "fid" not in r["metrics"]  # never a number without weights


@needs_shared
def test_evaluate_standard_protocol_and_bad_input(tiny_checkpoint, tmp_path):
    out = tmp_path / "std.json"
    res = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(tiny_checkpoint), "--metrics", "fad",
                                    "--protocol", "standard", "--data-root", str(SHARED),
                                    "--fad-dir", str(SHARED / "esvae_fad"), "--cache-dir", str(tmp_path / "c"),
                                    "--num-samples", "8", "--sample-batch", "8", "--device", "cpu",
                                    "--output", str(out)])
    assert res.exit_code == 0, res.output
    fad = json.loads(out.read_text())["metrics"]["fad"]
    assert fad["protocol"] == "standard" and not fad["comparable_with_paper"]
    bad = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(tiny_checkpoint), "--metrics", "mse,kid"])
    assert bad.exit_code == 2 and "kid" in bad.output


def test_evaluate_needs_a_dataset(tmp_path):
    model = build_model(dict(model="esvae", in_channels=1, image_size=32, latent_dim=8, T=4,
                             hidden=TINY_HIDDEN))
    path = tmp_path / "nodata.pt"
    save_checkpoint(path, {"model": model.state_dict(), "optimizer": None, "epoch": 0, "config": model.config,
                           "metrics": {}})
    res = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(path), "--metrics", "mse", "--device", "cpu"])
    assert res.exit_code == 2 and "--dataset" in res.output


@needs_shared
@pytest.mark.parametrize("cfg", [dict(model="ann-vae", latent_dim=8), dict(model="fsvae", latent_dim=8, T=4),
                                 dict(model="esvae", latent_dim=8, T=4)])
def test_metrics_take_any_model_through_sample_batches(cfg):
    import torch

    from spikingjelly_vae.metrics import compute_fad, load_fad_model, sample_batches
    model = build_model(dict(cfg, in_channels=1, image_size=32, hidden=TINY_HIDDEN))
    fad = load_fad_model("mnist", fad_dir=SHARED / "esvae_fad")
    a = compute_fad(sample_batches(model, 12, 6, torch.Generator().manual_seed(0)), fad)
    b = compute_fad(sample_batches(model, 12, 6, torch.Generator().manual_seed(0)), fad)
    assert a["num_images"] == 12 and a["fad"] == b["fad"] > 0  # seeded sampling: exact repeat
