"""`sjvae prior fit --kind gmm|diffusion` and `--prior gmm:PATH|diffusion:PATH` on sample / evaluate /
analyze; compare marks such rows.

Uses the trained MNIST ESVAE of ../shared (copied: a prior's default file goes beside its checkpoint)."""
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from spikingjelly_vae.checkpoint import save_checkpoint
from spikingjelly_vae.cli import main
from spikingjelly_vae.models import ESVAE
from spikingjelly_vae.prior import GaussianMixturePrior, load_prior

ROOT = Path(__file__).resolve().parents[2] / "shared"
SHARED = Path(os.environ.get("SJVAE_TEST_DATA", ROOT / "data"))
TRAINED = ROOT / "checkpoints" / "esvae_mnist_e20_h200.pt"
pytestmark = pytest.mark.skipif(not ((SHARED / "MNIST").is_dir() and TRAINED.is_file()),
                                reason="shared data or checkpoint not found")
CPU = ["--device", "cpu"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """(checkpoint copy, GMM prior file fitted by `sjvae prior fit` to its default path)."""
    folder = tmp_path_factory.mktemp("prior")
    ckpt = folder / "esvae.pt"
    shutil.copyfile(TRAINED, ckpt)
    res = invoke("prior", "fit", "--checkpoint", ckpt, "--components", 2, "--max-images", 256, "--data-root",
                 SHARED, *CPU)
    assert res.exit_code == 0, res.output
    path = folder / "esvae.gmm-k2-full.pt"
    assert f"wrote {path}" in res.output and "256 mnist training images" in res.output
    return ckpt, path


def test_prior_fit_writes_a_loadable_prior_and_keeps_existing_files(fitted):
    ckpt, path = fitted
    prior = GaussianMixturePrior.load(path)
    assert prior.name == "gmm-k2-full" and prior.provenance["images"] == 256
    assert prior.provenance["checkpoint"] == str(ckpt.resolve())
    before = path.read_bytes()
    res = invoke("prior", "fit", "--checkpoint", ckpt, "--components", 2, "--max-images", 256, "--data-root",
                 SHARED, *CPU)
    assert res.exit_code == 2 and "exists; pass --force" in res.output and path.read_bytes() == before
    res = invoke("prior", "fit", "--checkpoint", ckpt, "--components", 300, "--max-images", 256,
                 "--covariance", "diag", "--data-root", SHARED, *CPU)
    assert res.exit_code == 2 and "components" in res.output


def test_sample_with_gmm_prior(fitted, tmp_path):
    ckpt, path = fitted
    res = invoke("sample", "--checkpoint", ckpt, "--prior", f"gmm:{path}", "-n", 8, "--out", tmp_path / "g.png",
                 *CPU)
    assert res.exit_code == 0, res.output
    assert "gmm-k2-full prior" in res.output
    assert Image.open(tmp_path / "g.png").text["prior"] == "gmm-k2-full"
    for prior, name in ((f"gmm:{path}", "a.pt"), ("learned", "b.pt")):
        assert invoke("sample", "--checkpoint", ckpt, "--prior", prior, "-n", 8, "--out", tmp_path / name,
                      *CPU).exit_code == 0
    a, b = (torch.load(tmp_path / f, weights_only=True) for f in ("a.pt", "b.pt"))
    assert a.shape == b.shape == (8, 1, 32, 32) and not torch.equal(a, b)  # another rate source
    res = invoke("sample", "--checkpoint", ckpt, "--prior", "gmm", "--out", tmp_path / "x.png")
    assert res.exit_code == 2 and "gmm:PATH or diffusion:PATH" in res.output


def test_evaluate_records_the_prior_and_compare_marks_it(fitted, tmp_path):
    ckpt, path = fitted
    res = invoke("evaluate", "--checkpoint", ckpt, "--prior", f"gmm:{path}", "--metrics", "mse,fad",
                 "--mse-num", 32, "--num-samples", 128, "--sample-batch", 64, "--data-root", SHARED,
                 "--fad-dir", SHARED / "esvae_fad", *CPU)
    assert res.exit_code == 0, res.output
    out = ckpt.with_name("esvae.pt.eval-reference.gmm-k2-full.json")  # beside the learned prior's, not over it
    got = json.loads(out.read_text())
    assert got["prior"] == "gmm-k2-full" and got["prior_file"]["path"] == str(path)
    assert got["metrics"]["fad"]["num_images"] == 128 and "fad" not in got["unavailable"]
    res = invoke("compare", out, "--format", "markdown")
    assert res.exit_code == 0, res.output
    assert "ESVAE (ours, gmm-k2-full prior)" in res.output and "not the paper's protocol" in res.output
    rows = invoke("compare", out, "--format", "csv").output.strip().splitlines()
    assert rows[0].endswith(",prior") and rows[-1].endswith(",gmm-k2-full")
    res = invoke("evaluate", "--checkpoint", ckpt, "--metrics", "mse", "--mse-num", 16, "--data-root", SHARED,
                 *CPU)
    assert res.exit_code == 0
    learned = json.loads(ckpt.with_name("esvae.pt.eval-reference.json").read_text())
    assert learned["prior"] == "learned"
    assert "(ours)" in invoke("compare", ckpt).output


def test_analyze_records_the_prior(fitted, tmp_path):
    ckpt, path = fitted
    res = invoke("analyze", "--checkpoint", ckpt, "--prior", f"gmm:{path}", "--num-images", 16, "--batch-size",
                 16, "--num-raster", 1, "--data-root", SHARED, "--out-dir", tmp_path, *CPU)
    assert res.exit_code == 0, res.output
    assert "prior (gmm-k2-full)" in res.output
    assert json.loads((tmp_path / "analysis.json").read_text())["prior"] == "gmm-k2-full"


def test_gmm_prior_refused_for_other_checkpoints_and_models(fitted, tmp_path, tiny_model):
    ckpt, path = fitted
    for name in ("fsvae", "esvae"):  # an FSVAE; an ESVAE the prior was not fitted to
        model = tiny_model(name, latent_dim=32)  # the trained model's latent size
        save_checkpoint(tmp_path / f"{name}.pt", {"model": model.state_dict(), "config": dict(model.config),
                                                  "dataset": "mnist"})
    res = invoke("sample", "--checkpoint", tmp_path / "fsvae.pt", "--prior", f"gmm:{path}", "--out",
                 tmp_path / "x.png", *CPU)
    assert res.exit_code == 2 and "rate priors apply to ESVAE only" in res.output and "FSVAE" in res.output
    res = invoke("evaluate", "--checkpoint", tmp_path / "fsvae.pt", "--prior", f"gmm:{path}", "--metrics",
                 "mse", "--data-root", SHARED, *CPU)
    assert res.exit_code == 2 and "ESVAE only" in res.output
    res = invoke("prior", "fit", "--checkpoint", tmp_path / "fsvae.pt", "--max-images", 8, "--components", 2,
                 "--data-root", SHARED, *CPU)
    assert res.exit_code == 2 and "ESVAE only" in res.output
    res = invoke("sample", "--checkpoint", tmp_path / "esvae.pt", "--prior", f"gmm:{path}", "--out",
                 tmp_path / "x.png", *CPU)
    assert res.exit_code == 2 and "refit it" in res.output
    assert not (tmp_path / "x.png").exists()


@pytest.fixture(scope="module")
def diffusion(fitted):
    """(checkpoint copy, diffusion prior file from `sjvae prior fit --kind diffusion`, small and short)."""
    ckpt, _ = fitted
    res = invoke("prior", "fit", "--checkpoint", ckpt, "--kind", "diffusion", "--max-images", 256, "--epochs", 2,
                 "--width", 16, "--steps", 10, "--no-progress", "--data-root", SHARED, *CPU)
    assert res.exit_code == 0, res.output
    path = ckpt.with_name("esvae.diffusion-logit.pt")
    assert f"wrote {path}; use it with --prior diffusion:{path}" in res.output
    assert "256 mnist training images" in res.output and "fit" in res.output
    return ckpt, path


def test_diffusion_prior_fit_sample_evaluate_analyze(diffusion, tmp_path):
    ckpt, path = diffusion
    prior = load_prior(f"diffusion:{path}", ESVAE(1, 32, T=16), checkpoint=ckpt)
    assert prior.name == "diffusion-logit" and prior.config["width"] == 16 and prior.provenance["epochs"] == 2
    res = invoke("sample", "--checkpoint", ckpt, "--prior", f"diffusion:{path}", "-n", 8, "--out",
                 tmp_path / "d.png", *CPU)
    assert res.exit_code == 0 and "diffusion-logit prior" in res.output, res.output
    assert Image.open(tmp_path / "d.png").text["prior"] == "diffusion-logit"
    res = invoke("evaluate", "--checkpoint", ckpt, "--prior", f"diffusion:{path}", "--metrics", "fad",
                 "--num-samples", 128, "--sample-batch", 64, "--data-root", SHARED, "--fad-dir",
                 SHARED / "esvae_fad", *CPU)
    assert res.exit_code == 0, res.output
    out = ckpt.with_name("esvae.pt.eval-reference.diffusion-logit.json")
    got = json.loads(out.read_text())
    assert got["prior"] == "diffusion-logit" and got["prior_file"]["path"] == str(path)
    assert "ESVAE (ours, diffusion-logit prior)" in invoke("compare", out, "--format", "markdown").output
    res = invoke("analyze", "--checkpoint", ckpt, "--prior", f"diffusion:{path}", "--num-images", 16,
                 "--batch-size", 16, "--num-raster", 1, "--data-root", SHARED, "--out-dir", tmp_path, *CPU)
    assert res.exit_code == 0 and "prior (diffusion-logit)" in res.output, res.output
    assert json.loads((tmp_path / "analysis.json").read_text())["prior"] == "diffusion-logit"


def test_prior_fit_refuses_options_of_the_other_kind(diffusion, tmp_path):
    ckpt, path = diffusion
    for args in (("--kind", "diffusion", "--components", 3), ("--epochs", 3)):
        res = invoke("prior", "fit", "--checkpoint", ckpt, *args, "--out", tmp_path / "p.pt", *CPU)
        assert res.exit_code == 2 and "does not apply to --kind" in res.output
        assert not (tmp_path / "p.pt").exists()
    edited = tmp_path / "edited.pt"
    payload = torch.load(path, weights_only=True)
    payload["config"]["sample_steps"] = 3  # a valid config, but not the one the digest covers
    torch.save(payload, edited)
    res = invoke("sample", "--checkpoint", ckpt, "--prior", f"diffusion:{edited}", "--out", tmp_path / "x.png",
                 *CPU)
    assert res.exit_code == 2 and "digest" in res.output.strip().splitlines()[-1]  # one line says why
