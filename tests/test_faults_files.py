"""Hostile files through the real CLI (`python -m spikingjelly_vae.cli` in a subprocess): every file format the
package reads back is checked against its schema (spikingjelly_vae/schemas.py) and a bad one gives one line
naming the file and the field; outputs never replace inputs; NaN weights never give a number; long library
errors are summarised in one line. Tiny MNIST runs as in tests/test_faults.py."""
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SJVAE_TEST_DATA", REPO.parent / "shared" / "data"))
pytestmark = pytest.mark.skipif(not (SHARED / "MNIST").is_dir(), reason="shared data not found")
TINY = ["--data-root", SHARED, "--batch-size", "16", "--T", "4", "--latent-dim", "8", "--train-subset", "64",
        "--test-subset", "32", "--grid-images", "8", "--model-opt", "hidden=(4,4,8,8)", "--no-progress",
        "--no-tensorboard"]
MSE = ["--metrics", "mse", "--mse-num", "16", "--mse-batch", "8", "--data-root", SHARED]


def sjvae(*args, env=None, code=None):
    """The real CLI in a subprocess; with `code`, that Python runs first (a fault injected into the process)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    argv = [sys.executable, "-m", "spikingjelly_vae.cli"] if code is None else \
        [sys.executable, "-c", code + "\nfrom spikingjelly_vae.cli import main\nmain()"]
    return subprocess.run([*argv, *[str(a) for a in args]], env=full_env, capture_output=True, text=True,
                          timeout=300)


def one_line(res, code=2):
    """Exit `code` (2 bad input, 1 unwritable) with exactly one `Error:` line and no traceback; the line."""
    out = res.stdout + res.stderr
    assert res.returncode == code, out
    errors = [line for line in out.splitlines() if line.startswith("Error:")]
    assert "Traceback" not in out and len(errors) == 1, out
    return errors[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 1-epoch MNIST run folder."""
    out = tmp_path_factory.mktemp("files") / "run"
    res = sjvae("train", "--out", out, "--epochs", 1, *TINY)
    assert res.returncode == 0, res.stderr
    return out


