"""Step-exact resume through the real CLI, interrupted from the outside as a user or a cluster does: SIGTERM or
Ctrl-C (SIGINT) in the middle of an epoch, kill -9 after `--checkpoint-every`, and budgeted `reproduce` calls.
Each interrupted run must keep its progress inside the epoch (resume.pt) and, resumed, end bit for bit equal
to an uninterrupted run. Tiny runs: MNIST 320/32 images, batch 16 (20 steps an epoch), ESVAE hidden=(4,4,8,8),
T=4, latent 8."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from spikingjelly_vae.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SJVAE_TEST_DATA", REPO.parent / "shared" / "data"))
pytestmark = pytest.mark.skipif(not (SHARED / "MNIST").is_dir(), reason="shared data not found")
TINY = ["--data-root", SHARED, "--batch-size", 16, "--T", 4, "--latent-dim", 8, "--train-subset", 320,
        "--test-subset", 32, "--grid-images", 8, "--model-opt", "hidden=(4,4,8,8)", "--no-tensorboard",
        "--epochs", 2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
BAR = re.compile(r"epoch 1/2:[^\r\n]*?\b(\d+)/20 \[")


def sjvae(*args, **kw):
    return subprocess.run([sys.executable, "-m", "spikingjelly_vae.cli", *map(str, args)], env=ENV,
                          capture_output=True, text=True, timeout=600, **kw)


def start(*args):
    """The CLI in a subprocess whose stderr (progress bars) is collected as it comes."""
    proc = subprocess.Popen([sys.executable, "-m", "spikingjelly_vae.cli", *map(str, args)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.err = []
    threading.Thread(target=lambda: [proc.err.append(c.decode(errors="replace"))
                                     for c in iter(lambda: os.read(proc.stderr.fileno(), 4096), b"")],
                     daemon=True).start()
    return proc


def wait_for(proc, seen, timeout=300):
    t = time.time()
    while not seen():
        assert proc.poll() is None, "".join(proc.err)
        assert time.time() - t < timeout
        time.sleep(0.01)


def in_epoch_one(proc, steps=3):
    """True once the progress bar shows at least `steps` batches of epoch 1 done."""
    return any(int(m) >= steps for m in BAR.findall("".join(proc.err)))


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The uninterrupted 2-epoch run."""
    out = tmp_path_factory.mktemp("exact") / "full"
    res = sjvae("train", "--out", out, "--no-progress", *TINY)
    assert res.returncode == 0, res.stderr
    return out


def _log_numbers(out):
    rows = (out / "log.csv").read_text().splitlines()
    keep = [i for i, k in enumerate(rows[0].split(",")) if k not in ("images_per_s", "epoch_seconds")]
    return [[r.split(",")[i] for i in keep] for r in rows]


def assert_same_run(full, cut, same_training_state):
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(cut / "last.pt")
    same_training_state(a, b)
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (2, 40)
    assert _log_numbers(full) == _log_numbers(cut)  # the interrupted epoch's train sums were kept too


@pytest.mark.parametrize("sig, extra", [(signal.SIGTERM, []), (signal.SIGINT, []),
                                        (signal.SIGTERM, ["--data-on-gpu"]),
                                        (signal.SIGTERM, ["--num-workers", 1])],
                         ids=["sigterm", "sigint", "sigterm-resident", "sigterm-worker"])
