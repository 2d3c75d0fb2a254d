"""runtime.py: the one device choice, derived seeds and eval_mode."""
import pytest
import torch

from spikingjelly_vae.runtime import derived_seed, eval_mode, resolve_device


def test_resolve_device_default_and_errors():
    want = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert str(resolve_device()) == str(resolve_device("auto")) == str(resolve_device(None)) == want
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="use auto, cpu or cuda"):
        resolve_device("tpu:0")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("not a device")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cpu"):
            resolve_device("cuda")


def test_derived_seed_is_sha256_of_the_parts():
    import hashlib
    digest = hashlib.sha256(b"42:3:0:loader").digest()
    assert derived_seed(42, 3, 0, "loader") == int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
    assert derived_seed(42, 3, 0, "loader") != derived_seed(42, 3, 1, "loader")
    assert 0 <= derived_seed(0) < 2 ** 63


def test_eval_mode_restores_the_mode_also_on_error():
    net = torch.nn.Sequential(torch.nn.Dropout(0.5))
    with eval_mode(net):
        assert not net.training and not net[0].training
    assert net.training and net[0].training
    net.eval()
    with pytest.raises(RuntimeError):
        with eval_mode(net):
            raise RuntimeError("boom")
    assert not net.training
    net.train()
    with pytest.raises(RuntimeError):
        with eval_mode(net):
            raise RuntimeError("boom")
    assert net.training
