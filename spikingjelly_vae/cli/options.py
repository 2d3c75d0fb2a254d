"""Options shared by the `sjvae` commands, as click decorators, and the one error path of every command:
bad input (ValueError) -> usage error (exit 2); a file that cannot be read or written (OSError, e.g. a full
disk or a read-only folder) -> one-line error (exit 1). The global `sjvae --debug` shows the traceback."""
from __future__ import annotations

import errno
import functools
import math
import os
import re
import tempfile
from pathlib import Path

import click

from ..data import DATASETS
from ..runtime import DEVICE_HELP

DATA_ROOT_HELP = "Folder holding the datasets (else env SJVAE_DATA, else ./data)."
CACHE_HELP = "Cache for extracted archives (else env SJVAE_CACHE, else ~/.cache/spikingjelly_vae)."


MAX_COUNT = 2 ** 31 - 1  # counts and sizes: bounded, so no slice or tensor call fails deep inside
MAX_WORKERS = 128  # DataLoader workers: each one is a process


class FiniteFloat(click.FloatRange):
    """click's FloatRange that also refuses NaN and infinities (NaN passes every range comparison)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def finite(min=None, max=None, **open_ends) -> FiniteFloat:
    """A finite float option type within [min, max] (min_open / max_open as click's FloatRange)."""
    return FiniteFloat(min, max, **open_ends)


def count(min: int = 0, max: int = MAX_COUNT) -> click.IntRange:
    """An integer option type within [min, max]; the upper bound keeps huge values out of slices and tensors."""
    return click.IntRange(min, max)


SEED = click.IntRange(-2 ** 63, 2 ** 63 - 1)  # what torch.manual_seed and the derived seeds take


def options(*decorators):
    """Apply several option decorators in the order they are listed (as they show in --help)."""
    def apply(f):
        for decorator in reversed(decorators):
            f = decorator(f)
        return f
    return apply


def _debug() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.find_root().params.get("debug"))


def reports_value_errors(f):
    """Failures as one line and a non-zero exit: ValueError -> usage error (exit 2), OSError (unreadable or
    unwritable file, full disk) -> error (exit 1), anything else -> "unexpected ..." (exit 1); with
    `sjvae --debug` they propagate with their traceback."""
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except ValueError as e:
            if _debug():
                raise
            raise click.UsageError(one_line(str(e))) from None
        except OSError as e:
            if _debug():
                raise
            raise click.ClickException(one_line(os_error_line(e))) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise  # click's own errors and exits (a signal's 128 + signum) keep their code
        except Exception as e:  # a failure nobody foresaw: still one line; the traceback under --debug
            if _debug():
                raise
            if out_of_memory(e):
                raise click.ClickException(out_of_memory(e)) from None
            raise click.ClickException(f"unexpected {type(e).__name__}: {one_line(str(e))}; rerun with "
                                       "`sjvae --debug ...` for the traceback and report it") from None
    return wrapper


def out_of_memory(e: BaseException) -> str:
    """The one line for a failed allocation (MemoryError, torch's CPU or CUDA allocator), else ''."""
    text = str(e)
    if not (isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError"
            or "can't allocate memory" in text or "out of memory" in text.lower()):
        return ""
    asked = re.search(r"allocate (\d+) bytes", text)
    size = f" ({int(asked.group(1)) / 1e9:,.1f} GB asked for)" if asked else ""
    return (f"not enough memory{size}: lower the sizes this command was given (batch size, number of images, "
            "--latent-dim, --T, grid or model sizes) and rerun")


def one_line(message: str) -> str:
    """An error message as one line: its first non-empty line, plus where the rest is (`sjvae --debug`)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else message
    return f"{lines[0]} (`sjvae --debug ...` shows the details)"


def os_error_line(e: OSError) -> str:
    """`no space left on <path>` for a full disk (or quota), else `cannot read or write <path>: <reason>`."""
    where = f" {e.filename}" if e.filename else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"no space left on{where or ' the device'} ({e.strerror or e}); free some space and rerun "
                "(files written before are unchanged)")
    return f"cannot read or write{where}: {e.strerror or e}"


def check_writable(path) -> Path:
    """Make sure a file can be created at `path` (its folder is made if needed) before long work starts;
    OSError (as the command's one-line error) otherwise."""
    folder = Path(path).parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
    os.close(fd)
    os.unlink(probe)
    return Path(path)


def device_option(f):
    return click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)(f)


