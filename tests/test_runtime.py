"""runtime.py: the one device choice, derived seeds and eval_mode."""
import os

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


def test_derived_seed_is_stable_across_processes_and_separates_streams():
    """The same parts give the same seed in another interpreter (a resumed run replays its streams; Python's
    salted hash would not); other parts, or the same parts in another order, give another seed."""
    import subprocess
    import sys
    code = "from spikingjelly_vae.runtime import derived_seed; print(derived_seed(42, 3, 0, 'loader'))"
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert int(other.stdout) == derived_seed(42, 3, 0, "loader")
    seeds = {derived_seed(42, 3, 0, "loader"), derived_seed(42, 3, 1, "loader"), derived_seed(42, 0, 3, "loader"),
             derived_seed(43, 3, 0, "loader"), derived_seed(42, 3, 0, "model")}
    assert len(seeds) == 5 and all(0 <= s < 2 ** 63 for s in seeds)


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
