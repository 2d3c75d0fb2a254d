"""What `sjvae train` shows: a step bar under --max-steps (not the preset's epochs), per-epoch bars otherwise,
the run folder with the exact resume command, and a final line with the elapsed time and images/s."""
import os
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from spikingjelly_vae.cli import main

SHARED = Path(os.environ.get("SJVAE_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
pytestmark = pytest.mark.skipif(not (SHARED / "MNIST").is_dir(), reason="shared data not found")
TINY = ["--data-root", str(SHARED), "--batch-size", "16", "--T", "4", "--latent-dim", "8", "--train-subset", "64",
        "--test-subset", "16", "--grid-images", "4", "--grid-every", "0", "--no-tensorboard", "--device", "cpu"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_max_steps_shows_steps_and_the_resume_command_works(tmp_path):
    out = tmp_path / "run dir"  # a space: the printed command must quote it
    res = invoke("train", "--out", out, "--max-steps", 6, *TINY)  # epochs from the preset (300)
    assert res.exit_code == 0, res.output
    assert "step 6/6" in res.output and "/300" not in res.output  # 64 images / 16 = 4 steps an epoch
    assert re.search(r"done: 6 steps in \d+\.\d s, \d+\.\d train images/s", res.output)
    command = f"sjvae train --resume --out {shlex.quote(str(out))}"
    assert f"run folder {out}; resume with: {command}" in res.output  # at the start (progress on)
    assert f"continue it with: {command}" in res.output  # at the end
    assert "data: mnist DataLoader (4 batches/epoch)" in res.output
    again = invoke(*shlex.split(command)[1:], "--max-steps", 8)  # the printed command, extended by 2 steps
    assert again.exit_code == 0, again.output
    assert "step 8/8" in again.output and "done: 8 steps" in again.output


def test_epoch_bars_count_the_subset(tmp_path):
    res = invoke("train", "--out", tmp_path / "run", "--epochs", 2, *TINY)
    assert res.exit_code == 0, res.output
    assert "epoch 1/2" in res.output and "epoch 2/2" in res.output and "4/4" in res.output
    assert not re.search(r"step \d+/", res.output)
    quiet = invoke("train", "--out", tmp_path / "quiet", "--epochs", 1, "--no-progress", *TINY)
    assert quiet.exit_code == 0, quiet.output
    assert "%|" not in quiet.output and "resume with" not in quiet.output  # no bars, no start banner
    assert "timed 3 steps" in quiet.output  # the epoch forecast is a report line, not a bar (reproduce relies on it)
    assert "continue it with: sjvae train --resume --out" in quiet.output and "done: 4 steps" in quiet.output
