"""`reproduce`: budgeted calls resume exactly, evaluation only after the schedule, table1.json fields."""
import json
import os
from pathlib import Path

import pytest
import torch

from spikingjelly_vae import reproduce as rp
from spikingjelly_vae.checkpoint import load_checkpoint

SHARED = Path(os.environ.get("SJVAE_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
pytestmark = pytest.mark.skipif(not (SHARED / "MNIST").is_dir(), reason="shared data not found")
TINY = {"batch_size": 16, "latent_dim": 8, "train_subset": 48, "test_subset": 16, "grid_images": 8,
        "epochs": 3, "model_kwargs": {"hidden": [4, 4, 8, 8]}}  # tiny backbones (conftest.TINY_HIDDEN[32])
TINY_SPIKING = {**TINY, "T": 4}
FAST_EVAL = {"num_samples": 128, "sample_batch": 64, "mse_num": 32}
FAST_ROBUST = {"num_images": 16, "batch_size": 16, "num_examples": 2}


@pytest.fixture(autouse=True)
def quiet_env(monkeypatch):
    """No FID/IS weights from the environment (so both are reported unavailable); one thread (exact sums)."""
    for name in ("SJVAE_INCEPTION", "SJVAE_IS_WEIGHTS", "SJVAE_FAD"):
        monkeypatch.delenv(name, raising=False)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def run(out, **kw):
    args = dict(dataset="mnist", out=out, models=["esvae"], data_root=str(SHARED), device="cpu",
                fad_dir=str(SHARED / "esvae_fad"), preset_overrides={"esvae": TINY_SPIKING},
                eval_options=FAST_EVAL, robustness_options=FAST_ROBUST, log=lambda msg: None)
    return rp.reproduce(**{**args, **kw})


def test_should_stop_rules():
    assert not rp.should_stop(remaining_s=-5.0, next_seconds=10.0, units_done=0)  # the first unit always runs
    assert rp.should_stop(remaining_s=9.0, next_seconds=10.0, units_done=1)
    assert not rp.should_stop(remaining_s=11.0, next_seconds=10.0, units_done=1)
    assert rp.should_stop(remaining_s=1e6, next_seconds=None, units_done=1)  # unknown cost: next call
    assert not rp.should_stop(remaining_s=None, next_seconds=None, units_done=5)  # no budget


def test_budgeted_calls_stop_inside_epochs_and_equal_one_call(tmp_path):
    whole = run(tmp_path / "whole")
    assert whole["complete"] and whole["models"]["esvae"]["calls"] == 1
    split_out = tmp_path / "split"
    eval_file = split_out / "mnist" / "esvae" / rp.EVAL_FILE
    positions = []
    for _ in range(20):  # a budget of 6 ms: each call runs one step (or one test pass), then saves and stops
        res = run(split_out, budget_minutes=1e-4)
        if res["complete"]:
            break
        st = res["models"]["esvae"]
        assert st["stopped"] == "budget" and not st["complete"]
        assert not eval_file.exists()  # no evaluation before the schedule is complete
        positions.append((st["epochs_done"], (st["in_epoch"] or {}).get("batch", 0)))
        table = json.loads((split_out / "mnist" / "table1.json").read_text())
        assert table["progress"]["esvae"]["epochs_done"] == st["epochs_done"]
        assert all(r["kind"] == "published" for r in table["rows"])
    # 3 steps per epoch: the work of each call is kept inside the epoch; the test pass is a call's first unit
    assert positions == [(0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3), (2, 0), (2, 1), (2, 2), (2, 3)]
    assert res["complete"] and eval_file.is_file()
    state = json.loads((split_out / "mnist" / "esvae" / rp.STATE_FILE).read_text())
    assert len(state["calls"]) == 12 and sum(c["steps"] for c in state["calls"]) == 9

    a = load_checkpoint(tmp_path / "whole" / "mnist" / "esvae" / "last.pt")
    b = load_checkpoint(split_out / "mnist" / "esvae" / "last.pt")
    assert a["epoch"] == b["epoch"] == 3
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)

    # a rerun on a complete folder neither trains nor evaluates, unless asked to re-evaluate
    stamp = eval_file.stat().st_mtime_ns
    res = run(split_out)
    assert res["models"]["esvae"]["calls"] == 12 and eval_file.stat().st_mtime_ns == stamp
    run(split_out, reevaluate=True)
    assert eval_file.stat().st_mtime_ns != stamp


def test_table1_json_holds_the_fields(tmp_path):
    run(tmp_path, max_epochs_per_call=2)
    res = run(tmp_path, max_epochs_per_call=2)
    assert res["complete"]
    folder = tmp_path / "mnist"
    table = json.loads((folder / "table1.json").read_text())
    measured = [r for r in table["rows"] if r["kind"] == "measured"]
    published = [r for r in table["rows"] if r["kind"] == "published"]
    assert {r["model"] for r in published} == {"ann-vae", "fsvae", "esvae"}
    assert len(measured) == 1 and measured[0]["model"] == "esvae"
    row = measured[0]
    assert row["mse"] is not None and row["fad"] is not None  # measured: whole-split protocol, official AE
    assert row["fid"] is None and row["is"] is None and set(row["unavailable"]) == {"fid", "is"}
    evaluation = json.loads((folder / "esvae" / rp.EVAL_FILE).read_text())
    assert "SJVAE_INCEPTION" in evaluation["unavailable"]["fid"]  # the reason says what to pass
    assert evaluation["metrics"]["fad"]["num_images"] == 128
    prov = table["provenance"]
    assert prov["commit"] and prov["device"] == "cpu"
    assert {"torch", "cuda", "cupy", "spikingjelly", "python"} <= set(prov["versions"])
    model = prov["models"]["esvae"]
    assert model["epochs"] == model["epochs_total"] == 3 and model["wall_seconds"] > 0
    assert [c["epochs"] for c in model["calls"]] == [2, 1] and model["seed"] == 42
    assert prov["seeds"] == {"train": 42, "evaluation": 42}
    robust = model["evaluated"]["robustness"]
    assert set(robust) == {"shuffle", "flip", "gaussian"}
    assert robust["shuffle"]["levels"] == [None] and len(robust["gaussian"]["levels"]) == 6
    assert (folder / "esvae" / "robustness" / "robustness_gaussian.png").is_file()
    md = (folder / "table1.md").read_text()
    assert "ESVAE (ours)" in md and "0.013 P" in md and "3/3 epochs" in md


def test_baselines_without_robustness(tmp_path):
    res = run(tmp_path, models=["fsvae", "ann-vae"], eval_options={**FAST_EVAL, "metrics": ("mse",)},
              preset_overrides={"fsvae": {**TINY_SPIKING, "epochs": 1}, "ann-vae": {**TINY, "epochs": 1}})
    assert res["complete"]
    rows = [r for r in res["table"]["rows"] if r["kind"] == "measured"]
    assert sorted(r["model"] for r in rows) == ["ann-vae", "fsvae"]
    for model in ("fsvae", "ann-vae"):
        state = json.loads((tmp_path / "mnist" / model / rp.STATE_FILE).read_text())
        assert state["evaluated"]["robustness"] is None


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="models must be"):
        run(tmp_path, models=["esvae", "taid"])
    with pytest.raises(ValueError, match="unknown dataset"):
        run(tmp_path, dataset="svhn")
    with pytest.raises(ValueError, match="budget_minutes"):
        run(tmp_path, budget_minutes=0)
    run(tmp_path, preset_overrides={"esvae": {**TINY_SPIKING, "epochs": 2}}, max_epochs_per_call=1)
    with pytest.raises(ValueError, match="other training options"):
        run(tmp_path, preset_overrides={"esvae": {**TINY_SPIKING, "epochs": 5}})
    foreign = tmp_path / "other"
    (foreign / "mnist" / "esvae").mkdir(parents=True)
    (foreign / "mnist" / "esvae" / "last.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match="did not start"):
        run(foreign)


def test_example_script_quick(tmp_path, capsys):
    import importlib.util
    path = Path(__file__).resolve().parents[1] / "examples" / "reproduce_table1.py"
    spec = importlib.util.spec_from_file_location("reproduce_table1", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    res = module.main(["--dataset", "mnist", "--models", "esvae", "--out", str(tmp_path), "--data-root",
                       str(SHARED), "--device", "cpu", "--quick", "--budget-minutes", "0.0001"])
    assert res["models"]["esvae"]["in_epoch"] == {"batch": 1, "batches": 2} and not res["complete"]
    assert "esvae: 0/2 epochs + 1/2 steps of epoch 1" in capsys.readouterr().out


def test_a_call_killed_in_its_first_epoch_is_started_over(tmp_path):
    run_dir = tmp_path / "mnist" / "esvae"
    run_dir.mkdir(parents=True)
    (run_dir / "train_config.json").write_text("{}")  # what fit writes before the first epoch ends
    (run_dir / "log.csv").write_text("epoch\n")
    res = run(tmp_path, preset_overrides={"esvae": {**TINY_SPIKING, "epochs": 1}},
              eval_options={**FAST_EVAL, "metrics": ("mse",)})
    assert res["complete"] and res["models"]["esvae"]["epochs_done"] == 1
