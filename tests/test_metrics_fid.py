"""FID: clean resize = PIL bicubic exactly, the TorchScript Inception, cached statistics, sanity values."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from spikingjelly_vae.metrics.fid import (clean_resize, compute_fid, fast_resize, fid_reference_stats,
                                          inception_features, load_fid_inception, to_pixels)
from spikingjelly_vae.metrics.frechet import frechet_distance, gaussian_stats
from spikingjelly_vae.metrics.resources import MetricUnavailable
from spikingjelly_vae.metrics.sources import collect, dataset_batches

SHARED = Path(os.environ.get("SJVAE_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
INCEPTION = SHARED / "inception" / "fid_inception_2015-12-05_pool3_torchscript.pt"
needs_inception = pytest.mark.skipif(not INCEPTION.is_file() or not (SHARED / "MNIST").is_dir(),
                                     reason="shared Inception TorchScript / MNIST not found")


def _known_image():
    """A 3 x 32 x 32 uint8-valued image: a gradient, a checkerboard and a disc (sharp edges)."""
    i, j = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    r = (i * 8) % 256
    g = ((i // 4 + j // 4) % 2) * 255
    b = (((i - 15.5) ** 2 + (j - 12) ** 2) < 90) * 200 + 30
    return np.stack([r, g, b]).astype(np.float32)


def test_clean_resize_matches_pil_bicubic_exactly():
    img = _known_image()
    got = clean_resize(torch.from_numpy(img)[None], workers=2)[0].numpy()
    for c in range(3):
        want = np.asarray(Image.fromarray(img[c]).resize((299, 299), Image.BICUBIC))
        np.testing.assert_array_equal(got[c], want)


def _pil_bicubic_weights(n_in, n_out, a=-0.5):
    """PIL's upsampling bicubic as a matrix [n_out, n_in]: pixel centres, support 2, edge renormalised."""
    def cubic(x):
        x = abs(x)
        if x < 1:
            return ((a + 2) * x - (a + 3)) * x * x + 1
        if x < 2:
            return (((x - 5) * x + 8) * x - 4) * a
        return 0.0
    scale = n_in / n_out
    w = np.zeros((n_out, n_in))
    for o in range(n_out):
        centre = (o + 0.5) * scale
        lo, hi = max(int(centre - 2 + 0.5), 0), min(int(centre + 2 + 0.5), n_in)
        k = np.array([cubic(x - centre + 0.5) for x in range(lo, hi)])
        w[o, lo:hi] = k / k.sum()
    return w


def test_clean_resize_is_separable_bicubic_with_a_minus_half():
    img = _known_image()
    w = _pil_bicubic_weights(32, 299)
    want = np.einsum("oi,cij,pj->cop", w, img.astype(np.float64), w)
    got = clean_resize(torch.from_numpy(img)[None], workers=1)[0].numpy()
    np.testing.assert_allclose(got, want, atol=2e-3)  # PIL keeps a float32 intermediate


def test_uint8_pil_bicubic_is_not_the_clean_resize():
    # PIL's 8-bit path rounds and clips between the two passes, so it differs from the float path
    img = _known_image()
    l_mode = np.asarray(Image.fromarray(img[1].astype(np.uint8)).resize((299, 299), Image.BICUBIC))
    f_mode = clean_resize(torch.from_numpy(img[1:2])[None])[0, 0].numpy()
    assert np.abs(l_mode - f_mode).max() > 1.0


def test_to_pixels_and_fast_resize():
    x = torch.tensor([[-1.0, 0.0], [0.5, 1.0]]).view(1, 1, 2, 2)
    p = to_pixels(x)
    assert p.shape == (1, 3, 2, 2)
    torch.testing.assert_close(p[0, 2], torch.tensor([[0.0, 127.5], [191.25, 255.0]]))
    const = torch.full((2, 3, 32, 32), 77.0)
    out = fast_resize(const)
    assert out.shape == (2, 3, 299, 299)
    torch.testing.assert_close(out, torch.full_like(out, 77.0))
    torch.testing.assert_close(fast_resize(p), F.interpolate(p, size=(299, 299), mode="bilinear",
                                                             align_corners=False))
    with pytest.raises(ValueError):
        to_pixels(torch.zeros(2, 2, 4, 4))


