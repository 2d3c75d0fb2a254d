"""The three experiment commands end to end on a briefly trained tiny MNIST ESVAE (T=4, L=16, 8-32 chans)."""
import csv
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from spikingjelly_vae.checkpoint import save_checkpoint
from spikingjelly_vae.cli import main

SHARED = Path(os.environ.get("SJVAE_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (SHARED / "MNIST").is_dir(), reason="shared MNIST not found")]


@pytest.fixture
def tiny_mnist(tiny_mnist_checkpoint):
    """conftest's shared small ESVAE (hidden (8, 16, 32, 32), L=16, T=4), 60 steps on 1024 MNIST images."""
    return tiny_mnist_checkpoint


def run(args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_classifier_is_well_above_chance_and_reuses_features(tiny_mnist, tmp_path):
    args = ["classify", "--checkpoint", tiny_mnist, "--data-root", SHARED, "--num-train", 2000,
            "--num-test", 500,
            "--epochs", 20, "--batch-size", 64, "--device", "cpu", "--out-dir", tmp_path]
    r = run(args)
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "classify.json").read_text())
    m = next(iter(res["models"].values()))
    assert m["test_acc"] > 0.35, m  # chance is 0.10
    assert (m["num_train"], m["num_test"], m["latent_dim"]) == (2000, 500, 16)
    assert not m["features_from_cache"]
    assert (tmp_path / "classify.png").stat().st_size > 10_000
    assert len(read_csv(tmp_path / "classify_history.csv")) == 20
    r = run(args)  # features come from the cache; same seed, same accuracy
    res2 = json.loads((tmp_path / "classify.json").read_text())
    m2 = next(iter(res2["models"].values()))
    assert m2["features_from_cache"] and m2["test_acc"] == m["test_acc"]


def test_robustness_commands_write_results_and_are_deterministic(tiny_mnist, tmp_path):
    base = ["robustness", "--checkpoint", tiny_mnist, "--data-root", SHARED, "--num-images", 32,
            "--batch-size", 16,
            "--device", "cpu", "--num-examples", 4]
    for kind in ("shuffle", "flip", "gaussian"):
        r = run(base + ["--kind", kind, "--out-dir", tmp_path / "a"])
        assert r.exit_code == 0, r.output
        rows = read_csv(tmp_path / "a" / f"robustness_{kind}.csv")
        assert len(rows) == (1 if kind == "shuffle" else 6)
        for name in (f"robustness_{kind}.png", f"robustness_{kind}_images_esvae_esvae_tiny.png"):
            assert (tmp_path / "a" / name).stat().st_size > 5_000
        summary = json.loads((tmp_path / "a" / f"robustness_{kind}.json").read_text())
        assert summary["provenance"]["seconds"] > 0 and summary["dataset"] == "mnist"
    flips = read_csv(tmp_path / "a" / "robustness_flip.csv")
    changed = [float(r["changed_fraction"]) for r in flips]
    assert changed == pytest.approx([0.05, 0.10, 0.15, 0.20, 0.25, 0.30], abs=0.02)
    shuffle = read_csv(tmp_path / "a" / "robustness_shuffle.csv")[0]
    assert float(shuffle["mse_vs_clean"]) >= 0.0 and float(shuffle["mse_vs_original"]) > 0.0
    # same seed: identical numbers; another seed: different ones
    run(base + ["--kind", "flip", "--out-dir", tmp_path / "b"])
    assert read_csv(tmp_path / "b" / "robustness_flip.csv") == flips
    run(base + ["--kind", "flip", "--out-dir", tmp_path / "c", "--seed", 1])
    assert read_csv(tmp_path / "c" / "robustness_flip.csv") != flips


def test_analyze_writes_rates_raster_energy_and_history(tiny_mnist, tmp_path):
    r = run(["analyze", "--checkpoint", tiny_mnist, "--history", tiny_mnist, "--data-root", SHARED,
             "--num-images", 40, "--batch-size", 20, "--device", "cpu", "--out-dir", tmp_path])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "analysis.json").read_text())
    rates = res["rates"]
    assert sum(rates["posterior"]["histogram"]) == pytest.approx(1.0) and len(rates["rate_values"]) == 5
    en = res["energy"]
    assert en["reconstruction"]["ac_per_image"] > 0 and en["ann"]["reconstruction"]["mac_per_image"] > 0
    assert en["reconstruction"]["energy_pj_per_image"] == pytest.approx(
        0.9 * en["reconstruction"]["ac_per_image"] + 4.6 * en["reconstruction"]["mac_per_image"])
    ops = read_csv(tmp_path / "layer_ops.csv")
    first = [o for o in ops if o["model"] == "snn" and o["phase"] == "reconstruction"][0]
    assert first["layer"] == "encoder.convs.0.weight_layer" and first["op"] == "MAC"
    assert {o["op"] for o in ops if o["model"] == "snn" and o["layer"].startswith("decoder.")} == {"AC"}
    assert len(res["history"]) == 1
    for name in ("firing_rates.png", "spike_raster.png", "layers.png", "firing_rates_history.png"):
        assert (tmp_path / name).stat().st_size > 5_000


def test_bad_input_gives_one_clear_usage_error(tiny_mnist, tmp_path):
    from spikingjelly_vae.models import ANNVAE

    common = ["--data-root", SHARED, "--device", "cpu", "--out-dir", tmp_path, "--num-images", 8]
    r = run(["robustness", "--checkpoint", tiny_mnist, "--kind", "flip", "--levels", "0.1,1.5", *common])
    assert r.exit_code == 2 and "[0, 1]" in r.output
    r = run(["robustness", "--checkpoint", tiny_mnist, "--kind", "shuffle", "--levels", "0.1", *common])
    assert r.exit_code == 2 and "no level" in r.output
    r = run(["robustness", "--checkpoint", tiny_mnist, "--kind", "flip", "--dataset", "cifar10", *common])
    assert r.exit_code == 2 and "trained on" in r.output
    ann = ANNVAE(1, 8, 32, kld_weight=1.0)
    ann_path = tmp_path / "ann.pt"
    save_checkpoint(ann_path, {"model": ann.state_dict(), "optimizer": None, "epoch": 0, "config": ann.config,
                               "metrics": {}})
    r = run(["analyze", "--checkpoint", ann_path, "--dataset", "mnist", *common])
    assert r.exit_code == 2 and "no latent spikes" in r.output
    from spikingjelly_vae.models import ESVAE

    bare = ESVAE(1, 8, T=2)
    bare_path = tmp_path / "bare.pt"
    save_checkpoint(bare_path, {"model": bare.state_dict(), "optimizer": None, "epoch": 0,
                                "config": bare.config, "metrics": {}})
    r = run(["analyze", "--checkpoint", bare_path, *common])  # no dataset recorded, none given
    assert r.exit_code == 2 and "--dataset" in r.output
    assert not list(tmp_path.glob("*.png"))  # nothing half-written
