"""What a training run writes into its run folder (rank 0 only): `train_config.json`, `last.pt`,
`best.pt` (when the test loss improves), `checkpoints/epochNNNN.pt` (every `keep_every` epochs),
a row of `log.csv` per epoch (and TensorBoard scalars under `tb/` if installed), and the PNG grids
`images/recon_epochNNNN.png` (originals and reconstructions, alternate rows) and
`images/samples_epochNNNN.png`; `resume.pt`, the step-exact state inside an epoch, is written by the loop
(train/resume.py) and removed here once the epoch's last.pt supersedes it.

One epoch's outputs are last.pt, best.pt, the log row and the grids, written in that order. A crash
between them is repaired on --resume (`repair_epoch`, from last.pt). The writer holds `<out>/.lock`
(its pid); stale temp files of an earlier crash are removed when a run starts."""
from __future__ import annotations

import csv
import io
import math
import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import Optional

import torch

from ..atomic import atomic_write, atomic_write_text, write_json
from ..checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ..data import to_unit_range
from ..runtime import eval_mode
from .resume import RESUME_FILE

__all__ = ["RUN_FILES", "LOCK_FILE", "prepare_out", "release_lock", "repair_epoch", "CsvLog", "open_tensorboard",
           "write_train_config", "write_epoch", "lock_folder",
           "grid_due", "write_grids", "save_recon_grid", "save_sample_grid"]

RUN_FILES = ("last.pt", "best.pt", RESUME_FILE, "log.csv", "train_config.json", "images", "tb", "checkpoints")
LOCK_FILE = ".lock"
_HELD: dict = {}  # lock files this process holds -> how many times taken (the lock is re-entrant)


def prepare_out(cfg) -> Path:
    """Choose/check the run folder and lock it (`release_lock` frees it). Refuses to reuse a folder holding
    a run (a finished epoch: last.pt) without --resume or --force; leftovers of a run that never finished
    an epoch are replaced."""
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
    finished = any((out / name).is_file() for name in ("last.pt", "best.pt", RESUME_FILE))
    if cfg.resume and not ((out / "last.pt").is_file() or (out / RESUME_FILE).is_file()):
        raise ValueError(f"nothing to resume in {str(out)!r}: it has no last.pt or {RESUME_FILE} (nothing was "
                         "saved); rerun the same command without --resume to start the run there (its leftovers "
                         "are replaced)")
    if finished and not cfg.resume and not cfg.force:
        raise ValueError(f"{str(out)!r} already holds a run ({', '.join(present)}); pass --resume to continue "
                         "it, --force to start over (its run files are replaced), or another --out")
    out.mkdir(parents=True, exist_ok=True)
    _acquire_lock(out)
    for folder in (out, out / "images", out / "checkpoints"):  # temp files of a crashed atomic write
        for tmp in folder.glob(".*.tmp*"):
            tmp.unlink(missing_ok=True)
    if not cfg.resume:
        for name in present:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return out


def _acquire_lock(out: Path) -> None:
    """Create <out>/.lock holding our pid; a lock of a live process -> ValueError, of a dead one is taken over.
    Re-entrant: a lock this process holds is counted, and freed by the matching number of `release_lock`."""
    path = out / LOCK_FILE
    key = str(path.resolve())
    if key in _HELD and _lock_owner(path) == os.getpid():
        _HELD[key] += 1
        return
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _lock_owner(path)
            if owner is not None and owner != os.getpid() and _alive(owner):
                raise ValueError(f"run folder {str(out)!r} is in use by process {owner} (see {path}); wait for it "
                                 "to finish or stop it, or use another --out") from None
            path.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        _HELD[key] = 1
        return
    raise ValueError(f"could not lock run folder {str(out)!r} (another process keeps taking {path})")


def _lock_owner(path: Path) -> Optional[int]:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_folder(out: Path) -> None:
    """Take <out>/.lock (as a training run does) for other work on a run folder, e.g. its evaluation; ValueError
    when another live process holds it. Free it with `release_lock`."""
    Path(out).mkdir(parents=True, exist_ok=True)
    _acquire_lock(Path(out))


def release_lock(out: Path) -> None:
    """Release <out>/.lock once; the file goes when this process has released it as often as it took it."""
    path = Path(out) / LOCK_FILE
    key = str(path.resolve())
    held = _HELD.pop(key, 1) - 1
    if held > 0:
        _HELD[key] = held
        return
    if _lock_owner(path) == os.getpid():
        path.unlink(missing_ok=True)


