"""Named pretrained weights: `load_pretrained("esvae-mnist")` gives a ready model, sha256-checked.

Each entry says which model config the weights fit, the file (inside the package, `weights/`), its
sha256, the Table I metrics measured with it, and the commit and command that trained it. Only the
final weights of a schedule that `sjvae reproduce` completed are shipped (`export_weights` refuses
others); until then an entry has status "training" (with the epochs reached, when known) and loading it
says so. Files are `{"model": state_dict, "config": model config}` in fp32 or fp16, read with
`torch.load(weights_only=True)`; fp16 tensors are cast to the model's fp32 parameters on load.
Procedure to ship a finished schedule: docs/reproduce.md ("Shipping weights").
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from .atomic import atomic_write, atomic_write_text, sha256_file

__all__ = ["PretrainedEntry", "PretrainedError", "REGISTRY", "WEIGHTS_DIR", "status", "get_entry",
           "load_pretrained", "verified_file",
           "register_pretrained", "export_weights"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


class PretrainedError(ValueError):
    """A name that is unknown, not trained yet, or whose file is missing or does not match its sha256."""


@dataclass
class PretrainedEntry:
    name: str
    model: str
    dataset: str
    status: str                    # "available" or "training"
    epochs_total: int
    epochs_reached: Optional[int] = None
    config: dict = field(default_factory=dict)   # the model config (models.build_model)
    file: Optional[str] = None     # relative to WEIGHTS_DIR, or absolute
    sha256: Optional[str] = None
    dtype: str = "fp32"
    metrics: dict = field(default_factory=dict)  # Table I metrics measured with these weights
    commit: Optional[str] = None
    command: Optional[str] = None

    def path(self) -> Optional[Path]:
        return None if self.file is None else WEIGHTS_DIR / self.file  # an absolute file stays absolute

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _training(model: str, dataset: str, epochs: int) -> PretrainedEntry:
    cmd = f"sjvae reproduce --dataset {dataset} --models {model} --out results/table1"
    return PretrainedEntry(name=f"{model}-{dataset}", model=model, dataset=dataset, status="training",
                           epochs_total=epochs, command=cmd)


REGISTRY: Dict[str, PretrainedEntry] = {
    e.name: e for e in (_training(m, d, 300 if m == "esvae" else 150)
                        for m in ("esvae", "fsvae", "ann-vae")
                        for d in ("mnist", "fashion", "cifar10", "celeba"))
}


def register_pretrained(entry: PretrainedEntry) -> None:
    """Add or replace an entry (e.g. one made by `export_weights`)."""
    if entry.status not in ("available", "training"):
        raise ValueError(f"status must be 'available' or 'training', got {entry.status!r}")
    if entry.status == "available" and not (entry.file and entry.sha256 and entry.config):
        raise ValueError(f"available entry {entry.name!r} needs file, sha256 and config")
    REGISTRY[entry.name] = entry


def status() -> Dict[str, dict]:
    """Every name with its status, epochs and (when available) metrics, for listing."""
    return {name: {"model": e.model, "dataset": e.dataset, "status": e.status, "epochs_total": e.epochs_total,
                   "epochs_reached": e.epochs_reached, "metrics": e.metrics, "command": e.command}
            for name, e in sorted(REGISTRY.items())}


def get_entry(name: str) -> PretrainedEntry:
    if name not in REGISTRY:
        raise PretrainedError(f"no pretrained weights named {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def verified_file(name: str) -> Tuple[Path, PretrainedEntry]:
    """The weights file of an available entry, its sha256 checked, and the entry. The file is also a
    checkpoint (`checkpoint.load_model` reads it), which is how the `sjvae --pretrained` options use it."""
    entry = get_entry(name)
    if entry.status != "available":
        reached = f"{entry.epochs_reached} of {entry.epochs_total}" if entry.epochs_reached is not None \
            else f"? of {entry.epochs_total}"
        raise PretrainedError(f"{name!r} is still training ({reached} epochs); no weights are shipped yet. "
                              f"Train them with `{entry.command}` or pass --checkpoint with your own run")
    path = entry.path()
    if path is None or not path.is_file():
        raise PretrainedError(f"the weights file of {name!r} ({path}) is missing; reinstall the package")
    digest = sha256_file(path, cached=False)
    if digest != entry.sha256:
        raise PretrainedError(f"{path} does not match the sha256 of {name!r} (expected {entry.sha256}, got "
                              f"{digest}): the file is corrupt or was replaced; reinstall the package")
    return path, entry


def load_pretrained(name: str, *, device="cpu") -> Tuple[torch.nn.Module, PretrainedEntry]:
    """The model of entry `name` with its weights, in eval mode on `device`, and the entry."""
    from .models import build_model
    path, entry = verified_file(name)
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or "model" not in blob:
        raise PretrainedError(f"{path} is not a weights file of this package (no 'model' state dict)")
    model = build_model(dict(entry.config))
    model.load_state_dict(blob["model"])  # copy_ casts fp16 tensors to the fp32 parameters
    return model.to(device).eval(), entry


def export_weights(run_dir, *, name: str, dtype: str = "fp32", weights_dir=None) -> PretrainedEntry:
    """Write the final weights of a schedule that `reproduce` completed as `<weights_dir>/<name>.pt` and
    return its entry (metrics from the run's evaluation, commit and command); paste it into REGISTRY."""
    from .checkpoint import load_checkpoint
    from .reproduce import EVAL_FILE, STATE_FILE, commit, model_status
    run_dir = Path(run_dir)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    st = model_status(run_dir)
    if not st["complete"] or not (run_dir / EVAL_FILE).is_file():
        raise PretrainedError(f"{run_dir} is not a completed, evaluated `sjvae reproduce` schedule "
                              f"({st['epochs_done']}/{st['epochs_total']} epochs); "
                              "only such weights are shipped")
    ckpt = load_checkpoint(run_dir / "last.pt")
    state = {k: (v.to(DTYPES[dtype]) if v.is_floating_point() else v) for k, v in ckpt["model"].items()}
    out = Path(weights_dir or WEIGHTS_DIR) / f"{name}.pt"
    atomic_write(out, lambda p: torch.save({"model": state, "config": ckpt["config"]}, p))
    evaluation = json.loads((run_dir / EVAL_FILE).read_text())
    metrics = {k: v.get(k) for k, v in evaluation.get("metrics", {}).items()}
    if "mse" in metrics:
        metrics["mse_batch_mean"] = evaluation["metrics"]["mse"].get("mse_batch_mean")
    metrics.update({f"{k}_unavailable": why for k, why in evaluation.get("unavailable", {}).items()})
    info = ckpt.get("train_config") or {}
    state = json.loads((run_dir / STATE_FILE).read_text())
    calls = state.get("calls", [])  # the commits that trained it
    entry = PretrainedEntry(
        name=name, model=ckpt["config"]["model"], dataset=ckpt.get("dataset") or info.get("dataset"),
        status="available", epochs_total=st["epochs_total"], epochs_reached=st["epochs_done"],
        config=dict(ckpt["config"]), file=str(out) if weights_dir else out.name,
        sha256=sha256_file(out, cached=False),
        dtype=dtype,
        metrics=metrics, commit=", ".join(dict.fromkeys(c.get("commit") or "?" for c in calls)) or commit(),
        command=f"sjvae reproduce --dataset {info.get('dataset')} --models {ckpt['config']['model']} "
                f"--out {run_dir.parent.parent}")
    state["shipped"] = {"name": name, "epoch": st["epochs_done"], "sha256": entry.sha256, "dtype": dtype}
    atomic_write_text(run_dir / STATE_FILE, json.dumps(state, indent=2) + "\n")  # last.pt may go now
    return entry


def main(argv=None) -> None:
    """`python -m spikingjelly_vae.pretrained list` | `export RUN_DIR NAME [--fp16] [--weights-dir DIR]`."""
    import argparse
    p = argparse.ArgumentParser(prog="python -m spikingjelly_vae.pretrained", description=main.__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="names, status, epochs and metrics")
    ex = sub.add_parser("export", help="write a finished schedule's weights and print its registry entry")
    ex.add_argument("run_dir")
    ex.add_argument("name")
    ex.add_argument("--fp16", action="store_true", help="store float16 tensors (half the size)")
    ex.add_argument("--weights-dir", default=None, help=f"default: {WEIGHTS_DIR}")
    args = p.parse_args(argv)
    if args.command == "list":
        print(json.dumps(status(), indent=2))
        return
    entry = export_weights(args.run_dir, name=args.name, dtype="fp16" if args.fp16 else "fp32",
                           weights_dir=args.weights_dir)
    print(json.dumps(entry.to_dict(), indent=2))


if __name__ == "__main__":
    main()
