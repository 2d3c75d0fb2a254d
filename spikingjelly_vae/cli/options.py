"""Options shared by the `sjvae` commands, as click decorators, and the ValueError -> usage-error rule."""
from __future__ import annotations

import functools

import click

from ..data import DATASETS
from ..runtime import DEVICE_HELP

DATA_ROOT_HELP = "Folder holding the datasets (else env SJVAE_DATA, else ./data)."
CACHE_HELP = "Cache for extracted archives (else env SJVAE_CACHE, else ~/.cache/spikingjelly_vae)."


def options(*decorators):
    """Apply several option decorators in the order they are listed (as they show in --help)."""
    def apply(f):
        for decorator in reversed(decorators):
            f = decorator(f)
        return f
    return apply


def reports_value_errors(f):
    """Turn a ValueError of the Python API into a click usage error (exit code 2, message printed)."""
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except ValueError as e:
            raise click.UsageError(str(e)) from None
    return wrapper


def device_option(f):
    return click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)(f)


def seed_option(default: int, help: str):
    return click.option("--seed", type=int, default=default, show_default=True, help=help)


def force_option(f):
    return click.option("--force", is_flag=True, help="Replace --out if it exists.")(f)


def data_root_option(help: str = DATA_ROOT_HELP):
    return click.option("--data-root", default=None, help=help)


def cache_dir_option(help: str = CACHE_HELP):
    return click.option("--cache-dir", default=None, help=help)


def data_options(cache_help: str = CACHE_HELP):
    """--data-root and --cache-dir."""
    return options(data_root_option(), cache_dir_option(cache_help))


def dataset_option(help: str, default=None, required: bool = False, choice: bool = True):
    """--dataset; `choice` restricts it to the names of data.DATASETS in click (else the API checks it)."""
    kind = click.Choice(list(DATASETS)) if choice else None
    return click.option("--dataset", type=kind, default=default, required=required, show_default=default is not None,
                        help=help)


def checkpoint_option(help: str = "Model checkpoint written by `sjvae train`.", required: bool = True):
    return click.option("--checkpoint", required=required, default=None,
                        type=click.Path(exists=True, dir_okay=False), help=help)


def checkpoints_option(help: str):
    """--checkpoint, repeatable (several models on identical draws), with a --label per checkpoint."""
    return options(
        click.option("--checkpoint", "checkpoints", required=True, multiple=True,
                     type=click.Path(exists=True, dir_okay=False), help=help),
        click.option("--label", "labels", multiple=True, help="Label per --checkpoint (default: model:file)."))


def parse_model_opts(ctx, param, values):
    """--model-opt KEY=VALUE -> dict, VALUE parsed as int, float, true/false, a list of numbers when it
    holds commas (hidden=4,4,8,8 -> [4, 4, 8, 8]), or kept as text."""
    opts = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}")
        parts = [_parse_value(p) for p in raw.split(",")] if "," in raw else []
        numbers = parts and all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in parts)
        opts[key.strip()] = parts if numbers else _parse_value(raw)
    return opts


def _parse_value(raw: str):
    low = raw.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw
