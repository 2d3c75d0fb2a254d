"""ESVAE: shapes, parameter counts, loss, sampling, optimisation and input checks."""
import pytest
import torch
import torch.nn.functional as F

from spikingjelly_vae import rbf_mmd
from spikingjelly_vae.checkpoint import CheckpointError, load_model, save_checkpoint
from spikingjelly_vae import registry
from spikingjelly_vae.models import ESVAE, ESVAELarge, build_model, create_model, model_names, register_model
from spikingjelly_vae.models.backbone import HIDDEN

SHARED = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared"
CHECKPOINT = SHARED / "checkpoints" / "esvae_mnist_e20_h200.pt"


def n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("cin,L,size,cls", [(1, 32, 32, ESVAE), (3, 128, 32, ESVAE), (3, 128, 64, ESVAELarge)])
def test_shapes(cin, L, size, cls):
    model = cls(in_channels=cin, latent_dim=L, T=4)
    x = torch.rand(2, cin, size, size) * 2 - 1
    recon, post, prior = model(x, generator=torch.Generator().manual_seed(0))
    assert recon.shape == x.shape and post.shape == (2, L) and prior.shape == (2, L)
    assert recon.abs().max() <= 1
    assert set((post * 4).unique().tolist()) <= set(range(5))  # rates in {0, 1/T, ..., 1}
    x_e, rate = model.encode(x)
    assert x_e.shape == (4, 2, L) and torch.equal(rate, x_e.mean(0))
    assert model.sample(3, generator=torch.Generator().manual_seed(0)).shape == (3, cin, size, size)
    assert model.posterior_spikes(x).shape == (4, 2, L) and model.prior_spikes(5).shape == (4, 5, L)


def test_parameter_counts():
    """reference_spec 2.3: backbone ~1.05 M (32x32, L=128), ~0.85 M (L=32), ~3.68 M (64x64); bottleneck 16.5 k."""
    m = ESVAE(in_channels=3, latent_dim=128)
    bottleneck = n_params(m.prior_layer)
    assert bottleneck == 128 * 128 + 128 == 16512
    assert 1.04e6 < n_params(m) - bottleneck < 1.06e6
    assert 0.84e6 < n_params(ESVAE(1, 32)) - 32 * 33 < 0.86e6
    assert 3.67e6 < n_params(ESVAELarge()) - 16512 < 3.69e6
    # none of FSVAE's prior/posterior networks live inside ESVAE (the official code carries ~3 M unused)
    assert not any("posterior" in k or k.startswith("prior.") for k in m.state_dict())


def test_loss_terms_and_deterministic_forward(tiny_model, random_images):
    model = tiny_model("esvae")
    x = random_images(4)
    out1 = model(x, generator=torch.Generator().manual_seed(3))
    out2 = model(x, generator=torch.Generator().manual_seed(3))
    for a, b in zip(out1, out2):
        assert torch.equal(a, b)
    terms = model.loss(x, out1)
    recon, post, prior = out1
    assert torch.equal(terms["recon"], F.mse_loss(recon, x))
    assert torch.equal(terms["mmd"], rbf_mmd(post, prior))
    assert torch.equal(terms["loss"], terms["recon"] + 1e-3 * terms["mmd"])


def test_gradients_reach_encoder_and_bottleneck(tiny_model, random_images):
    model = tiny_model("esvae")
    x = random_images(8)
    model.loss(x, model(x))["loss"].backward()
    assert model.prior_layer.weight.grad.abs().sum() > 0
    assert model.encoder.convs[0].weight_layer.weight.grad.abs().sum() > 0
    assert model.decoder.to_image.weight_layer.weight.grad.abs().sum() > 0


def test_param_groups_bottleneck_lr(tiny_model):
    model = tiny_model("esvae")
    groups = model.param_groups(0.003)
    assert groups[0]["lr"] == 0.003 and groups[1]["lr"] == pytest.approx(0.03)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert groups[1]["params"][0] is model.prior_layer.weight


def test_optimisation_lowers_loss(trained_tiny_esvae):
    _, _, losses = trained_tiny_esvae  # 30 AdamW steps (lr 3e-3, bottleneck x10, wd 1e-3) on 16 images
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5])


