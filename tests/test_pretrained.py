"""Pretrained registry: names still training say so; an exported entry loads, is sha256-checked, samples."""
import os
from pathlib import Path

import pytest
import torch

from spikingjelly_vae import pretrained as pt
from spikingjelly_vae import reproduce as rp
from spikingjelly_vae.checkpoint import load_checkpoint

SHARED = Path(os.environ.get("SJVAE_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def test_registry_lists_training_names():
    names = pt.status()
    assert {"esvae-mnist", "fsvae-cifar10", "ann-vae-celeba"} <= set(names)
    assert names["esvae-mnist"]["status"] == "training" and names["esvae-mnist"]["epochs_total"] == 300
    assert names["fsvae-mnist"]["epochs_total"] == 150
    with pytest.raises(pt.PretrainedError, match="still training.*sjvae reproduce --dataset mnist"):
        pt.load_pretrained("esvae-mnist")
    with pytest.raises(pt.PretrainedError, match="no pretrained weights named 'esvae-svhn'"):
        pt.load_pretrained("esvae-svhn")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    if not (SHARED / "MNIST").is_dir():
        pytest.skip("shared data not found")
    out = tmp_path_factory.mktemp("table1")
    tiny = {"batch_size": 16, "latent_dim": 8, "T": 4, "train_subset": 32, "test_subset": 16,
            "grid_images": 8,
            "epochs": 1, "model_kwargs": {"hidden": [4, 4, 8, 8]}}  # a tiny backbone
    rp.reproduce(dataset="mnist", out=out, models=["esvae"], data_root=str(SHARED), device="cpu",
                 preset_overrides={"esvae": tiny}, eval_options={"metrics": ("mse",), "mse_num": 16},
                 robustness_options={"num_images": 16, "batch_size": 16}, log=lambda msg: None)
    return out / "mnist" / "esvae"


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_exported_entry_loads_checks_sha_and_samples(finished_run, tmp_path, dtype):
    entry = pt.export_weights(finished_run, name=f"test-esvae-{dtype}", dtype=dtype, weights_dir=tmp_path)
    assert entry.status == "available" and entry.epochs_reached == entry.epochs_total == 1
    assert entry.metrics["mse"] is not None and entry.commit and "--models esvae" in entry.command
    pt.register_pretrained(entry)
    try:
        model, got = pt.load_pretrained(entry.name, device="cpu")
        assert got is entry and not model.training
        trained = load_checkpoint(finished_run / "last.pt")["model"]
        cast = torch.float16 if dtype == "fp16" else torch.float32
        for key, value in model.state_dict().items():
            want = trained[key].to(cast).to(value.dtype) if trained[key].is_floating_point() else trained[key]
            assert torch.equal(value, want), key
        images = model.sample(8, generator=torch.Generator().manual_seed(0))
        assert images.shape == (8, 1, 32, 32) and torch.isfinite(images).all()
        from spikingjelly_vae.train import save_sample_grid
        assert save_sample_grid(model, 8, tmp_path / "grid.png", torch.Generator().manual_seed(0)).is_file()

        weights = Path(entry.file)
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 1  # tampered: one bit flipped
        weights.write_bytes(bytes(data))
        with pytest.raises(pt.PretrainedError, match="does not match the sha256"):
            pt.load_pretrained(entry.name)
        weights.unlink()
        with pytest.raises(pt.PretrainedError, match="missing"):
            pt.load_pretrained(entry.name)
    finally:
        pt.REGISTRY.pop(entry.name, None)


def test_export_refuses_unfinished_schedules(tmp_path):
    run_dir = tmp_path / "mnist" / "esvae"
    run_dir.mkdir(parents=True)
    with pytest.raises(pt.PretrainedError, match="not a completed"):
        pt.export_weights(run_dir, name="x", weights_dir=tmp_path)
    with pytest.raises(ValueError, match="dtype"):
        pt.export_weights(run_dir, name="x", dtype="bf16")
    with pytest.raises(ValueError, match="needs file, sha256"):
        pt.register_pretrained(pt.PretrainedEntry(name="x", model="esvae", dataset="mnist",
                                                  status="available",
                                                  epochs_total=1))


def test_shipped_schedule_stays_complete_without_last_pt(finished_run, tmp_path):
    import shutil
    run_dir = tmp_path / "table1" / "mnist" / "esvae"
    shutil.copytree(finished_run, run_dir)
    pt.export_weights(run_dir, name="test-shipped", weights_dir=tmp_path)
    (run_dir / "last.pt").unlink()  # the procedure: the large state file goes once the weights are shipped
    (run_dir / "best.pt").unlink()
    res = rp.reproduce(dataset="mnist", out=tmp_path / "table1", models=["esvae"], data_root=str(SHARED),
                       device="cpu", log=lambda msg: None)
    st = res["models"]["esvae"]
    assert st["complete"] and st["epochs_done"] == 1 and st["calls"] == 1  # nothing retrained
    with pytest.raises(ValueError, match="shipped as pretrained 'test-shipped'"):
        rp.reproduce(dataset="mnist", out=tmp_path / "table1", models=["esvae"], data_root=str(SHARED),
                     device="cpu", reevaluate=True, log=lambda msg: None)


def test_module_cli_lists_names(capsys):
    pt.main(["list"])
    assert '"esvae-mnist"' in capsys.readouterr().out