def test_signal_mid_epoch_then_resume_is_exact(full, tmp_path, sig, extra, same_training_state):
    cut = tmp_path / "cut"
    proc = start("train", "--out", cut, *TINY, *extra)
    wait_for(proc, lambda: in_epoch_one(proc))
    proc.send_signal(sig)
    if sig == signal.SIGTERM:  # a scheduler that repeats itself: the save goes on
        time.sleep(0.01)
        proc.send_signal(sig)
    proc.wait(timeout=300)
    err = "".join(proc.err)
    assert proc.returncode == 128 + sig, err
    assert f"resume with: sjvae train --resume --out {cut}" in err and "Traceback" not in err
    state = load_checkpoint(cut / "resume.pt")
    assert state["epoch"] == 0 and 3 <= state["batch"] < state["batches"] == 20  # progress inside epoch 1
    assert state["step"] == state["batch"] and not (cut / "last.pt").exists()
    assert not (cut / ".lock").exists()
    res = sjvae("train", "--resume", "--out", cut, "--no-progress", *extra)
    assert res.returncode == 0, res.stderr
    assert_same_run(full, cut, same_training_state)
    assert not (cut / "resume.pt").exists()  # superseded by the last epoch's last.pt


def test_sigterm_during_the_test_pass_then_resume_is_exact(tmp_path, same_training_state):
    """The test pass at the end of epoch 1 (2,000 test images) is cut short; the resumed run redoes it."""
    args = [*TINY[:TINY.index("--test-subset")], "--test-subset", 2000, *TINY[TINY.index("--test-subset") + 2:]]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert sjvae("train", "--out", full, "--no-progress", *args).returncode == 0
    proc = start("train", "--out", cut, *args)
    wait_for(proc, lambda: in_epoch_one(proc, 20))  # the training steps of epoch 1 are done
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, "".join(proc.err)
    state = load_checkpoint(cut / "resume.pt")
    assert (state["epoch"], state["batch"], state["step"]) == (0, 20, 20) and not (cut / "last.pt").exists()
    res = sjvae("train", "--resume", "--out", cut, "--no-progress")
    assert res.returncode == 0, res.stderr
    same_training_state(load_checkpoint(full / "last.pt"), load_checkpoint(cut / "last.pt"))
    assert _log_numbers(full) == _log_numbers(cut)


def test_checkpoint_every_then_kill_9_is_exact(full, tmp_path, same_training_state):
    cut = tmp_path / "cut"
    proc = start("train", "--out", cut, "--checkpoint-every", 3, *TINY)
    wait_for(proc, lambda: (cut / "resume.pt").is_file() and in_epoch_one(proc, 7))
    proc.kill()
    proc.wait()
    state = load_checkpoint(cut / "resume.pt")  # intact: written atomically
    assert state["step"] % 3 == 0 and state["step"] >= 6 and state["epoch"] == 0
    res = sjvae("train", "--resume", "--out", cut, "--no-progress")
    assert res.returncode == 0, res.stderr
    assert_same_run(full, cut, same_training_state)


def test_max_steps_inside_an_epoch_then_more_steps_is_exact(full, tmp_path, same_training_state):
    cut = tmp_path / "cut"
    assert sjvae("train", "--out", cut, "--max-steps", 7, "--no-progress", *TINY).returncode == 0
    assert load_checkpoint(cut / "resume.pt")["batch"] == 7
    res = sjvae("train", "--resume", "--out", cut, "--max-steps", 40, "--no-progress")
    assert res.returncode == 0, res.stderr
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(cut / "last.pt")
    same_training_state(a, b)


# ------------------------------------------------------------------------------------------ reproduce
QUICK = ["reproduce", "--dataset", "mnist", "--models", "esvae", "--data-root", SHARED, "--device", "cpu"]


def test_quick_folder_continued_without_quick_is_refused(tmp_path):
    res = sjvae(*QUICK, "--out", tmp_path, "--quick", "--budget-minutes", 1e-4)
    assert res.returncode == 0, res.stderr
    before = (tmp_path / "mnist" / "esvae" / "reproduce.json").read_bytes()
    res = sjvae(*QUICK, "--out", tmp_path)
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
    assert res.returncode == 2 and len(errors) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "--quick" in errors[0] and "another --out" in errors[0]
    assert (tmp_path / "mnist" / "esvae" / "reproduce.json").read_bytes() == before


