"""schemas.py in process: each format's schema refuses wrong types, ranges and shapes with one line naming the
file and the field, and accepts what the package itself writes (the CLI cases: tests/test_faults_files.py)."""
import copy
import math

import pytest
import torch

from spikingjelly_vae import schemas
from spikingjelly_vae.schemas import FileFormatError, check

CONFIG = {"model": "esvae", "in_channels": 1, "image_size": 32, "latent_dim": 8, "T": 4, "hidden": [4, 4, 8, 8],
          "mmd_lambda": 0.001, "half_width": 0.5, "kernel_backend": "auto", "fuse_bn_lif": False}
RESUME = {"model": {"w": torch.zeros(2)}, "config": CONFIG, "epoch": 1, "step": 4,
          "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}, "best_test_loss": 0.5,
          "train_config": {"dataset": "mnist", "model": "esvae", "lr": 0.1, "seed": 42, "model_kwargs": {}},
          "metrics": {"test_loss": 0.5}}
REPRO = {"dataset": "mnist", "model": "esvae", "schedule": {"dataset": "mnist", "model": "esvae", "epochs": 3},
         "evaluated": None,
         "calls": [{"epochs": 1, "wall_seconds": 2.5, "from_epoch": 0, "to_epoch": 1}]}
RESULT = {"dataset": "mnist", "metrics": {"mse": {"mse": 0.1, "mse_batch_mean": 0.1, "num_images": 16}},
          "unavailable": {"fid": "no weights"}, "checkpoint": "x.pt", "checkpoint_sha256": "a" * 64, "prior": "learned"}
GMM = {"format": "spikingjelly_vae.gmm_prior", "format_version": 1, "covariance": "diag", "eps": 1e-4,
       "weights": torch.tensor([0.5, 0.5], dtype=torch.float64), "means": torch.zeros(2, 3, dtype=torch.float64),
       "covariances": torch.ones(2, 3, dtype=torch.float64), "provenance": {}, "digest": "0" * 64}


def _set(data, path, value):
    data = copy.deepcopy(data)
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


def _refused(schema, data, field):
    with pytest.raises(FileFormatError) as err:
        check(schema, data, "some/file")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("some/file") and field in msg, msg
    return msg


def test_what_the_package_writes_passes():
    for schema, data in ((schemas.ModelConfig, CONFIG), (schemas.ResumeState, RESUME),
                         (schemas.ReproduceState, REPRO), (schemas.EvaluateResult, RESULT),
                         (schemas.GMMPriorFile, GMM), (schemas.Checkpoint, RESUME)):
        check(schema, data, "f")


@pytest.mark.parametrize("key,value", [("latent_dim", -5), ("latent_dim", 10 ** 10), ("latent_dim", "8"),
                                       ("latent_dim", 8.0), ("T", 2.5), ("T", 0), ("hidden", [4, 4, 8, 10 ** 9]),
                                       ("hidden", "4,4,8,8"), ("hidden", []), ("in_channels", True),
                                       ("in_channels", 100), ("kernel_backend", 7), ("kernel_backend", "rocm"),
                                       ("half_width", float("nan")), ("mmd_lambda", -1.0), ("model", 3),
                                       ("fuse_bn_lif", "yes"), ("kld_weight", "often"), ("image_size", 10 ** 6)])
def test_model_config(key, value):
    _refused(schemas.ModelConfig, _set(CONFIG, [key], value), key)


@pytest.mark.parametrize("path,value", [(["optimizer"], KeyError), (["epoch"], None), (["epoch"], "1"),
                                        (["epoch"], -1), (["step"], -3), (["optimizer", "param_groups"], []),
                                        (["optimizer", "state"], None), (["train_config"], KeyError),
                                        (["train_config", "lr"], "fast"), (["train_config", "batch_size"], 0),
                                        (["train_config", "seed"], 1.5), (["model"], {"w": [1.0]}),
                                        (["config", "latent_dim"], -1), (["best_test_loss"], "low")])
