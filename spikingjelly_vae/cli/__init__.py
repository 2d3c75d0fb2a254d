"""The `sjvae` command line (click). Each command is a thin layer over the Python API.

Modules: `options` (shared option decorators), `training` (train, sample, reconstruct, info),
`metrics` (evaluate, fad-ae, compare), `experiments` (robustness, classify, analyze), `reproduce`,
`pretrained` (the list of named weights), `prior` (prior fit), `convert` (convert-official).
"""
from . import experiments, metrics, training  # noqa: F401  (registers the commands on main)
from . import pretrained, prior, reproduce  # noqa: F401
from . import convert  # noqa: F401  (sjvae convert-official)
from .main import main

__all__ = ["main"]
