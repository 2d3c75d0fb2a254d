"""Official QgZhan/ESVAE checkpoints -> ours (spikingjelly_vae.convert, `sjvae convert-official`).

Two kinds of tests:
- Without the fixtures: the key tables against our models, and round trips of tiny official-layout files made
  from our own models through the tables (both file layouts, every refusal).
- With the official fixtures (the official code at 8c37461, random weights, eval-mode outputs, time-last),
  from the shared folder beside the repository or env SJVAE_OFFICIAL_FIXTURES; skipped without them:
  after `sjvae convert-official` and `checkpoint.load_model`, our maps equal the official outputs.
"""
import copy
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from spikingjelly.activation_based.functional import reset_net

from spikingjelly_vae.checkpoint import load_model
from spikingjelly_vae.cli import main
from spikingjelly_vae.convert import ConversionError, convert_official, key_table
from spikingjelly_vae.layer import TemporalConv2d, TemporalLinear
from spikingjelly_vae.models.fsvae import run_prefix, run_step
from spikingjelly_vae.neuron import PaperLIFNode
from conftest import tiny

FIXTURES = Path(os.environ.get("SJVAE_OFFICIAL_FIXTURES",
                               Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "official"))
UNUSED_IN_ESVAE = ("prior.", "posterior.")  # the official ESVAE's FSVAE modules
CASES = {"esvae_mnist": ("esvae", "mnist"), "esvae_celeba": ("esvae", "celeba"),
         "fsvae_mnist": ("fsvae", "mnist"), "annvae_mnist": ("ann-vae", "mnist")}


def time_first(x: torch.Tensor) -> torch.Tensor:
    """Official (N, C, T) -> ours [T, N, C]."""
    return x.permute(2, 0, 1)


# ------------------------------------------------------------------ official-layout files from our models
def official_state(model: torch.nn.Module, name: str) -> dict:
    """The state_dict the official code would hold for `model`: the key table read backwards, Conv3d weights
    with their time axis, the fixed buffers, and (ESVAE) the unused FSVAE modules it carries."""
    ours, cfg = model.state_dict(), model.config
    stages = len(cfg["hidden"])
    state = {}
    for official, our in key_table(name, stages):
        if our is not None:
            value = ours[our].clone()
            state[official] = value.unsqueeze(-1) if value.dim() == 4 and name != "ann-vae" else value
    if name == "ann-vae":
        return state
    T, L = cfg["T"], cfg["latent_dim"]
    state["membrane_output_layer.coef"] = torch.pow(0.8, torch.arange(T - 1, -1, -1)).view(1, 1, 1, 1, T)
    if name == "esvae":  # the FSVAE prior and posterior the official ESVAE builds (k = 20), zeroed
        fsvae = official_state(tiny("fsvae", image_size=cfg["image_size"], latent_dim=L, T=T, k=20), "fsvae")
        state.update({k: torch.zeros_like(v) for k, v in fsvae.items() if k.startswith(UNUSED_IN_ESVAE)})
    else:
        state["posterior.initial_input"] = torch.zeros(1, L, 1)
        state["prior.initial_input"] = torch.zeros(1, L, 1)
    return state


def randomised(name: str, image_size: int = 32, in_channels: int = 1, seed: int = 0) -> torch.nn.Module:
    """A tiny model with random BN affine parameters and running statistics (a swapped key would show)."""
    torch.manual_seed(seed)
    model = tiny(name, in_channels=in_channels, image_size=image_size)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                var = key.endswith("running_var")
                value.copy_(torch.rand_like(value) + 0.5 if var else torch.randn_like(value))
    return model.eval()


def save_official(state: dict, path: Path, layout: str = "plain", epoch: int = 7) -> Path:
    torch.save(state if layout == "plain" else {"net": state, "epoch": epoch}, path)
    return path