def test_call_record_survives_a_kill_right_after_the_checkpoint(tmp_path):
    """kill -9 as soon as the first epoch's last.pt exists (before or after reproduce.json is rewritten): the
    next call still knows what the killed call trained."""
    proc = subprocess.Popen([sys.executable, "-m", "spikingjelly_vae.cli", *map(str, QUICK), "--out", tmp_path,
                             "--quick"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "mnist" / "esvae" / "last.pt"
    try:
        while proc.poll() is None and not last.is_file():
            time.sleep(0.002)
    finally:
        proc.kill()
        proc.wait()
    state = tmp_path / "mnist" / "esvae" / "reproduce.json"
    recorded = json.loads(state.read_text())
    recorded["calls"] = []  # what a kill between last.pt and reproduce.json leaves, whatever the timing
    state.write_text(json.dumps(recorded))
    res = sjvae(*QUICK, "--out", tmp_path, "--quick", "--max-epochs-per-call", 1)
    assert res.returncode == 0, res.stderr
    calls = json.loads(state.read_text())["calls"]
    assert calls[0]["to_epoch"] >= 1 and calls[0]["steps"] >= 2 and calls[0]["from_step"] == 0
    assert calls[1]["from_step"] == calls[0]["to_step"]


def test_evaluation_runs_inside_the_folder_lock(tmp_path):
    res = sjvae(*QUICK, "--out", tmp_path, "--quick", "--max-epochs-per-call", 1)
    assert res.returncode == 0, res.stderr
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:  # another live process holds the folder: the call that would evaluate is refused
        (tmp_path / "mnist" / "esvae" / ".lock").write_text(f"{holder.pid}\n")
        res = sjvae(*QUICK, "--out", tmp_path, "--quick")
        assert res.returncode == 2 and f"in use by process {holder.pid}" in res.stderr, res.stderr
        assert not (tmp_path / "mnist" / "esvae" / "last.pt.eval-reference.json").exists()
    finally:
        holder.kill()
        holder.wait()
    res = sjvae(*QUICK, "--out", tmp_path, "--quick")  # the lock of a dead process is taken over
    assert res.returncode == 0 and (tmp_path / "mnist" / "esvae" / "last.pt.eval-reference.json").is_file()


def test_budgeted_reproduce_stops_inside_the_epoch_and_continues_exactly(tmp_path, same_training_state):
    opts = ["--quick", "--checkpoint-every", 1]
    whole = tmp_path / "whole"
    assert sjvae(*QUICK, "--out", whole, *opts).returncode == 0
    split = tmp_path / "split"
    res = sjvae(*QUICK, "--out", split, *opts, "--budget-minutes", 1e-4)
    assert res.returncode == 0 and "0/2 epochs + 1/2 steps of epoch 1" in res.stdout, res.stdout
    for _ in range(10):
        res = sjvae(*QUICK, "--out", split, *opts, "--budget-minutes", 1e-4)
        assert res.returncode == 0, res.stderr
        if "all schedules complete" in res.stdout:
            break
    a = load_checkpoint(whole / "mnist" / "esvae" / "last.pt")
    b = load_checkpoint(split / "mnist" / "esvae" / "last.pt")
    same_training_state(a, b)
    assert torch.equal(torch.tensor(a["step"]), torch.tensor(b["step"]))


def test_damaged_resume_file_is_named_in_one_line(tmp_path):
    cut = tmp_path / "cut"
    assert sjvae("train", "--out", cut, "--max-steps", 3, "--no-progress", *TINY).returncode == 0
    good = (cut / "resume.pt").read_bytes()
    (cut / "resume.pt").write_bytes(good[:len(good) // 2])
    res = sjvae("train", "--resume", "--out", cut, "--max-steps", 6)
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
    assert res.returncode == 2 and len(errors) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "resume.pt" in errors[0] and "delete" in errors[0]
    assert (cut / "resume.pt").read_bytes() == good[:len(good) // 2]  # left for the user to look at
