"""Shared fixtures of the model tests: tiny backbones (few channels, small T and latent) and images.

A full-size backbone (32..256 or 32..512 channels) is only needed where the architecture itself is tested
(parameter counts, layer lists); everything else builds these.
"""
import os
from pathlib import Path

import pytest
import torch

from spikingjelly_vae.models import build_model

# the shared data (MNIST, FAD files, ...) beside the repository, or env SJVAE_TEST_DATA
SHARED_DATA = Path(os.environ.get("SJVAE_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

# conv channels per stage of the tiny backbones: 4 stages for 32x32 images, 5 for 64x64 (2 * 2**stages); 8x8
# images (2 stages) where the image size does not matter (the CPU conv-transpose cost grows with the pixels)
TINY_HIDDEN = {8: (4, 8), 32: (4, 4, 8, 8), 64: (4, 4, 8, 8, 8)}
TINY_KWARGS = {"esvae": dict(latent_dim=8, T=4), "fsvae": dict(latent_dim=8, T=4, k=3),
               "ann-vae": dict(latent_dim=8)}


def tiny(name: str, in_channels: int = 1, image_size: int = 32, **kwargs) -> torch.nn.Module:
    """``build_model`` of a tiny ``name`` model; ``kwargs`` override the tiny defaults."""
    config = dict(model=name, in_channels=in_channels, image_size=image_size, hidden=TINY_HIDDEN[image_size],
                  **{**TINY_KWARGS[name], **kwargs})
    return build_model(config)


def images(n: int, in_channels: int = 1, image_size: int = 32, seed: int = 0) -> torch.Tensor:
    """``n`` random images in [-1, 1) from a fixed generator."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, in_channels, image_size, image_size, generator=gen) * 2 - 1


@pytest.fixture
def tiny_model():
    """Factory: ``tiny_model("esvae", in_channels=1, image_size=32, **overrides)``, initialised from seed 0."""
    def make(name: str, *args, seed: int = 0, **kwargs):
        torch.manual_seed(seed)
        return tiny(name, *args, **kwargs)

    return make


@pytest.fixture
def random_images():
    """Factory: ``random_images(n, in_channels=1, image_size=32, seed=0)``."""
    return images


def train_steps(model, x, steps: int, lr: float, seed: int = 0, **adamw):
    """``steps`` AdamW steps of ``model.loss`` on the batch ``x``; returns the loss of every step."""
    opt = torch.optim.AdamW(model.param_groups(lr), **adamw)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        terms = model.loss(x, model(x, generator=gen))
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        losses.append(terms["loss"].item())
    return losses


@pytest.fixture(scope="module")
def untrained_esvae():
    """(ESVAE(1, L 8, T 4) in eval mode from seed 0, 48 random images in [-1, 1]); shared, read-only."""
    torch.manual_seed(0)
    model = build_model({"model": "esvae", "in_channels": 1, "latent_dim": 8, "T": 4}).eval()
    images = torch.rand(48, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    return model, images


@pytest.fixture(scope="session")
def trained_tiny_esvae():
    """A tiny ESVAE (8x8 images, hidden (4, 8), L 8, T 4) after 30 AdamW steps (lr 3e-3, bottleneck x10,
    wd 1e-3) on 16 fixed images: ``(model in eval mode, images, losses)``; shared, read-only."""
    torch.manual_seed(0)
    model = tiny("esvae", image_size=8)
    x = images(16, image_size=8)
    losses = train_steps(model, x, 30, 3e-3, weight_decay=1e-3)
    return model.eval(), x, losses


@pytest.fixture
def adamw_steps():
    """The function ``train_steps(model, x, steps, lr, seed=0, **adamw)`` -> losses."""
    return train_steps


@pytest.fixture(scope="session")
def sjvae_cache(request, tmp_path_factory):
    """Cache folder for extracted archives and resident-data files: pytest's cache (.pytest_cache/d/, kept
    across runs, so the 60k CIFAR-10 JPEGs are extracted once) or, under -p no:cacheprovider, a temporary
    folder of this session."""
    cache = getattr(request.config, "cache", None)
    return cache.mkdir("sjvae_cache") if cache is not None else tmp_path_factory.mktemp("sjvae_cache")


@pytest.fixture(scope="session")
def tiny_mnist_checkpoint(tmp_path_factory):
    """Path of a checkpoint (dataset mnist, epoch 60) of a small ESVAE (hidden (8, 16, 32, 32), L 16, T 4)
    after 60 AdamW steps (lr 3e-3, wd 1e-3) of batch 32 on the first 1024 MNIST training images; shared,
    read-only. Its latent rates classify 0.58 of 500 test digits (hidden (4, 4, 8, 8): 0.37, too close to the
    0.35 bound of test_experiments_mnist). Training runs get a tiny backbone with model_kwargs={"hidden":
    [4, 4, 8, 8]} (TrainConfig) or `--model-opt hidden=4,4,8,8` (CLI)."""
    from spikingjelly_vae.checkpoint import save_checkpoint
    from spikingjelly_vae.data import load_dataset

    if not (SHARED_DATA / "MNIST").is_dir():
        pytest.skip("shared MNIST not found")
    torch.manual_seed(0)
    ds = load_dataset("mnist", "train", root=SHARED_DATA)
    x = torch.stack([ds[i][0] for i in range(1024)])
    model = build_model(dict(model="esvae", in_channels=1, image_size=32, latent_dim=16, T=4,
                             hidden=(8, 16, 32, 32)))
    opt = torch.optim.AdamW(model.param_groups(3e-3), weight_decay=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        batch = x[torch.randint(0, len(x), (32,), generator=g)]
        loss = model.loss(batch, model(batch, generator=g))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path_factory.mktemp("tiny_mnist") / "esvae_tiny.pt"
    save_checkpoint(path, {"model": model.state_dict(), "optimizer": None, "epoch": 60,
                           "config": model.config, "metrics": {}, "dataset": "mnist"})
    return path


@pytest.fixture
def one_thread():
    """One intra-op thread, as in the CLI subprocesses of the resume tests, so float reductions match bit for bit."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def assert_same_state(a: dict, b: dict) -> None:
    """Two state dicts hold the same keys and bit-equal tensors."""
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture
def same_training_state():
    """Checks that two checkpoints hold bit-equal weights and (unless `optimizer=False`) AdamW state."""
    def check(a: dict, b: dict, *, optimizer: bool = True) -> None:
        assert_same_state(a["model"], b["model"])
        for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()) if optimizer else ():
            assert_same_state(sa, sb)
    return check
