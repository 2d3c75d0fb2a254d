"""Named pretrained weights: `load_pretrained("esvae-mnist-preview")` gives a ready model, sha256-checked.

The names live in the one registry (`registry.WEIGHTS`, entries registered by `models/hub.py`); this
module lists them, loads them with their entry, and writes weights files: `write_weights` makes a
model-only file (fp32 or fp16) from any checkpoint, `export_weights` the final weights of a schedule that
`sjvae reproduce` completed (status "available"; docs/reproduce.md, "Shipping weights"). Files are
`{"model": state_dict, "config": model config, "dataset": ...}`, read with `torch.load(weights_only=True)`;
fp16 tensors are cast to the model's fp32 parameters on load.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Tuple

import torch

from .atomic import atomic_write, atomic_write_text, sha256_file
from .models import create_model
from .registry import (WEIGHTS, WEIGHTS_DIR, WeightsEntry, WeightsError, get_weights,
                       register_weights, verified_weights_file)

__all__ = ["PretrainedEntry", "PretrainedError", "REGISTRY", "WEIGHTS_DIR", "status", "get_entry",
           "load_pretrained", "verified_file", "register_pretrained", "write_weights", "export_weights"]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
# the names this module has always used for the registry's weights table and its types
PretrainedEntry, PretrainedError, REGISTRY = WeightsEntry, WeightsError, WEIGHTS
get_entry, verified_file, register_pretrained = get_weights, verified_weights_file, register_weights


def status() -> Dict[str, dict]:
    """Every name with its status, epochs and (when loadable) metrics, for listing."""
    return {name: {"model": e.model, "dataset": e.dataset, "status": e.status, "epochs_total": e.epochs_total,
                   "epochs_reached": e.epochs_reached, "metrics": e.metrics, "measured": e.measured,
                   "trained": e.trained, "command": e.command}
            for name, e in sorted(WEIGHTS.items())}


def load_pretrained(name: str, *, device="cpu") -> Tuple[torch.nn.Module, WeightsEntry]:
    """The model of entry `name` with its weights, in eval mode on `device`, and the entry."""
    return create_model(get_weights(name).model, pretrained=name).to(device), get_weights(name)


def write_weights(ckpt: dict, out, dtype: str = "fp32") -> Path:
    """A model-only weights file at `out` from checkpoint dict `ckpt` (model, config, dataset, epoch, step),
    floating tensors stored as `dtype` (fp32 or fp16); written atomically."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    state = {k: (v.to(DTYPES[dtype]) if v.is_floating_point() else v) for k, v in ckpt["model"].items()}
    keep = {k: ckpt[k] for k in ("dataset", "epoch", "step") if ckpt.get(k) is not None}
    blob = {"model": state, "config": dict(ckpt["config"]), **keep, "dtype": dtype}
    return atomic_write(Path(out), lambda p: torch.save(blob, p))


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
    out = write_weights(ckpt, Path(weights_dir or WEIGHTS_DIR) / f"{name}.pt", dtype)
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
    """`python -m spikingjelly_vae.pretrained list` | `export RUN_DIR NAME [--fp16] [--weights-dir DIR]` |
    `weights CHECKPOINT OUT [--fp16]` (a model-only file from any checkpoint, e.g. for a preview entry)."""
    import argparse
    p = argparse.ArgumentParser(prog="python -m spikingjelly_vae.pretrained", description=main.__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="names, status, epochs and metrics")
    ex = sub.add_parser("export", help="write a finished schedule's weights and print its registry entry")
    ex.add_argument("run_dir")
    ex.add_argument("name")
    ex.add_argument("--fp16", action="store_true", help="store float16 tensors (half the size)")
    ex.add_argument("--weights-dir", default=None, help=f"default: {WEIGHTS_DIR}")
    wr = sub.add_parser("weights", help="write the model-only weights of a checkpoint; print its sha256")
    wr.add_argument("checkpoint")
    wr.add_argument("out")
    wr.add_argument("--fp16", action="store_true", help="store float16 tensors (half the size)")
    args = p.parse_args(argv)
    if args.command == "list":
        print(json.dumps(status(), indent=2))
        return
    if args.command == "weights":
        from .checkpoint import load_checkpoint
        out = write_weights(load_checkpoint(args.checkpoint), args.out, "fp16" if args.fp16 else "fp32")
        print(json.dumps({"file": str(out), "sha256": sha256_file(out, cached=False),
                          "bytes": out.stat().st_size, "source_sha256": sha256_file(args.checkpoint, cached=False)}))
        return
    entry = export_weights(args.run_dir, name=args.name, dtype="fp16" if args.fp16 else "fp32",
                           weights_dir=args.weights_dir)
    print(json.dumps(entry.to_dict(), indent=2))


if __name__ == "__main__":
    main()