@pytest.mark.parametrize("name", ["esvae", "fsvae", "ann-vae"])
@pytest.mark.parametrize("image_size", [32, 64])
def test_key_table_fills_every_key_of_ours_once(name, image_size):
    """Every key of our model comes from exactly one official key; no official key is listed twice."""
    model = tiny(name, image_size=image_size)
    rows = key_table(name, len(model.config["hidden"]))
    ours = [our for _, our in rows if our is not None]
    assert sorted(ours) == sorted(model.state_dict())
    assert len({official for official, _ in rows}) == len(rows)


@pytest.mark.parametrize("name", ["esvae", "fsvae", "ann-vae"])
@pytest.mark.parametrize("layout, dataset, size", [("plain", "cifar10", 32), ("wrapped", "cifar10", 32),
                                                   ("plain", "celeba", 64)])
def test_round_trip_restores_the_model(tmp_path, name, layout, dataset, size):
    """An official-layout file of a tiny model converts back to the same weights, config and outputs, and the
    result loads through the package's own checkpoint loader with its provenance (64x64: the Large classes)."""
    model = randomised(name, image_size=size, in_channels=3)
    src = save_official(official_state(model, name), tmp_path / "best.pth", layout, epoch=41)
    res = convert_official(src, name, dataset, tmp_path / "ours.pt")
    loaded, ckpt = load_model(tmp_path / "ours.pt")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert loaded.config == model.config
    assert ckpt["dataset"] == dataset and ckpt["official"]["source_sha256"] == res["source_sha256"]
    official_class = {"esvae": "ESVAE", "fsvae": "FSVAE", "ann-vae": "VanillaVAE"}[name]
    assert ckpt["official"]["class"] == official_class + ("Large" if size == 64 else "")
    assert ckpt["epoch"] == (42 if layout == "wrapped" else None)
    x = torch.rand(2, 3, size, size) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.eval().encode(x)[1], model.encode(x)[1])


