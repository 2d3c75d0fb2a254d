"""`compare`: Table I layout, published data, reading evaluate JSONs / checkpoints / run folders, the CLI."""
import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from spikingjelly_vae.checkpoint import save_checkpoint
from spikingjelly_vae.cli import main
from spikingjelly_vae.metrics.compare import PUBLISHED, build_table, compare, format_table, load_result
from spikingjelly_vae.models import FSVAE

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def fake_result(model="fsvae", dataset="mnist", mse=0.0234, fid=150.0, fad=30.0, **extra):
    return {"checkpoint": f"runs/{model}/best.pt", "epoch": 7, "model": {"model": model}, "dataset": dataset,
            "protocol": "reference",
            "metrics": {"mse": {"mse": mse - 1e-4, "mse_batch_mean": mse, "num_images": 10000},
                        "fid": {"fid": fid, "num_images": 5000, "mode": "clean"},
                        "fad": {"fad": fad, "num_images": 5120, "protocol": "reference", "source": "official"}},
            "unavailable": {"is": "no IS weights"}, **extra}


def test_table_layout_marks_every_cell():
    rows = build_table([fake_result("fsvae"), fake_result("esvae", mse=0.015)])
    assert [(r["model"], r["kind"]) for r in rows] == [
        ("ann-vae", "published"), ("fsvae", "published"), ("fsvae", "measured"),
        ("esvae", "published"), ("esvae", "measured")]
    measured = rows[2]
    assert measured["mse"] == 0.0234 and measured["fid"] == 150.0 and measured["is"] is None
    text = format_table(rows)
    lines = text.splitlines()
    assert lines[0].split()[:6] == ["Dataset", "Model", "Recon.", "loss", "IS", "FID"]
    fsvae_ours = next(line for line in lines if "FSVAE (ours)" in line)
    assert "0.02340 M" in fsvae_ours and "150.0 M" in fsvae_ours and "n/a" in fsvae_ours
    fsvae_paper = next(line for line in lines if line.strip().startswith("FSVAE ") and "published" in line)
    for cell in ("0.031 P", "6.209 P", "97.06 P", "35.54 P"):
        assert cell in fsvae_paper
    assert "IS unavailable: no IS weights" in text and "copied from Kamata et al." in text
    md = format_table(rows, "markdown")
    assert md.splitlines()[1].startswith("|---|") and md.count("| MNIST |") == 5
    csv_text = format_table(rows, "csv")
    assert csv_text.splitlines()[0].startswith("dataset,model,kind,mse,is,fid,fad")
    with pytest.raises(ValueError):
        format_table(rows, "html")


def test_notes_for_departures_from_the_paper():
    res = fake_result(dataset="cifar10", protocol="standard")
    res["metrics"]["fid"].update(mode="fast", num_images=200)
    res["metrics"]["fad"].update(note="feature AE trained by this project", num_images=512)
    del res["metrics"]["mse"]
    res["unavailable"] = {}
    notes = [r for r in build_table([res]) if r["kind"] == "measured"][0]["notes"]
    joined = " | ".join(notes)
    for part in ("not evaluated: Recon. loss, IS", "fast resize", "200 samples", "feature AE trained by this project",
                 "FAD on 512 samples", "standard metric protocol", "JPEG"):
        assert part in joined


def test_no_runs_prints_published_table():
    rows = build_table([])
    assert {r["kind"] for r in rows} == {"published"} and len(rows) == 12
    assert len(build_table([], all_published=True)) == len(PUBLISHED)


def test_load_result_from_json_checkpoint_and_run_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("best.pt", "last.pt"):
        (run / name).write_bytes(b"x")
    (run / "last.pt.eval-reference.json").write_text(json.dumps(fake_result(mse=0.02)))
    (run / "best.pt.eval-reference.json").write_text(json.dumps(fake_result(mse=0.01)))
    assert load_result(run)["metrics"]["mse"]["mse_batch_mean"] == 0.01
    assert load_result(run, which="last")["metrics"]["mse"]["mse_batch_mean"] == 0.02
    assert load_result(run / "last.pt")["_path"].endswith("last.pt.eval-reference.json")
    with pytest.raises(ValueError, match="sjvae evaluate --checkpoint"):
        load_result(run / "best.pt", protocol="standard")
    (tmp_path / "other.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="not a result of `sjvae evaluate`"):
        load_result(tmp_path / "other.json")
    with pytest.raises(ValueError, match="without best.pt"):
        load_result(tmp_path)


def test_output_json_is_written_atomically(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(fake_result()))
    res = compare([path], output=tmp_path / "out" / "table.json")
    data = json.loads(Path(res["output"]).read_text())
    assert [r["kind"] for r in data["rows"]].count("measured") == 1
    assert not [f for f in os.listdir(tmp_path / "out") if f.endswith(".tmp")]


def test_cli_compare(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(fake_result("ann-vae", mse=0.05)))
    result = CliRunner().invoke(main, ["compare", str(path), "--format", "markdown"])
    assert result.exit_code == 0, result.output
    assert "| MNIST | ANN (ours) [1] | 0.05000 M |" in result.output
    bad = CliRunner().invoke(main, ["compare", str(tmp_path)])
    assert bad.exit_code == 2 and "without best.pt" in bad.output


@pytest.mark.skipif(not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason="needs ../shared/data/MNIST")
def test_evaluate_missing_runs_the_metrics_api(tmp_path):
    """--evaluate: a checkpoint without a result is evaluated (MSE only here, 16 test images) and compared."""
    torch.manual_seed(0)
    model = FSVAE(1, 8, T=4, k=3).eval()
    ckpt = tmp_path / "best.pt"
    save_checkpoint(ckpt, {"model": model.state_dict(), "config": model.config, "epoch": 1, "dataset": "mnist"})
    res = compare([tmp_path], evaluate=True, metrics=("mse",), data_root=str(SHARED_DATA), mse_num=16,
                  mse_batch=8, device="cpu")
    written = tmp_path / "best.pt.eval-reference.json"
    assert written.is_file()
    row = [r for r in res["rows"] if r["kind"] == "measured"][0]
    assert row["model"] == "fsvae" and 0 < row["mse"] < 4
    assert "16 test images" in " ".join(row["notes"])
