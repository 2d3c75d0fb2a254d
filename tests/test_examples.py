"""The drop-in example trains a plain SpikingJelly SNN with a PoissonLatent bottleneck."""
import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_poisson_latent_in_your_snn_learns():
    history = load("poisson_latent_in_your_snn").main(["--steps", "40", "--batch", "32", "--T", "4"])
    first = sum(loss for loss, _ in history[:5]) / 5
    last = sum(loss for loss, _ in history[-5:]) / 5
    assert last < first
    assert sum(acc for _, acc in history[-5:]) / 5 > 0.3  # chance is 0.1
