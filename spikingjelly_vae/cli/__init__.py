"""The `sjvae` command line (click). Each command is a thin layer over the Python API.

Modules: `options` (shared option decorators), `training` (train, sample, reconstruct, info),
`metrics` (evaluate, fad-ae, compare), `experiments` (robustness, classify, analyze).
"""
from . import experiments, metrics, training  # noqa: F401  (registers the commands on main)
from .main import main

__all__ = ["main"]