def test_missing_inception_names_the_option(monkeypatch, tmp_path):
    monkeypatch.delenv("SJVAE_INCEPTION", raising=False)
    with pytest.raises(MetricUnavailable, match="--inception-weights.*SJVAE_INCEPTION"):
        load_fid_inception(None)
    with pytest.raises(MetricUnavailable, match="does not exist"):
        load_fid_inception(tmp_path / "nope.pt")
    with pytest.raises(MetricUnavailable, match="holds none of"):
        load_fid_inception(tmp_path)


@pytest.fixture(scope="module")
def inception():
    return load_fid_inception(INCEPTION)


@pytest.fixture(scope="module")
def mnist():
    from spikingjelly_vae.data import load_dataset
    return {s: load_dataset("mnist", s, root=SHARED) for s in ("train", "test")}


@needs_inception
def test_inception_loads_and_gives_2048_features(inception):
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    clean = inception_features([x], inception, "clean")
    fast = inception_features([x], inception, "fast")
    assert clean.shape == fast.shape == (3, 2048) and clean.dtype == np.float64
    assert np.isfinite(clean).all() and (clean >= 0).all()  # pool3 after ReLU
    assert 0 < np.abs(clean - fast).max()  # the two resizes really differ
    # grey input = the same image repeated to RGB
    np.testing.assert_allclose(inception_features([x.repeat(1, 3, 1, 1)], inception, "clean"), clean, atol=1e-4)
    assert len(inception.sha256) == 64


@needs_inception
def test_reference_stats_are_cached_and_keyed_by_protocol(inception, tmp_path):
    kw = dict(root=SHARED, cache_dir=tmp_path, num=4, batch_size=4)
    a = fid_reference_stats("mnist", "test", inception, "fast", **kw)
    assert not a["cached"] and a["count"] == 4 and a["mu"].shape == (2048,)
    b = fid_reference_stats("mnist", "test", inception, "fast", **kw)
    assert b["cached"] and b["path"] == a["path"]
    np.testing.assert_array_equal(a["sigma"], b["sigma"])
    c = fid_reference_stats("mnist", "test", inception, "clean", **kw)
    assert not c["cached"] and c["path"] != a["path"]
    with np.load(a["path"]) as z:
        assert set(z.files) == {"mu", "sigma", "count", "protocol", "payload_sha256"}
        assert json.loads(str(z["protocol"]))["mode"] == "fast"
    # a file whose stored protocol does not match is recomputed, not reused
    with np.load(a["path"]) as z:
        bad = dict(z)
    bad["protocol"] = np.array(json.dumps({"mode": "other"}))
    np.savez(a["path"], **bad)
    assert not fid_reference_stats("mnist", "test", inception, "fast", **kw)["cached"]


@needs_inception
@pytest.mark.slow
def test_fid_sanity_train_vs_test_small_noise_large(inception, mnist):
    n = 32  # 32 images each, clean mode: FID is biased upwards at this size, so bounds are loose (measured at
    # n = 32: train 83, noise 443; at n = 64: 67 and 435)
    test = inception_features(dataset_batches(mnist["test"], 32, n), inception, "clean")
    train = inception_features(dataset_batches(mnist["train"], 32, n), inception, "clean")
    ref = dict(zip(("mu", "sigma"), gaussian_stats(test)), count=n)
    noise = torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fid_noise = compute_fid([noise], ref, inception, "clean", num=n)
    fid_train = frechet_distance(*gaussian_stats(train), ref["mu"], ref["sigma"])
    assert fid_noise["num_images"] == n
    assert fid_train < 120 and fid_noise["fid"] > 300 and fid_noise["fid"] > 3 * fid_train


def test_collect_truncates():
    x = collect([torch.zeros(4, 1, 2, 2), torch.ones(4, 1, 2, 2)], num=6)
    assert x.shape[0] == 6 and x[5].sum() == 4


@needs_inception
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_features_match_cpu(inception):
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    gpu = load_fid_inception(INCEPTION, "cuda")
    for mode in ("clean", "fast"):
        np.testing.assert_allclose(inception_features([x], gpu, mode), inception_features([x], inception, mode),
                                   rtol=0.05, atol=0.02)  # cuDNN convolutions may use TF32