def seed_option(default: int, help: str, kind: click.IntRange = SEED):
    return click.option("--seed", type=kind, default=default, show_default=True, help=help)


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
    holds commas (hidden=4,4,8,8 or hidden=(4,4,8,8) -> [4, 4, 8, 8]), or kept as text."""
    opts = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}")
        inner = raw.strip()
        if inner[:1] in "([" and inner[-1:] in ")]" and len(inner) > 1:
            inner = inner[1:-1]
        parts = [_parse_value(p) for p in inner.split(",")] if "," in inner else []
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


# ----------------------------------------------------------------- --pretrained and --prior (integ-cli)
PRIOR_HELP = ("Rate source of generated images: learned (the model's own prior, the paper's protocol) or "
              "gmm:PATH / diffusion:PATH (ESVAE only: a Gaussian mixture or diffusion prior from "
              "`sjvae prior fit --kind gmm|diffusion`, fitted to this checkpoint). "
              "See docs/prior.md.")


def _prior_spec(ctx, param, value):
    kind, _, path = value.partition(":")
    if value != "learned" and not (kind in ("gmm", "diffusion") and path):
        raise click.BadParameter(f"expected learned, gmm:PATH or diffusion:PATH, got {value!r}")
    return value


prior_option = click.option("--prior", default="learned", show_default=True, callback=_prior_spec,
                            metavar="learned|gmm:PATH|diffusion:PATH", help=PRIOR_HELP)


def checkpoint_or_pretrained(help: str = "Model checkpoint written by `sjvae train`.",
                             multiple: bool = False):
    """--checkpoint PATH or --pretrained NAME, exactly one. A name is resolved to its sha256-checked weights
    file (`pretrained.verified_file`; it loads as a checkpoint), which the command gets as its checkpoint;
    an unset --dataset becomes the entry's. The command receives `pretrained` (the name or names) only if
    its signature has that parameter. With `multiple`, both options repeat (`checkpoints`, with --label)."""
    key = "checkpoints" if multiple else "checkpoint"
    name_help = ("Named pretrained weights instead of --checkpoint (`sjvae pretrained` lists them)"
                 + ("; repeatable." if multiple else "."))

    def decorate(f):
        import inspect
        wants_name = "pretrained" in inspect.signature(f).parameters

        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            names = kwargs.pop("pretrained")
            names = tuple(names) if multiple else ((names,) if names else ())
            if bool(names) == bool(kwargs[key]):
                raise click.UsageError("pass exactly one of --checkpoint PATH and --pretrained NAME "
                                       "(`sjvae pretrained` lists the names and their status)")
            if names:
                paths, datasets = _resolve_pretrained(names)
                kwargs[key] = tuple(paths) if multiple else paths[0]
                if kwargs.get("dataset", "") is None and len(set(datasets)) == 1:
                    kwargs["dataset"] = datasets[0]
            if wants_name:
                kwargs["pretrained"] = names if multiple else (names[0] if names else None)
            return f(*args, **kwargs)

        opts = [click.option("--checkpoint", key, multiple=multiple, default=None,
                             type=click.Path(exists=True, dir_okay=False), help=f"{help} Or --pretrained."),
                click.option("--pretrained", multiple=multiple, default=None, metavar="NAME", help=name_help)]
        if multiple:
            opts.append(click.option("--label", "labels", multiple=True,
                                     help="Label per model (default: model:file stem)."))
        return options(*opts)(wrapper)
    return decorate


def _resolve_pretrained(names) -> tuple:
    from ..pretrained import PretrainedError, verified_file
    paths, datasets = [], []
    for name in names:
        try:
            path, entry = verified_file(name)
        except PretrainedError as err:
            raise click.UsageError(str(err)) from None
        paths.append(str(path))
        datasets.append(entry.dataset)
    return paths, datasets


# ----------------------------------------------------------------- --download (integ-train)
DOWNLOAD_HELP = ("Fetch the dataset into the data root (--data-root, else env SJVAE_DATA, else ./data) if it is "
                 "missing there; see docs/download.md. Without it nothing is ever downloaded.")


def download_option(f):
    """--download: fetch a missing dataset into the data root the user named (docs/download.md)."""
    return click.option("--download", is_flag=True, help=DOWNLOAD_HELP)(f)


def download_if_asked(download: bool, dataset, data_root, checkpoints=()) -> None:
    """With --download, fetch `dataset` (else the one the first checkpoint records) into the data root."""
    if not download:
        return
    from .. import download as _download
    if dataset is None and checkpoints:
        from ..checkpoint import checkpoint_dataset, load_checkpoint
        dataset = checkpoint_dataset(load_checkpoint(checkpoints[0]))
    if dataset is None:
        raise ValueError("--download needs the dataset: pass --dataset mnist|fashion|cifar10|celeba")
    _download.download_dataset(dataset, data_root, log=lambda msg: click.echo(msg, err=True))