def _edited(run, tmp_path, edit, name="last.pt"):
    """A copy of the run folder whose `name` (a torch file) went through `edit(dict)`."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    ckpt = torch.load(copy / name, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, copy / name)
    return copy


# ------------------------------------------------------------------------ 1. checkpoint config
# (more values of every format: tests/test_schemas.py, in process)
@pytest.mark.parametrize("key,value,commands", [("latent_dim", -5, 2), ("latent_dim", 10 ** 10, 1),
                                                ("latent_dim", "8", 1), ("hidden", [4, 4, 8, 10 ** 9], 1)])
def test_checkpoint_config_types_and_ranges(run, tmp_path, key, value, commands):
    copy = _edited(run, tmp_path, lambda c: c["config"].__setitem__(key, value))
    for command in (["info"], ["evaluate", *MSE, "--output", tmp_path / "e.json"])[:commands]:
        msg = one_line(sjvae(*command, "--checkpoint", copy / "last.pt"))
        assert "last.pt" in msg and f"config.{key}" in msg, msg
    assert not (tmp_path / "e.json").exists()


def test_config_asking_for_a_huge_model_is_refused_before_allocating(run, tmp_path):
    """Each size within its bound, the product far too big: refused from the meta-device build."""
    copy = _edited(run, tmp_path, lambda c: c["config"].update(latent_dim=60000, hidden=[8000] * 4))
    msg = one_line(sjvae("info", "--checkpoint", copy / "last.pt"))
    assert "values" in msg and "more than" in msg


# ------------------------------------------------------------------------------- 1. resume state
@pytest.mark.parametrize("edit,field", [(lambda c: c.pop("optimizer"), "optimizer"),
                                        (lambda c: c.__setitem__("epoch", None), "epoch"),
                                        (lambda c: c["train_config"].__setitem__("lr", "fast"), "lr")])
def test_resume_state_missing_or_malformed(run, tmp_path, edit, field):
    copy = _edited(run, tmp_path, edit)
    before = (copy / "last.pt").read_bytes()
    msg = one_line(sjvae("train", "--resume", "--out", copy, "--epochs", 2))
    assert "last.pt" in msg and field in msg
    assert (copy / "last.pt").read_bytes() == before and not (copy / ".lock").exists()


def test_resume_optimizer_state_of_another_model(run, tmp_path):
    copy = _edited(run, tmp_path, lambda c: c["optimizer"]["param_groups"][0].__setitem__("params", [0]))
    msg = one_line(sjvae("train", "--resume", "--out", copy, "--epochs", 2))
    assert "optimizer state" in msg


@pytest.mark.parametrize("damage", ["renamed", "lr text"])
def test_resume_with_train_config_json_damaged(run, tmp_path, damage):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    saved = copy / "train_config.json"
    data = json.loads(saved.read_text())
    if damage == "renamed":
        saved.rename(copy / "train_config.old.json")
    elif damage == "not json":
        saved.write_text('{"train_config": {"lr": ')
    elif damage == "lr text":
        data["train_config"]["lr"] = "0.1"
        saved.write_text(json.dumps(data))
    else:
        saved.write_text(json.dumps({"model_config": {}}))
    res = sjvae("train", "--resume", "--out", copy, "--epochs", 2)
    if damage == "renamed":  # the options last.pt records are used
        assert res.returncode == 0, res.stderr
        assert torch.load(copy / "last.pt", weights_only=True)["epoch"] == 2
    else:
        msg = one_line(res)
        assert "train_config.json" in msg and ("lr" in msg or "train_config" in msg or "JSON" in msg)


@pytest.mark.parametrize("damage", ["empty", "cut mid-row"])
def test_resume_with_log_csv_damaged(run, tmp_path, damage):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    log = copy / "log.csv"
    text = log.read_text()
    header = text.splitlines()[0]
    log.write_text({"empty": "", "cut mid-row": text[:len(header) + 6], "header only": header + "\n",
                    "garbage row": text + "x,,\n"}[damage])
    res = sjvae("train", "--resume", "--out", copy, "--epochs", 2)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = [line.split(",")[0] for line in log.read_text().splitlines()[1:]]
    assert rows == ["1", "2"], log.read_text()  # the lost row of epoch 1 redone from last.pt


# ------------------------------------------------------------------------------- 1. reproduce.json
@pytest.mark.parametrize("state,field", [({"dataset": "mnist"}, "model"),
                                         ({"dataset": "mnist", "model": "esvae",
                                           "schedule": {"dataset": "mnist", "model": "esvae", "epochs": 3},
                                           "calls": [{"epochs": 1, "wall_seconds": None}]}, "calls.0.wall_seconds")])
def test_reproduce_json_of_the_wrong_shape(tmp_path, state, field):
    folder = tmp_path / "repro" / "mnist" / "esvae"
    folder.mkdir(parents=True)
    (folder / "reproduce.json").write_text(json.dumps(state))
    msg = one_line(sjvae("reproduce", "--dataset", "mnist", "--models", "esvae", "--out", tmp_path / "repro",
                         "--quick", "--data-root", SHARED, "--device", "cpu"))
    assert "reproduce.json" in msg and field in msg


# ---------------------------------------------------------------------- 1. evaluate JSON -> compare
@pytest.fixture(scope="module")
def result(run):
    res = sjvae("evaluate", "--checkpoint", run / "last.pt", *MSE)
    assert res.returncode == 0, res.stderr
    return json.loads((run / "last.pt.eval-reference.json").read_text())


@pytest.mark.parametrize("path,value", [(("metrics", "mse", "mse"), "0.1"), (("metrics", "mse"), 3),
                                        (("unavailable",), ["fid"])])
def test_compare_of_evaluate_json_with_wrong_types(result, tmp_path, path, value):
    data = json.loads(json.dumps(result))
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    msg = one_line(sjvae("compare", bad))
    assert "bad.json" in msg and path[-1] in msg


def test_compare_of_evaluate_json_with_nan(result, tmp_path):
    bad = tmp_path / "nan.json"
    data = json.loads(json.dumps(result))
    data["metrics"]["mse"]["mse"] = float("nan")
    bad.write_text(json.dumps(data))  # Python writes the non-JSON token NaN
    assert "finite" in one_line(sjvae("compare", bad))


# ------------------------------------------------------------------------------------- 1. GMM prior
@pytest.fixture(scope="module")
def prior_file(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("prior") / "p.pt"
    res = sjvae("prior", "fit", "--checkpoint", run / "last.pt", "--components", 2, "--covariance", "diag",
                "--max-images", 64, "--data-root", SHARED, "--out", out)
    assert res.returncode == 0, res.stderr
    return out


@pytest.mark.parametrize("key,value", [("eps", 0.9), ("eps", torch.tensor(1e-4)),
                                       ("weights", torch.tensor([float("nan"), 1.0]))])
def test_gmm_prior_file_fields(run, prior_file, tmp_path, key, value):
    from spikingjelly_vae.prior.files import digest
    from spikingjelly_vae.prior.gmm import SCALARS, TENSORS
    payload = torch.load(prior_file, weights_only=True)
    payload[key] = value
    if key != "digest":
        try:  # a hostile file carries a matching digest
            payload["digest"] = digest(payload, ("format", "format_version", *SCALARS), TENSORS)
        except Exception:  # noqa: BLE001 - fields the digest cannot even hash
            pass
    bad = tmp_path / "bad.pt"
    torch.save(payload, bad)
    msg = one_line(sjvae("sample", "--checkpoint", run / "last.pt", "--prior", f"gmm:{bad}", "-n", 4,
                         "--out", tmp_path / "s.png"))
    assert "bad.pt" in msg and key in msg
    assert not (tmp_path / "s.png").exists()


# ------------------------------------------------------------------------ 4. outputs never replace inputs
def test_outputs_never_replace_a_file_of_another_kind(run, prior_file, result, tmp_path):
    ckpt = tmp_path / "model.pt"
    shutil.copyfile(run / "last.pt", ckpt)
    before = ckpt.read_bytes()
    attempts = [["evaluate", "--checkpoint", run / "last.pt", *MSE, "--output", ckpt],
                ["evaluate", "--checkpoint", run / "last.pt", *MSE, "--output", ckpt, "--force"],
                ["compare", "--output", ckpt], ["compare", "--output", ckpt, "--force"],
                ["sample", "--checkpoint", run / "last.pt", "-n", 2, "--out", ckpt, "--force"],
                ["prior", "fit", "--checkpoint", run / "last.pt", "--components", 2, "--max-images", 32,
                 "--data-root", SHARED, "--out", ckpt, "--force"]]
    for args in attempts:
        msg = one_line(sjvae(*args))
        assert "existing checkpoint" in msg and "never replaced" in msg, msg
        assert ckpt.read_bytes() == before
    table = run / "last.pt.eval-reference.json"  # an evaluate result is not a compare table
    kept = table.read_bytes()
    assert "existing evaluate result" in one_line(sjvae("compare", table, "--output", table, "--force"))
    assert table.read_bytes() == kept
    assert "existing GMM prior" in one_line(sjvae("evaluate", "--checkpoint", run / "last.pt", *MSE,
                                                  "--output", prior_file, "--force"))


def test_same_kind_output_needs_force(run, tmp_path):
    out = tmp_path / "e.json"
    assert sjvae("evaluate", "--checkpoint", run / "last.pt", *MSE, "--output", out).returncode == 0
    first = out.read_bytes()
    assert "--force" in one_line(sjvae("evaluate", "--checkpoint", run / "last.pt", *MSE, "--output", out))
    assert out.read_bytes() == first
    res = sjvae("evaluate", "--checkpoint", run / "last.pt", *MSE, "--output", out, "--force")
    assert res.returncode == 0, res.stderr
    table = tmp_path / "t.json"
    assert sjvae("compare", out, "--output", table).returncode == 0
    assert "--force" in one_line(sjvae("compare", out, "--output", table))
    assert sjvae("compare", out, "--output", table, "--force").returncode == 0


# --------------------------------------------------------------------------------- 9. NaN weights
@pytest.mark.parametrize("bad", [float("nan")])
def test_non_finite_weights_give_no_number(run, tmp_path, bad):
    def poison(c):
        key = next(k for k, v in c["model"].items() if v.is_floating_point() and v.dim() > 1)
        c["model"][key].view(-1)[0] = bad
    copy = _edited(run, tmp_path, poison)
    for command in (["evaluate", *MSE, "--output", tmp_path / "e.json"], ["sample", "-n", 2, "--out",
                                                                           tmp_path / "s.png"]):
        msg = one_line(sjvae(*command, "--checkpoint", copy / "last.pt"))
        assert "NaN or infinite" in msg
    assert not (tmp_path / "e.json").exists() and not (tmp_path / "s.png").exists()


def test_non_finite_metric_is_recorded_as_null_and_exits_nonzero(run, tmp_path):
    """Finite weights, a NaN result anyway: the JSON stays valid, says why, and the command fails."""
    code = ("import spikingjelly_vae.metrics.evaluate as e\n"
            "real = e.reconstruction_mse\n"
            "e.reconstruction_mse = lambda *a, **k: {**real(*a, **k), 'mse': float('nan')}")
    out = tmp_path / "e.json"
    res = sjvae("evaluate", "--checkpoint", run / "last.pt", *MSE, "--output", out, code=code)
    assert "non-finite mse" in one_line(res, code=1)
    saved = json.loads(out.read_text(), parse_constant=lambda token: pytest.fail(f"not JSON: {token}"))
    assert "mse" not in saved["metrics"] and "non-finite" in saved["unavailable"]["mse"]


# ---------------------------------------------------------------------------- 11. one-line errors
class Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_unpickling_refusal_is_one_line(run, tmp_path):
    bad = tmp_path / "evil.pt"
    ckpt = torch.load(run / "last.pt", weights_only=True)
    ckpt["metrics"] = Boom()
    torch.save(ckpt, bad)
    res = sjvae("info", "--checkpoint", bad)
    msg = one_line(res)
    assert "never loaded" in msg and "pwned" not in res.stdout + res.stderr
    assert "weights_only=False" not in res.stdout + res.stderr  # torch's advice to run the file's code
    bad.write_bytes(pickle.dumps({"model": {}}))  # a bare pickle
    one_line(sjvae("info", "--checkpoint", bad))


def test_state_dict_mismatch_is_one_line(run, tmp_path):
    copy = _edited(run, tmp_path, lambda c: c["config"].__setitem__("latent_dim", 9))
    msg = one_line(sjvae("info", "--checkpoint", copy / "last.pt"))
    assert "of another size" in msg and "--debug" in msg
    copy2 = _edited(run, tmp_path / "b", lambda c: c["model"].pop(next(iter(c["model"]))))
    assert "1 missing" in one_line(sjvae("info", "--checkpoint", copy2 / "last.pt"))


def test_unforeseen_error_is_one_line_and_debug_shows_the_traceback(run):
    code = ("import spikingjelly_vae.inference as i\n"
            "def boom(*a, **k): raise RuntimeError('first line\\nsecond line\\nthird line')\n"
            "i.model_summary = boom")
    msg = one_line(sjvae("info", "--checkpoint", run / "last.pt", code=code), code=1)
    assert "unexpected RuntimeError: first line" in msg and "--debug" in msg and "second" not in msg
    res = sjvae("--debug", "info", "--checkpoint", run / "last.pt", code=code)
    assert res.returncode == 1 and "Traceback" in res.stderr and "second line" in res.stderr