def test_esvae_without_the_unused_fsvae_modules_converts(tmp_path):
    """The dropped prior/posterior of the official ESVAE are optional (a trimmed file still converts)."""
    model = randomised("esvae")
    state = {k: v for k, v in official_state(model, "esvae").items() if not k.startswith(UNUSED_IN_ESVAE)}
    res = convert_official(save_official(state, tmp_path / "a.pth"), "esvae", "mnist", tmp_path / "a.pt")
    assert res["dropped_keys"] == 1  # the readout coefficients only


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update(extra=torch.zeros(1)), "unexpected key 'extra'"),
    (lambda s: s.pop("decoder_input.bn.running_var"), "missing key 'decoder_input.bn.running_var'"),
    (lambda s: s.update({"decoder_input.bias": torch.zeros(3)}), "decoder_input.bias has shape (3,)"),
    (lambda s: s["membrane_output_layer.coef"].mul_(2), "membrane_output_layer.coef"),
    (lambda s: s["prior.initial_input"].add_(1), "prior.initial_input is not zero"),
])
def test_anything_else_is_refused_naming_the_key(tmp_path, change, message):
    state = official_state(randomised("fsvae"), "fsvae")
    change(state)
    with pytest.raises(ConversionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        convert_official(save_official(state, tmp_path / "x.pth"), "fsvae", "mnist", tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_existing_out_is_kept_unless_force_and_never_the_source(tmp_path):
    src = save_official(official_state(randomised("ann-vae"), "ann-vae"), tmp_path / "best.pth")
    out = tmp_path / "ours.pt"
    out.write_bytes(b"keep me")
    with pytest.raises(ConversionError, match="already exists: pass --force"):
        convert_official(src, "ann-vae", "mnist", out)
    assert out.read_bytes() == b"keep me"
    convert_official(src, "ann-vae", "mnist", out, force=True)
    assert load_model(out)[1]["config"]["model"] == "ann-vae"
    before = src.read_bytes()
    with pytest.raises(ConversionError, match="is the official file itself"):
        convert_official(src, "ann-vae", "mnist", src, force=True)
    assert src.read_bytes() == before


def test_converted_checkpoint_serves_the_checkpoint_commands(tmp_path):
    """`sjvae convert-official` output goes straight into `sample` and `info` (dataset, epoch of the file)."""
    src = save_official(official_state(randomised("esvae"), "esvae"), tmp_path / "best_fid.pth", "wrapped", 7)
    dst, runner = tmp_path / "esvae.pt", CliRunner()
    res = runner.invoke(main, ["convert-official", str(src), "--model", "esvae", "--dataset", "mnist",
                               "--out", str(dst)])
    assert res.exit_code == 0 and "official ESVAE ({'net', 'epoch'}, epoch 7)" in res.output, res.output
    res = runner.invoke(main, ["sample", "--checkpoint", str(dst), "-n", "3", "--out", str(tmp_path / "s.pt"),
                               "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert torch.load(tmp_path / "s.pt", weights_only=True).shape == (3, 1, 32, 32)
    res = runner.invoke(main, ["info", "--checkpoint", str(dst), "--json", "--device", "cpu"])
    info = json.loads(res.output)
    assert info["checkpoint"]["epoch"] == 8 and info["checkpoint"]["dataset"] == "mnist"


# ------------------------------------------------------------------ eval-mode arithmetic of the official layers
def reference_tdbn(x: torch.Tensor, bn) -> torch.Tensor:
    """The official tdBatchNorm in eval mode, written out on its time-last (N, C, H, W, T) tensor."""
    mean, var = bn.running_mean[None, :, None, None, None], bn.running_var[None, :, None, None, None]
    y = bn.alpha * 0.2 * (x - mean) / (torch.sqrt(var + bn.eps))
    return y * bn.weight[None, :, None, None, None] + bn.bias[None, :, None, None, None]


def reference_lif(x: torch.Tensor) -> torch.Tensor:
    """The official LIFSpike on time-last x: u = 0.25 u (1 - o) + x, o = 1[u > 0.2]."""
    u, out = torch.zeros(x.shape[:-1]), torch.zeros(x.shape)
    for t in range(x.shape[-1]):
        u = 0.25 * u * (1 - out[..., max(t - 1, 0)]) + x[..., t]
        out[..., t] = torch.gt(u, 0.2).float()
    return out


def _randomise_bn(bn, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        c = bn.num_features
        bn.weight.copy_(torch.rand(c, generator=g) * 0.8 + 0.8)
        bn.bias.copy_(torch.rand(c, generator=g) * 0.3 - 0.05)
        bn.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
        bn.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.01)


@pytest.mark.parametrize("alpha", [1.0, 2.0])  # 2: the FSVAE posterior and prior MLPs
def test_eval_tdbn_rounds_as_the_official_code(alpha):
    """Eval-mode tdBN computes the official expression term by term, so a converted checkpoint's currents are
    the official ones bit for bit (torch's batch_norm folds it into one affine map, a few ulp apart, and then
    a spike at the threshold flips: seen on official FSVAE CIFAR-10 posterior MLPs). Linear blocks (tdLinear:
    the same matmul per step) then give the official spikes exactly, on any seed."""
    torch.manual_seed(0)
    block = TemporalLinear(256, 2560, alpha=alpha, kernel_backend="torch")
    _randomise_bn(block.bn, 1)
    block.eval()
    x = (torch.rand(16, 8, 256) < 0.3).float()  # [T, N, C] spikes, as the MLPs see
    with torch.no_grad():
        current = block.weight_layer(x)
        ours = block.bn(current)
        official_current = F.linear(x.permute(1, 0, 2), block.weight_layer.weight, block.weight_layer.bias)
        official = reference_tdbn(official_current.permute(0, 2, 1)[:, :, None, None, :], block.bn)
        reset_net(block)
        spikes = block(x)
    assert torch.equal(ours, official[:, :, 0, 0, :].permute(2, 0, 1))
    assert torch.equal(spikes, reference_lif(official[:, :, 0, 0, :]).permute(2, 0, 1))
    assert 0.05 < spikes.mean() < 0.95
    conv = TemporalConv2d(4, 6, alpha=alpha).eval()  # conv currents: the same per-element map
    _randomise_bn(conv.bn, 2)
    y = torch.randn(3, 2, 6, 5, 5)
    with torch.no_grad():
        want = reference_tdbn(y.permute(1, 2, 3, 4, 0), conv.bn).permute(4, 0, 1, 2, 3)
        assert torch.equal(conv.bn(y), want)


# ------------------------------------------------------------------ bad input through the real CLI
class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this-ran",))


def _bad_inputs(tmp: Path) -> dict:
    official = save_official(official_state(randomised("esvae"), "esvae"), tmp / "esvae.pth")
    data = official.read_bytes()
    (tmp / "notes.txt").write_text("not a checkpoint\n")
    (tmp / "truncated.pth").write_bytes(data[: len(data) // 2])
    torch.save({"net": {"x": _RunsCode()}}, tmp / "code.pth")
    (tmp / "code.pkl").write_bytes(pickle.dumps(_RunsCode()))
    fsvae = save_official(official_state(randomised("fsvae"), "fsvae"), tmp / "fsvae.pth")
    return {  # name: (SRC, --model, --dataset, words the one line must hold)
        "not a checkpoint": (tmp / "notes.txt", "esvae", "mnist", "not a PyTorch checkpoint"),
        "truncated": (tmp / "truncated.pth", "esvae", "mnist", "truncated or corrupt"),
        "code in a torch file": (tmp / "code.pth", "esvae", "mnist", "could run code: refused"),
        "code in a plain pickle": (tmp / "code.pkl", "esvae", "mnist", "imports code when loaded: refused"),
        "another model": (fsvae, "esvae", "mnist", "FSVAE checkpoint, not ESVAE: pass --model fsvae"),
        "another image size": (official, "esvae", "celeba", "takes 1x32x32 images but celeba images are 3x"),
        "missing file": (tmp / "absent.pth", "esvae", "mnist", "does not exist"),
    }


def test_bad_input_gets_one_line_in_a_subprocess(tmp_path, one_thread):
    for name, (src, model, dataset, words) in _bad_inputs(tmp_path).items():
        out = tmp_path / "out.pt"
        args = ["convert-official", str(src), "--model", model, "--dataset", dataset, "--out", str(out)]
        res = subprocess.run([sys.executable, "-m", "spikingjelly_vae.cli", *args], capture_output=True,
                             text=True, timeout=300,  # SpikingJelly 0.0.0.0.14 warns about torch.jit at import
                             env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore::FutureWarning"})
        lines = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
        assert res.returncode == 1, (name, res.stdout, res.stderr)
        assert len(lines) == 1 and lines[0].startswith("Error: ") and words in lines[0], (name, lines)
        assert "this-ran" not in res.stdout and not out.exists(), name


# ------------------------------------------------------------------ the official fixtures
@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """name -> (our model from `sjvae convert-official` + load_model, official io, checkpoint); both layouts
    convert to the same file contents."""
    if not FIXTURES.is_dir():
        pytest.skip(f"official fixtures not found at {FIXTURES} (set SJVAE_OFFICIAL_FIXTURES)")
    tmp, runner, out = tmp_path_factory.mktemp("official"), CliRunner(), {}
    for name, (model, dataset) in CASES.items():
        fixture = torch.load(FIXTURES / f"{name}.pt", weights_only=True)
        models = []
        for layout in ("plain", "wrapped"):
            src = save_official(fixture["checkpoint"], tmp / f"{name}-{layout}.pth", layout)
            dst = tmp / f"{name}-{layout}.pt"
            res = runner.invoke(main, ["convert-official", str(src), "--model", model, "--dataset", dataset,
                                       "--out", str(dst)])
            assert res.exit_code == 0, res.output
            models.append(load_model(dst))
        (plain, ckpt), (wrapped, _) = models
        pairs = zip(plain.state_dict().values(), wrapped.state_dict().values())
        assert all(torch.equal(a, b) for a, b in pairs)
        assert ckpt["official"]["class"] == fixture["source"]["class"]
        out[name] = (plain.eval(), fixture["io"], ckpt)
    return out


def _decoder_margin(model, z: torch.Tensor):
    """Float64 decode, and the smallest |h - v_th| over the decoder's LIF membranes (exact arithmetic)."""
    model = copy.deepcopy(model).double()
    lifs = [m for m in model.decoder.modules() if isinstance(m, PaperLIFNode)]
    for lif in lifs:
        lif.store_v_seq = True
    images = model.decode(z.double())
    return images, min((lif.v_seq - lif.v_threshold).abs().min().item() for lif in lifs)


def assert_decode_matches(model, z, official):
    """decode(z) equals the official x_recon within float32 tolerance. The official code sums its convolutions
    in another order (conv3d on time-last tensors), so a decoder spike may flip where a membrane lies within
    float32 rounding of the threshold; such pixels are allowed only if exact (float64) arithmetic sits at the
    threshold there and agrees with our float32 result, and they stay a tiny fraction."""
    with torch.no_grad():
        ours = model.decode(z)
        far = (ours - official).abs() > 2e-6
        if far.any():
            exact, margin = _decoder_margin(model, z)
            assert margin < 1e-6 and far.float().mean() < 1e-3
            assert torch.allclose(ours[far].double(), exact[far], atol=1e-5)


@pytest.mark.parametrize("name", ["esvae_mnist", "esvae_celeba", "fsvae_mnist"])
def test_encoder_rates_and_decoder_equal_the_official(official, name):
    model, io, _ = official[name]
    with torch.no_grad():
        x_e, rates = model.encode(io["x"])
    assert torch.equal(rates, io["rates_q"])  # spikes exactly: every rate is a count / T
    assert rates.min() < rates.max()  # the network is active in eval mode
    assert_decode_matches(model, time_first(io["z"]), io["x_recon"])


@pytest.mark.parametrize("name", ["esvae_mnist", "esvae_celeba"])
def test_esvae_bottleneck_equals_the_official_sample_layer(official, name):
    model, io, ckpt = official[name]
    with torch.no_grad():
        rates = model.bottleneck(io["z_n"])
    torch.testing.assert_close(rates, io["rates_p"], rtol=0, atol=1e-6)
    assert ckpt["config"]["latent_dim"] == io["z_n"].shape[1]


def test_fsvae_posterior_and_prior_maps_equal_the_official(official):
    """posterior.layers / prior.layers of the official code, as one multi-step pass and as our eval-mode
    stepwise pass (the one reconstruction and sampling use): the same spikes."""
    model, io, _ = official["fsvae_mnist"]
    for part, key in ((model.posterior, "posterior"), (model.prior, "prior")):
        x, want = time_first(io[f"{key}_in"]), time_first(io[f"{key}_out"])
        with torch.no_grad():
            full = run_prefix(part.mlp, x)
            reset_net(part.mlp)
            steps = torch.stack([run_step(part.mlp, x_t) for x_t in x])
        assert torch.equal(full, want) and torch.equal(steps, want), key
        assert 0 < want.mean() < 1


def test_ann_vae_encode_and_decode_equal_the_official(official):
    model, io, ckpt = official["annvae_mnist"]
    with torch.no_grad():
        mu, log_var = model.encode(io["x"])
        images = model.decode(io["z"])
    torch.testing.assert_close(mu, io["mu"], rtol=0, atol=1e-5)
    torch.testing.assert_close(log_var, io["log_var"], rtol=0, atol=1e-5)
    torch.testing.assert_close(images, io["x_recon"], rtol=0, atol=1e-6)
    assert ckpt["official"]["class"] == "VanillaVAE"