def test_resume_state(path, value):
    _refused(schemas.ResumeState, _set(RESUME, path, value), path[-1])


@pytest.mark.parametrize("path,value", [(["schedule"], KeyError), (["schedule", "epochs"], "3"),
                                        (["schedule", "epochs"], 0), (["calls"], {}), (["calls", 0, "epochs"], -1),
                                        (["calls", 0, "wall_seconds"], float("inf")), (["dataset"], None),
                                        (["shipped"], {"epoch": "x"})])
def test_reproduce_state(path, value):
    _refused(schemas.ReproduceState, _set(REPRO, path, value), str(path[-1]))


@pytest.mark.parametrize("path,value", [(["metrics", "mse", "mse"], "0.1"), (["metrics", "mse", "mse"], [1]),
                                        (["metrics", "mse", "mse"], math.nan), (["metrics", "mse", "mse"], -0.1),
                                        (["metrics", "mse", "num_images"], 1.5), (["metrics", "mse"], 3),
                                        (["metrics", "fid"], {"fid": {}}), (["metrics", "is"], {"is": math.inf}),
                                        (["dataset"], 5), (["unavailable"], ["fid"]), (["checkpoint_sha256"], 12),
                                        (["checkpoint_sha256"], "xyz"), (["prior"], None),
                                        (["dataset_mismatch"], "no"), (["metrics"], KeyError)])
def test_evaluate_result(path, value):
    _refused(schemas.EvaluateResult, _set(RESULT, path, value), path[-1])


@pytest.mark.parametrize("key,value", [("eps", 0.9), ("eps", 0.5), ("eps", 0.0), ("eps", torch.tensor(1e-4)),
                                       ("covariance", torch.tensor(1.0)), ("covariance", "spherical"),
                                       ("format_version", torch.tensor(1)), ("means", [[0.0] * 3] * 2),
                                       ("weights", torch.tensor([math.nan, 1.0])), ("weights", torch.tensor([1, 0])),
                                       ("means", torch.zeros(2, 3, 1)), ("digest", None), ("provenance", KeyError),
                                       ("extra", 1)])
def test_gmm_prior_file(key, value):
    _refused(schemas.GMMPriorFile, _set(GMM, [key], value), key)


def test_not_a_mapping():
    assert "expected a mapping" in _refused(schemas.ReproduceState, [], "reproduce.json")


def test_torch_load_errors_in_one_line():
    import pickle
    assert "never loaded" in schemas.load_error_line(pickle.UnpicklingError("Weights only load failed.\nmore\nmore"))
    assert schemas.load_error_line(RuntimeError("first\nsecond")) == "first"  # words, never a class name
    assert schemas.load_error_line(EOFError()) == "the file ends too early (empty or cut short)"
    assert schemas.load_error_line(IndexError("pop from empty list")) == "it is cut short or malformed"


@pytest.mark.parametrize("provenance", [{"images": torch.zeros(2)}, {"checkpoint_sha256": torch.zeros(2, 2)},
                                        {"checkpoint": 5}, {"checkpoint_sha256": "abc"}])
def test_gmm_provenance_holds_plain_values(provenance):
    _refused(schemas.GMMPriorFile, _set(GMM, ["provenance"], provenance), "provenance")


@pytest.mark.parametrize("path,value", [(["best_test_loss"], None), (["metrics", "test_loss"], None),
                                        (["metrics", "test_loss"], "x")])
def test_resume_numbers_the_run_compares(path, value):
    _refused(schemas.ResumeState, _set(RESUME, path, value), path[-1])


@pytest.mark.parametrize("path,value", [(["metrics", "mse"], None), (["model", "model"], 5), (["model"], [1])])
def test_evaluate_result_records(path, value):
    _refused(schemas.EvaluateResult, _set({**RESULT, "model": {"model": "esvae"}}, path, value), path[-1])
