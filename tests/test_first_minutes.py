"""What a new user sees first: help built from the presets, whole command summaries, an epoch-time forecast
from the first timed steps, and progress bars on evaluation passes."""
import re

import torch
from click.testing import CliRunner

from spikingjelly_vae.cli import main
from spikingjelly_vae.train.forecast import StepForecast, format_duration


def invoke(*args, **env):
    return CliRunner(env={"COLUMNS": "100", **env}).invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_train_help_shows_each_models_preset():
    out = invoke("train", "--help").output
    rows = {tuple(line.split()[:2]): line.split() for line in out.splitlines()
            if line.strip().startswith(("esvae", "fsvae", "ann-vae"))}
    assert rows[("fsvae", "all")][3:6] == ["celeba", "150", "250"]  # "all but celeba": 150 epochs, batch 250
    assert rows[("fsvae", "celeba")][2:4] == ["150", "64"]
    assert rows[("esvae", "mnist,fashion,mnist-mini")][2:6] == ["300", "256", "0.003072", "32"]
    assert rows[("ann-vae", "all")][2:4] == ["150", "250"]
    assert "[preset: 300]" not in out and "mnist-mini" in out


def test_group_help_has_whole_summaries():
    out = invoke("--help").output
    commands = out[out.index("Commands:"):]
    assert "Fig. 6, 7" in commands and "..." not in commands
    for command in ("train", "analyze", "classify", "pretrained", "reproduce"):
        assert re.search(rf"^  {command} +\S", out, re.M), command


def test_forecast_reports_once_after_the_timed_steps():
    now, lines = [0.0], []
    f = StepForecast(epoch=1, epochs=300, epoch_steps=40, call_steps=40 * 300, report=lines.append,
                     warmup=1, steps=3, clock=lambda: now[0])
    for _ in range(10):
        now[0] += 2.0  # 2 s per step
        f.step()
    assert len(lines) == 1
    assert "2 s/step" in lines[0] and "epoch 1/300 (40 steps) should take about 80 s" in lines[0]
    assert "all 12000 steps still to train about 6.7 h" in lines[0]
    short = []
    g = StepForecast(epoch=1, epochs=300, epoch_steps=625, call_steps=400, report=short.append, clock=lambda: now[0])
    for _ in range(4):
        now[0] += 0.5
        g.step()
    assert short == ["timed 3 steps: 0.5 s/step; the 400 steps of this call should take about 3.3 min plus "
                     "the evaluation"]
    bounded = []  # --max-steps beyond the first epoch: no preset epoch count in the line
    h = StepForecast(epoch=1, epochs=None, epoch_steps=4, call_steps=6, report=bounded.append, clock=lambda: now[0])
    for _ in range(4):
        now[0] += 1.0
        h.step()
    assert bounded == ["timed 3 steps: 1 s/step; epoch 1 (4 steps) should take about 4 s plus its evaluation; all 6 "
                       "steps of this call about 6 s"]
    assert [format_duration(s) for s in (45, 600, 7200, 3 * 86400)] == ["45 s", "10.0 min", "2.0 h", "3.0 days"]


def test_train_prints_the_forecast_and_evaluates_with_a_bar(tmp_path, one_thread):
    res = invoke("train", "--dataset", "mnist-mini", "--device", "cpu", "--batch-size", 8, "--T", 2,
                 "--latent-dim", 4, "--model-opt", "hidden=4,4,8,8", "--train-subset", 48, "--test-subset", 16,
                 "--max-steps", 5, "--grid-images", 4, "--no-tensorboard", "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    assert re.search(r"timed 3 steps: \S+ s/step; the 5 steps of this call should take about", res.output)
    assert "test" in res.output and "batch" in res.output  # the evaluation bar


def test_reconstruction_mse_shows_a_bar(capsys):
    from spikingjelly_vae.metrics.reconstruction import reconstruction_mse
    from spikingjelly_vae.models import create_model
    model = create_model("esvae", in_channels=1, image_size=8, latent_dim=4, T=2, hidden=[4, 4])
    r = reconstruction_mse(model, torch.zeros(6, 1, 8, 8), batch_size=4, progress=True)
    assert r["num_images"] == 6 and "MSE" in capsys.readouterr().err