class CsvLog:
    """log.csv, one row per epoch; on resume, rows after the checkpoint's epoch are dropped."""

    def __init__(self, path: Path, keep_through_epoch: Optional[int] = None, checkpoint_metrics=None):
        """`checkpoint_metrics`: the metrics of the resumed checkpoint's epoch; a row of that epoch with
        another test loss means the log is another run's, and ValueError says so (nothing is written)."""
        self.path, self.fields, self.last_epoch = path, None, 0
        if path.is_file():
            with path.open(newline="") as f:
                text = f.read()
            whole = text[:text.rfind("\n") + 1]  # a row cut by a crash mid-write has no line end: drop it
            with io.StringIO(whole, newline="") as f:
                reader = csv.DictReader(f)
                self.fields = reader.fieldnames if reader.fieldnames and "epoch" in reader.fieldnames else None
                read = list(reader)
            rows = [r for r in read if self.fields and keep_through_epoch is not None
                    and _whole_row(r, self.fields) and int(r["epoch"]) <= keep_through_epoch]
            if self.fields is None:  # empty or without a header: start it again (repair_epoch redoes a row)
                path.unlink()
                return
            _check_rows_match(path, rows, checkpoint_metrics)
            if rows != read or whole != text:  # rewritten only when rows go
                with io.StringIO(newline="") as buf:
                    writer = csv.DictWriter(buf, fieldnames=self.fields)
                    writer.writeheader()
                    writer.writerows(rows)
                    atomic_write_text(path, buf.getvalue())
            self.last_epoch = max((int(r["epoch"]) for r in rows), default=0)

    def write(self, row: dict) -> None:
        new = self.fields is None
        if new:
            self.fields = list(row)
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
            f.flush()
            os.fsync(f.fileno())
        self.last_epoch = int(row["epoch"])


def _check_rows_match(path: Path, rows: list, metrics) -> None:
    """ValueError when the row of the checkpoint's epoch records another test loss than the checkpoint."""
    epoch, loss = (metrics or {}).get("epoch"), (metrics or {}).get("test_loss")
    row = next((r for r in rows if r["epoch"] == str(epoch)), None)
    if row is None or loss is None or "test_loss" not in row:
        return
    try:
        same = math.isclose(float(row["test_loss"]), float(loss), rel_tol=1e-9)
    except ValueError:
        same = False
    if not same:
        raise ValueError(f"{path} is not this run's log: its epoch {epoch} row has test loss {row['test_loss']}, "
                         f"the checkpoint {loss!r}; restore this run's log.csv, or move it away (the resume "
                         "then starts the log again from this epoch)")


def _whole_row(row: dict, fields) -> bool:
    """A log row that a crash did not cut: every field present and a whole-number epoch."""
    return None not in row and all(row.get(k) not in (None, "") for k in fields) and row["epoch"].isdigit()


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
    (out / RESUME_FILE).unlink(missing_ok=True)  # a step-exact state inside this epoch: now superseded
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


def grids_missing(out: Path, epoch: int) -> bool:
    return not all((out / "images" / f"{kind}_epoch{epoch:04d}.png").is_file() for kind in ("recon", "samples"))


def repair_epoch(out: Path, cfg, ckpt: dict, csv_log: CsvLog) -> list:
    """Redo what a crash after last.pt left undone for its epoch: best.pt (when last.pt's test loss beats
    it), the kept history checkpoint and the log row. Returns what was redone (the grids: the caller)."""
    epoch, metrics = int(ckpt["epoch"]), dict(ckpt.get("metrics") or {})
    redone = []
    loss, best = metrics.get("test_loss", math.inf), _test_loss(out / "best.pt")
    recorded = ckpt.get("best_test_loss")
    if recorded is not None and best < recorded and not math.isclose(best, recorded, rel_tol=1e-9):
        raise ValueError(f"{out / 'best.pt'} is not this run's: its test loss {best!r} is below the best this run "
                         f"reached ({recorded!r}, last.pt); restore this run's best.pt, or move it away "
                         "(the resume then makes last.pt the best so far)")
    if loss < best:
        _copy(out / "last.pt", out / "best.pt")
        redone.append("best.pt")
    kept = out / "checkpoints" / f"epoch{epoch:04d}.pt"
    if cfg.keep_every and epoch % cfg.keep_every == 0 and not kept.is_file():
        _copy(out / "last.pt", kept)
        redone.append(str(kept.relative_to(out)))
    if metrics and csv_log.last_epoch < epoch:
        csv_log.write(metrics)
        redone.append("log.csv")
    return redone


def _test_loss(path: Path) -> float:
    try:
        return float((load_checkpoint(path).get("metrics") or {}).get("test_loss", math.inf))
    except CheckpointError:  # missing or unreadable: any finished epoch beats it
        return math.inf


def _copy(src: Path, dst: Path) -> None:
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


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
