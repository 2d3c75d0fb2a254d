"""`sjvae reproduce`: budgeted calls print where each model stands, the last one evaluates and writes the
table (`--quick`: tiny models, the whole pipeline on a CPU)."""
import json
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from spikingjelly_vae.cli import main
from spikingjelly_vae.cli.reproduce import QUICK_TRAIN

SHARED = Path(os.environ.get("SJVAE_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
pytestmark = pytest.mark.skipif(not (SHARED / "MNIST").is_dir(), reason="shared data not found")
STATUS = re.compile(r"esvae: (\d+)/(\d+) epochs(?: \+ (\d+)/(\d+) steps of epoch \d+)?, ([\d.]+) s/epoch measured, "
                    r"([\d.]+) min of training left")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(autouse=True)
def no_metric_weights(monkeypatch):
    for name in ("SJVAE_INCEPTION", "SJVAE_IS_WEIGHTS", "SJVAE_FAD"):
        monkeypatch.delenv(name, raising=False)


def reproduce(out, *extra):
    return invoke("reproduce", "--dataset", "mnist", "--models", "esvae", "--out", out, "--quick", "--data-root",
                  SHARED, "--device", "cpu", *extra)


def test_budgeted_calls_report_progress_then_evaluate(tmp_path):
    res = reproduce(tmp_path, "--budget-minutes", 1e-4)  # 6 ms: the first step runs, then it stops and saves
    assert res.exit_code == 0, res.output
    done, total, batch, batches, per_epoch, left = STATUS.search(res.output).groups()
    assert (int(done), int(total), int(batch), int(batches)) == (0, QUICK_TRAIN["epochs"], 1, 2)
    assert float(per_epoch) > 0
    assert abs(float(left) - 1.5 * float(per_epoch) / 60) <= 0.051  # 1.5 epochs left, at the measured pace
    assert "rerun to continue" in res.output
    folder = tmp_path / "mnist"
    assert not (folder / "esvae" / "last.pt.eval-reference.json").exists()
    assert "not complete" in res.output and (folder / "table1.md").is_file()

    res = reproduce(tmp_path)
    assert res.exit_code == 0, res.output
    done, total, _, _, _, left = STATUS.search(res.output).groups()
    assert int(done) == int(total) == 2 and float(left) == 0 and "schedule complete" in res.output
    assert "all schedules complete and evaluated" in res.output
    table = json.loads((folder / "table1.json").read_text())
    ours = [r for r in table["rows"] if r["kind"] == "measured"]
    assert len(ours) == 1 and ours[0]["model"] == "esvae" and ours[0]["mse"] is not None
    assert any("32 test images only" in n for n in ours[0]["notes"])  # --quick is never taken for Table I
    assert table["provenance"]["models"]["esvae"]["schedule"]["epochs"] == 2
    state = json.loads((folder / "esvae" / "reproduce.json").read_text())
    assert len(state["calls"]) == 2 and state["evaluated"]["robustness"]["shuffle"]["num_images"] == 16


def test_bad_options(tmp_path):
    res = invoke("reproduce", "--dataset", "mnist", "--models", "esvae,vae", "--out", tmp_path)
    assert res.exit_code == 2 and "distinct names from esvae,fsvae,ann-vae" in res.output
    res = invoke("reproduce", "--dataset", "mnist", "--out", tmp_path, "--budget-minutes", 0)
    assert res.exit_code == 2
    res = invoke("reproduce", "--dataset", "svhn", "--out", tmp_path)
    assert res.exit_code == 2 and not any(tmp_path.iterdir())


@pytest.mark.parametrize("command", ["reproduce", "pretrained", "prior"])
def test_every_option_has_help(command):
    cmd = main.commands[command]
    cmds = cmd.commands.values() if hasattr(cmd, "commands") else [cmd]
    for c in cmds:
        assert [p.name for p in c.params if not getattr(p, "help", None)] == []
