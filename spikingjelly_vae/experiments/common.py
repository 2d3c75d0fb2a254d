"""Shared plumbing of the experiments: seeded draws, model/data loading, atomic result files, provenance."""
from __future__ import annotations

import csv
import io
import platform
import subprocess
import time
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Subset

from ..atomic import atomic_write_bytes
from ..checkpoint import checkpoint_dataset
from ..models import SpikingVAE
from ..runtime import derived_seed


def generator_for(seed: int, stream: str, batch_index: int, device="cpu") -> torch.Generator:
    """A torch.Generator on ``device`` seeded by ``runtime.derived_seed(seed, stream, batch_index)``:
    same arguments, same draws."""
    return torch.Generator(device=device).manual_seed(derived_seed(int(seed), stream, int(batch_index)))


def is_spiking(model) -> bool:
    """True for models with latent spikes: a ``models.SpikingVAE`` (ESVAE, FSVAE; not the ANN VAE)."""
    return isinstance(model, SpikingVAE)


def require_spiking(model, path="model") -> None:
    """Raise ValueError unless ``model`` offers the latent-spike interface the experiments use."""
    if not is_spiking(model):
        name = getattr(model, "config", {}).get("model", type(model).__name__)
        raise ValueError(f"{path}: the {name!r} model has no latent spikes (posterior_spikes, prior_spikes); "
                         "this experiment needs a spiking VAE (esvae, fsvae)")


def load_spiking_model(path, device, spiking_only: bool = True) -> tuple:
    """``checkpoint.load_model`` + eval mode (+ the spiking-interface check) -> ``(model, checkpoint)``."""
    from ..checkpoint import load_model

    model, ckpt = load_model(path, map_location=device)
    if spiking_only:
        require_spiking(model, str(path))
    return model.eval(), ckpt


SAME_RUN = ("model", "in_channels", "image_size", "latent_dim", "T", "hidden")  # what a run never changes


def require_same_model(ckpt: dict, config: dict, what: str) -> None:
    """ValueError when checkpoint `ckpt` holds another model than `config` (so it is another run's)."""
    other = next((k for k in SAME_RUN if ckpt["config"].get(k) != config.get(k)), None)
    if other:
        raise ValueError(f"{what} is a checkpoint of another model ({other} {ckpt['config'].get(other)!r}, the "
                         f"analysed one {config.get(other)!r}); give checkpoints of the same run")


def choose_dataset(dataset: Optional[str], ckpts: Sequence[dict], paths: Sequence) -> str:
    """``dataset`` if given, else the one every checkpoint records; checked against the models' inputs."""
    from ..data import dataset_info

    names = {checkpoint_dataset(c) for c in ckpts}
    if dataset is None:
        if len(names) != 1 or None in names:
            raise ValueError("cannot tell the dataset from the checkpoint(s) "
                             f"({', '.join(str(p) for p in paths)}); "
                             "pass --dataset mnist|fashion|cifar10|celeba")
        dataset = names.pop()
    info = dataset_info(dataset)
    for ckpt, path in zip(ckpts, paths):
        cfg = ckpt["config"]
        if cfg.get("in_channels") != info["in_channels"] or cfg.get("image_size") != info["image_size"]:
            raise ValueError(f"{path}: model takes {cfg.get('in_channels')}x{cfg.get('image_size')}px images "
                             f"but {dataset} has {info['in_channels']}x{info['image_size']}px; pass the "
                             "--dataset it was trained on")
    return dataset


def image_loader(dataset: str, split: str, *, root=None, num_images: Optional[int] = None,
                 batch_size: int = 256, cache_dir=None) -> DataLoader:
    """The first ``num_images`` images of a split, in file order, no augmentation, as a DataLoader."""
    from ..data import load_dataset

    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    ds = load_dataset(dataset, split, root=root, cache_dir=cache_dir, augment=False)
    if num_images is not None:
        if num_images < 1:
            raise ValueError(f"number of images must be >= 1, got {num_images}")
        ds = Subset(ds, range(min(int(num_images), len(ds))))
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)


def model_label(ckpt: dict, path) -> str:
    """A short label for plots: the model name and the checkpoint's file stem."""
    return f"{ckpt['config'].get('model', 'model')}:{Path(path).stem}"


def unique_labels(labels: Sequence[str]) -> List[str]:
    """Make labels unique by appending #2, #3, ... to repeats."""
    seen, out = {}, []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return out


def safe_name(label: str) -> str:
    """A file-name-safe version of a label."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def write_csv(path, rows: Iterable[dict], fieldnames: Sequence[str]) -> Path:
    """Write dict rows as CSV (None -> empty cell) via a temp file + rename."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fieldnames), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return atomic_write_bytes(path, buf.getvalue().encode())


def save_figure(fig, path, dpi: int = 150) -> Path:
    """Save a matplotlib figure as PNG via a temp file + rename, then close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def git_commit() -> Optional[str]:
    """The package checkout's commit (``+dirty`` when it has local changes), or None outside git."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(device, started: float, **extra) -> dict:
    """Who/what/where of a result: package version, commit, torch, device name, seconds taken."""
    from .. import __version__

    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"package_version": __version__, "commit": git_commit(), "torch": torch.__version__,
            "device": str(device), "device_name": name, "threads": torch.get_num_threads(),
            "seconds": round(time.time() - started, 3), **extra}
