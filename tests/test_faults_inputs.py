"""Hostile numbers and files from elsewhere through the real CLI (`python -m spikingjelly_vae.cli` in a
subprocess): NaN, infinite and huge option values are refused by click in one line; training refuses a model
no command could load back; a failed allocation and an unreadable file read as one plain line without an
exception class name; prior files, evaluate JSONs, --history checkpoints, log.csv and best.pt of another run
are refused. Tiny MNIST runs as in tests/test_faults_files.py."""
import json
import re
import shutil

import pytest
import torch
from test_faults_files import SHARED, sjvae
from test_faults_files import TINY as FILES_TINY
from test_faults_files import one_line as error_line

pytestmark = pytest.mark.skipif(not (SHARED / "MNIST").is_dir(), reason="shared data not found")
TINY = [*FILES_TINY, "--device", "cpu"]
MINI = ["--dataset", "mnist-mini", "--device", "cpu", "--batch-size", "8", "--max-steps", "1", "--no-progress",
        "--no-tensorboard"]
CLASS_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception)\b")


def one_line(res, code=2):
    """test_faults_files.one_line, and no exception class name in the line."""
    line = error_line(res, code)
    assert not CLASS_NAME.search(line), line
    return line


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 1-epoch MNIST run folder."""
    out = tmp_path_factory.mktemp("inputs") / "run"
    res = sjvae("train", "--out", out, "--epochs", 1, *TINY)
    assert res.returncode == 0, res.stderr
    return out


# ------------------------------------------------------------------------ numbers on the command line
@pytest.mark.parametrize("option,value", [("--lr", "inf"), ("--lambda", "nan"), ("--weight-decay", "nan"),
                                          ("--bottleneck-lr-mult", "inf"), ("--batch-size", "1" + "0" * 20),
                                          ("--num-workers", "99999"), ("--T", "2000"), ("--seed", "9" * 25),
                                          ("--grid-images", "99999999999")])
def test_train_numbers_out_of_range_are_refused_by_the_option(tmp_path, option, value):
    msg = one_line(sjvae("train", *MINI, "--out", tmp_path / "r", option, value))
    assert f"'{option}'" in msg, msg
    assert not (tmp_path / "r").exists()


def test_other_commands_refuse_non_finite_and_huge_numbers(run, tmp_path):
    ckpt = run / "last.pt"
    for args, option in [(["analyze", "--e-ac", "nan"], "--e-ac"), (["classify", "--lr", "nan"], "--lr"),
                         (["evaluate", "--mse-batch", "1" + "0" * 20], "--mse-batch"),
                         (["prior", "fit", "--seed", "-1"], "--seed"),
                         (["prior", "fit", "--kind", "diffusion", "--epochs", "0"], "--epochs")]:
        msg = one_line(sjvae(*args, "--checkpoint", ckpt, "--device", "cpu"))
        assert f"'{option}'" in msg, msg


def test_train_refuses_a_model_it_could_not_load_back(tmp_path):
    for opt in ("hidden=4,4,8,9000", "half_width=200"):
        msg = one_line(sjvae("train", *MINI, "--out", tmp_path / "r", "--model-opt", opt))
        assert "could not be loaded back" in msg, msg
    msg = one_line(sjvae("info", "--model", "fsvae", "--latent-dim", "60000"))
    assert "more than 1,000,000,000" in msg
    assert not list((tmp_path / "r").glob("*.pt"))  # refused before any checkpoint


def test_a_failed_allocation_is_one_plain_line(run, tmp_path):
    boom = ("import spikingjelly_vae.inference as i\n"
            "def f(*a, **k): raise RuntimeError(\"[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: "
            "can't allocate memory: you tried to allocate 5000000000 bytes.\")\n"
            "i.sample_to_file = f")
    msg = one_line(sjvae("sample", "--checkpoint", run / "last.pt", "--out", tmp_path / "s.png", code=boom), 1)
    assert "not enough memory (5.0 GB asked for)" in msg and "unexpected" not in msg


def test_sample_refuses_more_images_than_memory_holds(run, tmp_path):
    msg = one_line(sjvae("sample", "--checkpoint", run / "last.pt", "--out", tmp_path / "s.png", "-n",
                         2 ** 31 - 1, "--device", "cpu"))
    assert "lower -n" in msg and not (tmp_path / "s.png").exists()


@pytest.mark.parametrize("content,expect", [(b"", "empty (0 bytes)"), (b"epoch,step\n1,2\n", "not a torch file"),
                                            (b"\x89PNG\r\n\x1a\n", "not a torch file")])
def test_unreadable_files_are_named_in_plain_words(run, tmp_path, content, expect):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    assert expect in one_line(sjvae("info", "--checkpoint", bad))
    msg = one_line(sjvae("sample", "--checkpoint", run / "last.pt", "--prior", f"gmm:{bad}", "--out",
                         tmp_path / "s.png", "--device", "cpu"))
    assert expect in msg


# ------------------------------------------------------------------------ files of another run or model
def _diffusion_prior(run, tmp_path, edit):
    from spikingjelly_vae.prior import diffusion
    from spikingjelly_vae.prior.files import digest
    path = tmp_path / "d.pt"
    res = sjvae("prior", "fit", "--kind", "diffusion", "--checkpoint", run / "last.pt", "--data-root", SHARED,
                "--device", "cpu", "--max-images", 16, "--epochs", 1, "--steps", 5, "--width", 8, "--no-progress",
                "--out", path)
    assert res.returncode == 0, res.stderr
    p = torch.load(path, weights_only=True)
    key = sorted(p["state"])[0]
    p["state"][key] = edit(p["state"][key])
    p["digest"] = digest(p, ("format", "format_version", *diffusion.SCALARS), diffusion.TENSORS)
    torch.save(p, path)  # a digest recomputed: only the checks of the contents stand
    return path, key


@pytest.mark.parametrize("edit,expect", [(lambda t: torch.full_like(t, float("nan")), "NaN or infinite"),
                                         (lambda t: t.to(torch.int64), "not a float tensor"),
                                         (lambda t: t[:1], "not a float tensor")])
def test_diffusion_prior_weights_are_checked(run, tmp_path, edit, expect):
    path, key = _diffusion_prior(run, tmp_path, edit)
    msg = one_line(sjvae("sample", "--checkpoint", run / "last.pt", "--prior", f"diffusion:{path}", "--out",
                         tmp_path / "s.pt", "--device", "cpu"))
    assert str(path) in msg and repr(key) in msg and expect in msg, msg
    assert not (tmp_path / "s.pt").exists()


@pytest.mark.parametrize("metric,value", [("fid", {"fid": -5.0}), ("fad", {"fad": -1.0}),
                                          ("is", {"is": 0.5, "is_std": 0.1})])
def test_compare_refuses_impossible_metric_values(run, tmp_path, metric, value):
    res = sjvae("evaluate", "--checkpoint", run / "best.pt", "--metrics", "mse", "--mse-num", 16, "--mse-batch", 8,
                "--data-root", SHARED, "--device", "cpu", "--output", tmp_path / "r.json")
    assert res.returncode == 0, res.stderr
    data = json.loads((tmp_path / "r.json").read_text())
    data["metrics"][metric] = value
    (tmp_path / "r.json").write_text(json.dumps(data))
    assert f"metrics.{metric}." in one_line(sjvae("compare", tmp_path / "r.json"))


def test_analyze_history_of_another_run_is_refused(run, tmp_path):
    other, tiny = tmp_path / "other", list(TINY)
    tiny[tiny.index("--latent-dim") + 1] = "16"
    assert sjvae("train", "--out", other, "--epochs", 1, *tiny).returncode == 0
    msg = one_line(sjvae("analyze", "--checkpoint", run / "last.pt", "--history", other / "last.pt", "--data-root",
                         SHARED, "--device", "cpu", "--num-images", 8, "--batch-size", 8, "--out-dir", tmp_path / "a"))
    assert "another model (latent_dim 16" in msg, msg
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())  # refused before any output


def test_resume_refuses_a_log_or_a_better_best_of_another_run(run, tmp_path):
    other = tmp_path / "other"
    assert sjvae("train", "--out", other, "--epochs", 1, "--seed", 7, *TINY).returncode == 0
    better, worse = sorted((run, other), key=lambda r: torch.load(r / "best.pt")["metrics"]["test_loss"])
    for name in ("log.csv", "best.pt"):
        copy = tmp_path / name
        shutil.copytree(worse, copy)  # the file of the other run: its log, or its best.pt of a lower loss
        shutil.copyfile(better / name, copy / name)
        before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
        msg = one_line(sjvae("train", "--resume", "--out", copy, "--epochs", 2, "--no-progress", "--device", "cpu",
                             "--data-root", SHARED))
        assert f"{copy / name} is not this run's" in msg, msg
        # nothing in the folder changed (train_config.json included, though --epochs differs) and no lock is left
        assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before