def test_bad_input_messages():
    model = ESVAE(1, 16, T=2)
    with pytest.raises(ValueError, match=r"\[N, 1, 32, 32\]"):
        model(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\[N, 1, 32, 32\]"):
        model(torch.rand(2, 1, 28, 28))
    with pytest.raises(ValueError, match="float"):
        model(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[T, N, 16\]"):
        model.decode(torch.zeros(2, 3, 8))
    with pytest.raises(ValueError, match="image_size"):
        ESVAE(1, 16, image_size=28)
    with pytest.raises(ValueError, match="in_channels"):
        ESVAE(2, 16)


def test_build_model_and_checkpoint_roundtrip(tmp_path, tiny_model):
    model = tiny_model("esvae", 3, 64, T=2)
    clone = build_model(model.config)
    assert isinstance(clone, ESVAE) and clone.image_size == 64 and clone.config == model.config
    path = save_checkpoint(tmp_path / "m.pt", {"model": model.state_dict(), "config": model.config, "epoch": 1})
    loaded, ckpt = load_model(path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    assert ckpt["epoch"] == 1 and "version" in ckpt
    with pytest.raises(CheckpointError, match="expected 'fsvae'"):
        load_model(path, expected_model="fsvae")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a spikingjelly-vae checkpoint"):
        load_model(foreign)
    with pytest.raises(ValueError, match="unknown model"):
        build_model({"model": "vq-vae"})


def test_atomic_save_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "c.pt", {"model": {}, "config": {"model": "esvae"}, "epoch": 1})
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_checkpoint(path, {"model": {}, "config": {}, "epoch": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_builder_registry_names_and_large_builders(monkeypatch):
    """timm-style names; the *_large builders give the plain class at 64x64, whose config names the class."""
    assert {"esvae", "esvae_large", "fsvae", "fsvae_large", "ann-vae", "ann_vae", "ann_vae_large"} <= set(model_names())
    large = create_model("esvae_large", latent_dim=8, T=2, hidden=HIDDEN[64])
    assert type(large) is ESVAE and large.image_size == 64 and large.in_channels == 3
    assert large.config["model"] == "esvae" and ESVAELarge is registry.MODELS["esvae_large"]
    assert build_model({**large.config, "model": "esvae_large"}).config == large.config  # image_size=64 accepted
    with pytest.raises(ValueError, match="esvae_large builds the 64x64 model"):
        create_model("esvae_large", image_size=32)
    assert type(build_model(dict(model="ann_vae", latent_dim=4))).__name__ == "ANNVAE"
    monkeypatch.setattr(registry, "MODELS", {})
    register_model("mine", aliases=("my-model",))(lambda **kw: kw)
    assert create_model("my-model", a=1) == {"a": 1} and registry.model_names() == ["mine", "my-model"]
    with pytest.raises(ValueError, match="already registered"):
        register_model("mine", ESVAE)
    with pytest.raises(ValueError, match="unknown model 'esvae'; choose one of mine, my-model"):
        create_model("esvae")


def test_hidden_builds_a_small_backbone_and_is_kept_in_config():
    model = ESVAE(1, 6, T=3, image_size=8, hidden=(4, 8))
    assert [c.weight_layer.out_channels for c in model.encoder.convs] == [4, 8]
    assert model.encoder.before_latent.weight_layer.in_features == 8 * 2 * 2
    assert [d.weight_layer.out_channels for d in model.decoder.deconvs] == [4, 4]
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    assert model(x, generator=torch.Generator().manual_seed(0))[0].shape == x.shape
    assert model.config["hidden"] == [4, 8] and ESVAE(1, 6).config["hidden"] == list(HIDDEN[32])
    clone = build_model(model.config)
    assert {k: v.shape for k, v in clone.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"take 8x8 images .* got image_size=32"):
        ESVAE(1, 6, hidden=(4, 8))
    with pytest.raises(ValueError, match="channel counts >= 1"):
        ESVAE(1, 6, image_size=8, hidden=(0, 8))


def test_legacy_backend_key_of_old_configs():
    """Configs written before the rename hold 'backend'; build_model reads it as kernel_backend."""
    model = build_model(dict(model="esvae", in_channels=1, image_size=32, latent_dim=4, T=2, backend="torch",
                             hidden=(4, 4, 8, 8)))
    assert model.config["kernel_backend"] == "torch" and "backend" not in model.config
    assert model.latent.kernel_backend == model.encoder.convs[0].lif.kernel_backend == "torch"
    with pytest.raises(TypeError):
        ESVAE(1, 4, backend="torch")  # the constructor takes only the new name


def test_trained_tiny_model_round_trips_through_a_checkpoint(tmp_path, trained_tiny_esvae):
    model, x, _ = trained_tiny_esvae
    save_checkpoint(tmp_path / "t.pt", {"model": model.state_dict(), "config": model.config, "epoch": 20})
    loaded, _ = load_model(tmp_path / "t.pt")
    loaded.eval()
    with torch.no_grad():
        outs = [m(x, generator=torch.Generator().manual_seed(1)) for m in (model, loaded)]
        samples = [m.sample(4, generator=torch.Generator().manual_seed(2)) for m in (model, loaded)]
    for a, b in zip(*outs):
        assert torch.equal(a, b)
    assert torch.equal(*samples)


@pytest.mark.skipif(not CHECKPOINT.is_file() or not (SHARED / "data" / "MNIST" / "raw").is_dir(),
                    reason="needs ../shared/checkpoints/esvae_mnist_e20_h200.pt and ../shared/data/MNIST")
def test_trained_mnist_checkpoint_still_loads_and_reconstructs():
    """The checkpoint written before the refactor (config without 'hidden' / 'kernel_backend') loads strictly and
    reconstructs MNIST test digits with about its recorded test MSE (0.0427 over 10,000 images)."""
    from spikingjelly_vae.data import load_dataset

    model, ckpt = load_model(CHECKPOINT)
    assert sorted(model.state_dict()) == sorted(ckpt["model"]) and model.config["hidden"] == list(HIDDEN[32])
    data = load_dataset("mnist", "test", root=str(SHARED / "data"))
    x = torch.stack([data[i][0] for i in range(8)])
    model.eval()
    with torch.no_grad():
        mse = F.mse_loss(model(x, generator=torch.Generator().manual_seed(0))[0], x).item()
    assert mse < 0.07 < F.mse_loss(torch.zeros_like(x) - 1, x).item()
