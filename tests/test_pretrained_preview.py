"""The shipped preview weights: one registry entry, loadable offline by `create_model` and `--pretrained`,
fp16 on disk and fp32 in the model, and its recorded CPU MSE recomputed independently from real MNIST."""
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from spikingjelly_vae.cli import main
from spikingjelly_vae.models import create_model, get_weights, weights_names
from spikingjelly_vae.registry import WeightsError, verified_weights_file

from conftest import SHARED_DATA

NAME = "esvae-mnist-preview"
FP32_CHECKPOINT = SHARED_DATA.parent / "checkpoints" / "esvae_mnist_e20_h200.pt"  # the source of the fp16 file


def test_entry_is_a_measured_preview():
    e = get_weights(NAME)
    assert e.status == "preview" and e.model == "esvae" and e.dataset == "mnist" and e.dtype == "fp16"
    assert (e.epochs_reached, e.epochs_total) == (20, 300)
    assert e.metrics["mse"] == 0.0425 and e.metrics["fid"] == 104.8 and e.metrics["fad"] == 17.86
    assert "H200" in e.measured and "20 of its 300 epochs" in e.trained
    assert NAME in weights_names(loadable=True) and "esvae-mnist" not in weights_names(loadable=True)
    path, _ = verified_weights_file(NAME)
    assert path.stat().st_size < 2_000_000  # model only, fp16


def test_create_model_loads_fp16_weights_into_fp32():
    model = create_model("esvae", pretrained=NAME)
    entry_config = get_weights(NAME).config
    assert not model.training and {k: model.config[k] for k in entry_config} == entry_config
    blob = torch.load(verified_weights_file(NAME)[0], map_location="cpu", weights_only=True)
    for key, value in model.state_dict().items():
        stored = blob["model"][key]
        if stored.is_floating_point():
            assert stored.dtype == torch.float16 and value.dtype == torch.float32
        assert torch.equal(value, stored.to(value.dtype)), key
    same = create_model(NAME)  # a weights name alone builds its model
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), same.state_dict().values()))
    images = model.sample(4, generator=torch.Generator().manual_seed(0))
    assert images.shape == (4, 1, 32, 32) and torch.isfinite(images).all()


def test_wrong_model_or_unfinished_names_say_what_to_do():
    with pytest.raises(WeightsError, match="for model 'esvae', not 'fsvae'"):
        create_model("fsvae", pretrained=NAME)
    with pytest.raises(WeightsError, match=f"still training.*sjvae reproduce.*or use {NAME}"):
        create_model("esvae", pretrained="esvae-mnist")
    with pytest.raises(WeightsError, match="no pretrained weights named"):
        create_model("esvae", pretrained="esvae-svhn")


def test_sample_cli_with_the_preview(tmp_path):
    res = CliRunner().invoke(main, ["sample", "--pretrained", NAME, "-n", "8", "--out", str(tmp_path / "g.png"),
                                    "--device", "cpu"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "g.png").is_file() and "is a preview: 20 of the paper's 300 epochs" in res.output


@pytest.mark.skipif(not FP32_CHECKPOINT.is_file(), reason="the fp32 source checkpoint is not here")
def test_fp16_copy_is_the_fp32_checkpoint_rounded(one_thread):
    """Every tensor is the source's rounded to fp16, and reconstructions barely move (same Poisson draws)."""
    from spikingjelly_vae.checkpoint import load_model
    from spikingjelly_vae.data import load_dataset
    fp32, _ = load_model(FP32_CHECKPOINT)
    fp16 = create_model(NAME)
    src = fp32.state_dict()
    for key, value in fp16.state_dict().items():
        want = src[key].half().to(value.dtype) if value.is_floating_point() else src[key]
        assert torch.equal(value, want), key
    x = torch.stack([load_dataset("mnist-mini", "test")[i][0] for i in range(128)])
    with torch.no_grad():
        mse = [((m.eval()(x, generator=torch.Generator().manual_seed(0))[0] - x) ** 2).mean().item()
               for m in (fp32, fp16)]
    # measured: 0.04241 vs 0.04196 here; on the first 2,000 test images 0.043161 (fp32) vs 0.043175 (fp16)
    assert abs(mse[0] - mse[1]) < 0.03 * mse[0], mse


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason="shared MNIST not found")
def test_mse_on_2000_real_test_images_matches_the_entry():
    """Recomputed from the raw idx file with numpy and torch only (not the package's data or metric code):
    resize to 32x32 as torchvision does, x -> 2x - 1, reconstruct with a seed-0 generator in batches of 512."""
    from torchvision.transforms.functional import resize
    raw = (SHARED_DATA / "MNIST" / "raw" / "t10k-images-idx3-ubyte").read_bytes()
    pixels = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 1, 28, 28)[:2000]
    x = resize(torch.from_numpy(pixels.copy()), [32, 32], antialias=True).float().div(255) * 2 - 1
    model, gen, total = create_model(NAME), torch.Generator().manual_seed(0), 0.0
    with torch.no_grad():
        for batch in x.split(512):
            total += ((model(batch, generator=gen)[0].double() - batch.double()) ** 2).flatten(1).mean(1).sum().item()
    recorded = get_weights(NAME).metrics["mse_test2000_cpu"]
    assert abs(total / 2000 - recorded) < 0.01 * recorded, (total / 2000, recorded)
