"""What a training run writes into its run folder (rank 0 only): `train_config.json`, `last.pt`,
`best.pt` (when the test loss improves), `checkpoints/epochNNNN.pt` (every `keep_every` epochs),
a row of `log.csv` per epoch (and TensorBoard scalars under `tb/` if installed), and the PNG grids
`images/recon_epochNNNN.png` (originals and reconstructions, alternate rows) and
`images/samples_epochNNNN.png`."""
from __future__ import annotations

import csv
import shutil
from datetime import datetime
from pathlib import Path
from typing import Optional

import torch

from ..atomic import atomic_write_text, write_json
from ..checkpoint import save_checkpoint
from ..data import to_unit_range
from ..runtime import eval_mode

__all__ = ["RUN_FILES", "prepare_out", "CsvLog", "open_tensorboard", "write_train_config", "write_epoch",
           "grid_due", "write_grids", "save_recon_grid", "save_sample_grid"]

RUN_FILES = ("last.pt", "best.pt", "log.csv", "train_config.json", "images", "tb", "checkpoints")


def prepare_out(cfg) -> Path:
    """Choose/check the run folder. Refuses to reuse a folder holding a run without --resume or --force."""
    if cfg.out is None:
        if cfg.resume:
            raise ValueError("--resume needs --out <run folder> (the folder holding last.pt)")
        base = Path("runs") / f"{cfg.dataset}-{cfg.model}-{datetime.now():%Y%m%d-%H%M%S}"
        out, k = base, 1
        while out.exists():
            k += 1
            out = base.with_name(f"{base.name}-{k}")
    else:
        out = Path(cfg.out)
    present = [name for name in RUN_FILES if (out / name).exists()]
    if cfg.resume:
        if not (out / "last.pt").is_file():
            raise ValueError(f"nothing to resume in {str(out)!r}: it has no last.pt; drop --resume to start "
                             "a new run there")
    elif present and not cfg.force:
        raise ValueError(f"{str(out)!r} already holds a run ({', '.join(present)}); pass --resume to continue "
                         "it, --force to start over (its run files are replaced), or another --out")
    elif present:
        for name in present:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


class CsvLog:
    """log.csv, one row per epoch; on resume, rows after the checkpoint's epoch are dropped."""

    def __init__(self, path: Path, keep_through_epoch: Optional[int] = None):
        self.path, self.fields = path, None
        if path.is_file():
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                self.fields = reader.fieldnames
                rows = [r for r in reader if keep_through_epoch is not None and int(r["epoch"]) <= keep_through_epoch]
            buf = [",".join(self.fields)] + [",".join(r[k] for k in self.fields) for r in rows]
            atomic_write_text(path, "\n".join(buf) + "\n")

    def write(self, row: dict) -> None:
        new = self.fields is None
        if new:
            self.fields = list(row)
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)


def open_tensorboard(out: Path, enabled: bool):
    """A SummaryWriter on <out>/tb, or None when disabled or TensorBoard is not installed."""
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: the CSV log is enough
        return None
    return SummaryWriter(str(out / "tb"))


def write_train_config(out: Path, cfg, model_config: dict, world: int) -> Path:
    """train_config.json: the resolved options, the model config and the number of processes."""
    return write_json(out / "train_config.json",
                      {"train_config": cfg.to_dict(), "model_config": model_config, "world_size": world})


def write_epoch(out: Path, cfg, state: dict, *, best: float, csv_log: CsvLog, writer) -> float:
    """Checkpoints (last, best if improved, kept history), the log row and TensorBoard scalars of one epoch.

    `state` is the checkpoint dict without `best_test_loss`; returns the new best test loss."""
    metrics, epoch = state["metrics"], state["epoch"]
    improved = metrics["test_loss"] < best
    best = min(best, metrics["test_loss"])
    state = {**state, "best_test_loss": best}
    save_checkpoint(out / "last.pt", state)
    if improved:
        save_checkpoint(out / "best.pt", state)
    if cfg.keep_every and epoch % cfg.keep_every == 0:  # the history of a run (Fig. 7 of the paper)
        save_checkpoint(out / "checkpoints" / f"epoch{epoch:04d}.pt", state)
    csv_log.write(metrics)
    if writer is not None:
        for key, value in metrics.items():
            if key not in ("epoch", "step"):
                writer.add_scalar(key, value, epoch)
        writer.flush()
    return best


def grid_due(cfg, epoch: int, last_epoch: bool) -> bool:
    """Whether epoch `epoch` (1-based) writes image grids: every `grid_every` epochs and after the last."""
    return bool(cfg.grid_every and epoch % cfg.grid_every == 0) or last_epoch


def write_grids(out: Path, model, images: torch.Tensor, *, n_samples: int, epoch: int, generator) -> list:
    """The reconstruction and sample grids of epoch `epoch` (1-based); returns their paths as text."""
    recon = save_recon_grid(model, images, out / "images" / f"recon_epoch{epoch:04d}.png", generator)
    samples = save_sample_grid(model, n_samples, out / "images" / f"samples_epoch{epoch:04d}.png", generator)
    return [str(recon), str(samples)]


@torch.no_grad()
def save_recon_grid(model, images: torch.Tensor, path, generator=None, *, nrow: int = 8) -> Path:
    """PNG of originals and reconstructions in alternating rows of `nrow` (eval mode)."""
    from torchvision.utils import save_image
    with eval_mode(model):
        recon = model(images, generator=generator)[0].float()
    rows = []
    for i in range(0, images.shape[0], nrow):
        rows += [images[i:i + nrow].float(), recon[i:i + nrow]]
        if rows[-1].shape[0] < nrow:  # pad a short last row pair so originals and recons stay aligned
            pad = nrow - rows[-1].shape[0]
            rows[-2:] = [torch.cat([r, -torch.ones(pad, *r.shape[1:], device=r.device)]) for r in rows[-2:]]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(to_unit_range(torch.cat(rows).cpu()), str(path), nrow=nrow, padding=2, pad_value=1.0)
    return path


@torch.no_grad()
def save_sample_grid(model, n: int, path, generator=None, *, nrow: int = 8) -> Path:
    """PNG grid of `model.sample(n)` (eval mode)."""
    from torchvision.utils import save_image
    with eval_mode(model):
        images = model.sample(n, generator=generator).float()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(to_unit_range(images.cpu()), str(path), nrow=nrow, padding=2, pad_value=1.0)
    return path
