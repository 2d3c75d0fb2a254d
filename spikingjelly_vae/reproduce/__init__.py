"""`sjvae reproduce`: Table I of the ESVAE paper from one command, in time-budgeted, resumable pieces.

For each model, ``<out>/<dataset>/<model>/`` holds a run of `train.fit` with the reference preset
(ESVAE 300 epochs, FSVAE and ANN VAE 150) plus ``reproduce.json``: the schedule (the training options,
fixed at the first call) and one record per call (epochs and steps run, wall seconds, device). A call
resumes from ``last.pt`` or the step-exact ``resume.pt`` and stops before its budget runs out at a step
(or test batch) boundary: it does not start a step whose predicted wall time (measured in this call, else
over this model's earlier calls) exceeds what is left, and saves the exact state there; the first step of
a call always runs. Resuming is exact (train/resume.py), so the weights after any split into calls equal
those of one uninterrupted run on the same device. Each checkpoint carries the call records too (written
in the same atomic write), so a kill right after a checkpoint loses no record: the next call restores
them. The folder's lock (train/outputs.py) is held for the whole of a model's work, evaluation included.

Once a schedule is complete, ``last.pt`` (the end of the schedule) is evaluated once with the reference
protocols (`metrics.evaluate`): MSE on the whole test split, clean FID from 5,000 samples, FAD with the
official autoencoder where one exists, IS when weights are given; for ESVAE also Table II (time
shuffle) and the Fig. 5 noise curves (`experiments.robustness`). ``reevaluate=True`` evaluates again.
Every call writes ``<out>/<dataset>/table1.json`` and ``table1.md`` (`compare`): the paper's numbers
beside ours, each model's progress and the provenance (commit, device, versions, epochs, seconds, seeds).
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

import torch

from ..atomic import atomic_write_text, write_json
from ..presets import get_preset
from ..train.outputs import lock_folder, release_lock
from .record import (CALLS_KEY, STATE_FILE, _checkpoint_epoch, _open_schedule, _read_state, _saved_step,
                     _status_line, _step_seconds, _write_state, model_status)

__all__ = ["REPRODUCE_MODELS", "STATE_FILE", "EVAL_FILE", "reproduce", "model_status", "should_stop",
           "versions", "commit", "write_table"]

REPRODUCE_MODELS = ("esvae", "fsvae", "ann-vae")
EVAL_FILE = "last.pt.eval-reference.json"  # compare.load_result's name for last.pt's reference evaluation
ROBUSTNESS_KINDS = ("shuffle", "flip", "gaussian")  # Table II, Fig. 5 (both noise kinds)


def should_stop(*, remaining_s: Optional[float], next_seconds: Optional[float], units_done: int) -> bool:
    """True when the next unit of work (an optimizer step or a test batch) must not start: its predicted
    seconds exceed the budget left, or are unknown while work was done. The first unit of a call
    (`units_done == 0`) always runs; without a budget (`remaining_s` None) nothing stops."""
    if units_done == 0 or remaining_s is None:
        return False
    return next_seconds is None or remaining_s < next_seconds


def versions() -> dict:
    """Versions of what produced the numbers: python, torch, CUDA, cuDNN, CuPy, SpikingJelly, the package."""
    from .. import __version__
    out = {"spikingjelly_vae": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None}
    for name in ("cupy", "spikingjelly"):
        try:
            from importlib.metadata import version
            out[name] = version(name if name != "cupy" else _cupy_dist())
        except Exception:  # not installed
            out[name] = None
    return out


def commit() -> Optional[str]:
    """The commit being run: env SJVAE_COMMIT (a copy without .git, e.g. on a GPU machine), else git's."""
    from ..experiments.common import git_commit
    return os.environ.get("SJVAE_COMMIT") or git_commit()


def _cupy_dist() -> str:
    from importlib.metadata import distributions
    names = [d.metadata["Name"] for d in distributions()
             if (d.metadata["Name"] or "").lower().startswith("cupy")]
    if not names:
        raise LookupError("no cupy")
    return names[0]


def _device_info(device: str) -> dict:
    from ..runtime import resolve_device
    dev = resolve_device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or "cpu")
    return {"device": str(dev), "device_name": name, "threads": torch.get_num_threads()}


# --------------------------------------------------------------------------------------- training
class _Budget:
    """Wall-clock budget of one call, shared by its models in order."""

    def __init__(self, minutes: Optional[float], clock: Callable[[], float], max_epochs: Optional[int]):
        if minutes is not None and not minutes > 0:
            raise ValueError(f"budget_minutes must be > 0, got {minutes}")
        if max_epochs is not None and max_epochs < 1:
            raise ValueError(f"max_epochs_per_call must be >= 1, got {max_epochs}")
        self.clock, self.max_epochs = clock, max_epochs
        self.deadline = None if minutes is None else clock() + 60.0 * minutes
        self.epochs_run = 0
        self.units = 0  # steps and test passes earlier models of this call ran

    def remaining(self) -> Optional[float]:
        return None if self.deadline is None else self.deadline - self.clock()

    def rule(self, history_step_seconds: Optional[float]):
        """fit's stop_rule: stop before a unit (step or test batch) whose predicted seconds (measured in this
        call, else `history_step_seconds`) exceed the budget left, or are unknown; never before the call's
        first unit, never without a budget."""
        def stop(units: int, next_seconds: Optional[float]) -> bool:
            return should_stop(remaining_s=self.remaining(), units_done=self.units + units,
                               next_seconds=next_seconds if next_seconds is not None else history_step_seconds)
        return stop


def _train_model(run_dir: Path, state: dict, budget: _Budget, *, machinery: dict, log) -> str:
    """Continue one model's schedule within the budget; returns why it stopped ("complete" or "budget")."""
    from ..train import TrainConfig, TrainingInterrupted, fit
    from ..train.resume import RESUME_FILE
    total = state["schedule"]["epochs"]
    done = _checkpoint_epoch(run_dir)
    if done >= total:
        return "complete"
    if budget.rule(_step_seconds(state))(0, None):
        return "budget"
    saved = (run_dir / "last.pt").is_file() or (run_dir / RESUME_FILE).is_file()
    # nothing saved: whatever a call killed before its first checkpoint left (log.csv, ...) is replaced
    cfg = TrainConfig(**state["schedule"], **machinery, out=str(run_dir), resume=saved, force=not saved,
                      progress=False, tensorboard=False)
    record = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "from_epoch": done, "from_step": _saved_step(run_dir),
              "epochs": 0, "steps": 0,
              "wall_seconds": 0.0, "commit": commit(), **_device_info(machinery["device"])}
    state["calls"].append(record)
    start = budget.clock()
    log(f"{state['model']}: training epochs {done + 1}..{total} into {run_dir}")

    def extras(ckpt: dict) -> dict:  # stored in each checkpoint, in the same atomic write
        record.update(epochs=ckpt["epoch"] - done, to_epoch=ckpt["epoch"], to_batch=ckpt["batch"],
                      batches=ckpt["batches"], steps=ckpt["step"] - record["from_step"], to_step=ckpt["step"],
                      wall_seconds=budget.clock() - start)
        if ckpt["batch"] == 0:
            record["test_loss"] = (ckpt.get("metrics") or {}).get("test_loss")
        return {CALLS_KEY: json.loads(json.dumps(state["calls"]))}

    def on_epoch_end(epoch: int, metrics: dict) -> bool:
        budget.epochs_run += 1
        _write_state(run_dir, state)  # after last.pt, which holds the same records
        return epoch < total and budget.max_epochs is not None and budget.epochs_run >= budget.max_epochs

    try:
        res = fit(cfg, on_epoch_end=on_epoch_end, stop_rule=budget.rule(_step_seconds(state)),
                  checkpoint_extras=extras)
    except TrainingInterrupted:
        record["wall_seconds"] = budget.clock() - start
        _write_state(run_dir, state)
        raise
    budget.units += res["units"]
    record["wall_seconds"] = budget.clock() - start
    _write_state(run_dir, state)
    return "complete" if _checkpoint_epoch(run_dir) >= total else "budget"


# ------------------------------------------------------------------------------------- evaluation
def _evaluate(run_dir: Path, state: dict, *, dataset: str, options: dict, log) -> dict:
    """Table I metrics of last.pt (reference protocols), written beside it as EVAL_FILE."""
    from ..metrics.evaluate import EvalOptions, EvalSources, evaluate_checkpoint
    eval_opts = EvalOptions(**{"metrics": ("mse", "fid", "is", "fad"), "protocol": "reference",
                               "fid_mode": "clean", "num_samples": 5000, "seed": options["seed"],
                               **options["eval"]})
    sources = EvalSources(data_root=options["data_root"], cache_dir=options["cache_dir"],
                          inception_weights=options["inception_weights"], is_weights=options["is_weights"],
                          fad_dir=options["fad_dir"])
    log(f"{state['model']}: evaluating {run_dir / 'last.pt'} ({', '.join(eval_opts.metrics)})")
    res = evaluate_checkpoint(str(run_dir / "last.pt"), eval_opts, sources, dataset=dataset,
                              device=options["device"], log=log)
    write_json(run_dir / EVAL_FILE, res)
    return res


def _robustness(run_dir: Path, *, dataset: str, options: dict, log) -> dict:
    """Table II (time shuffle) and Fig. 5 (flip and Gaussian noise curves) for a spiking model's last.pt."""
    from ..experiments.robustness import run_robustness
    out = {}
    for kind in ROBUSTNESS_KINDS:
        log(f"robustness ({kind}) of {run_dir / 'last.pt'}")
        summary = run_robustness([str(run_dir / "last.pt")], kind=kind, out_dir=str(run_dir / "robustness"),
                                 dataset=dataset, data_root=options["data_root"], seed=options["seed"],
                                 device=options["device"], labels=[run_dir.name], **options["robustness"])
        result = next(iter(summary["models"].values()))
        out[kind] = {k: result[k] for k in ("levels", "mse_vs_original", "mse_vs_clean", "changed_fraction",
                                            "clean_mse", "num_images")}
        out[kind]["file"] = str(run_dir / "robustness" / f"robustness_{kind}.json")
    return out


def _finish(run_dir: Path, state: dict, *, dataset: str, options: dict, reevaluate: bool, log) -> None:
    """Evaluate a complete schedule once (or again with `reevaluate`); the result goes into the state."""
    if state.get("evaluated") and (run_dir / EVAL_FILE).is_file() and not reevaluate:
        return
    if not (run_dir / "last.pt").is_file():
        raise ValueError(f"{run_dir} has no last.pt to evaluate: its weights were shipped as pretrained "
                         f"{state.get('shipped', {}).get('name')!r}; evaluate those with `sjvae evaluate`")
    t = time.time()
    _evaluate(run_dir, state, dataset=dataset, options=options, log=log)
    robustness = (_robustness(run_dir, dataset=dataset, options=options, log=log)
                  if state["model"] == "esvae" else None)
    state["evaluated"] = {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "file": EVAL_FILE,
                          "seconds": time.time() - t, "robustness": robustness,
                          **_device_info(options["device"])}
    _write_state(run_dir, state)


# ------------------------------------------------------------------------------------------ table
def _provenance(folder: Path, models: Iterable[str], options: dict) -> dict:
    per_model = {}
    for model in models:
        st = _read_state(folder / model)
        if st is None:
            continue
        status = model_status(folder / model)
        per_model[model] = {"epochs": status["epochs_done"], "epochs_total": status["epochs_total"],
                            "wall_seconds": status["wall_seconds"],
                            "seconds_per_epoch": status["seconds_per_epoch"],
                            "calls": st["calls"], "seed": st["schedule"].get("seed"),
                            "schedule": st["schedule"], "evaluated": st.get("evaluated")}
    return {"commit": commit(), "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **_device_info(options["device"]), "versions": versions(),
            "seeds": {"train": options["seed"], "evaluation": options["seed"]}, "models": per_model}


def write_table(folder, *, models: Iterable[str], options: dict) -> dict:
    """table1.json and table1.md of one dataset folder from its models' evaluations (`compare`)."""
    from ..metrics.compare import build_table, format_table, load_result
    folder = Path(folder)
    dataset = folder.name
    results, progress = [], {}
    for model in models:
        run_dir = folder / model
        st = model_status(run_dir) if run_dir.is_dir() else None
        progress[model] = st
        if st is not None and st["complete"] and (run_dir / EVAL_FILE).is_file():
            results.append(load_result(run_dir / EVAL_FILE))
    rows = build_table(results, datasets=[dataset])
    md = format_table(rows, "markdown")
    lines = [f"- {m}: not started" if st is None
             else "- " + _status_line(m, st, "evaluated" if st["evaluated"] else "")
             for m, st in progress.items()]
    table = {"dataset": dataset, "rows": rows, "progress": progress,
             "provenance": _provenance(folder, models, options)}
    atomic_write_text(folder / "table1.json", json.dumps(table, indent=2, default=str) + "\n")
    atomic_write_text(folder / "table1.md",
                      f"# Table I, {dataset}\n\n{md}\n## Progress\n\n" + "\n".join(lines)
                      + "\n")
    return table


# ------------------------------------------------------------------------------------------- entry
def _check_models(models) -> List[str]:
    models = list(models)
    bad = [m for m in models if m not in REPRODUCE_MODELS]
    if bad or not models or len(set(models)) != len(models):
        raise ValueError(f"models must be distinct names from {', '.join(REPRODUCE_MODELS)}, got {models}")
    return models


def reproduce(*, dataset: str, out, models: Iterable[str] = REPRODUCE_MODELS,
              budget_minutes: Optional[float] = None,
              reevaluate: bool = False, data_root=None, cache_dir=None, fad_dir=None, inception_weights=None,
              is_weights=None, device: str = "auto", num_workers: Optional[int] = None, seed: int = 42,
              preset_overrides: Optional[Dict[str, dict]] = None, eval_options: Optional[dict] = None,
              robustness_options: Optional[dict] = None, max_epochs_per_call: Optional[int] = None,
              checkpoint_every: Optional[int] = None, quick: bool = False, clock: Callable[[], float] = time.monotonic, log: Callable[[str], None] = print) -> dict:
    """Continue the Table I schedules of `models` on `dataset` in `out`/<dataset>/<model>/, within
    `budget_minutes`; evaluate each complete schedule once; write table1.json / table1.md.

    `preset_overrides` maps a model to TrainConfig options replacing its preset's (tests, small runs);
    they are fixed at a folder's first call. `eval_options` / `robustness_options` are extra keyword
    arguments of `evaluate_checkpoint` / `run_robustness` (e.g. `num_samples`, `mse_num`, `num_images`).
    `quick` marks a smoke run (the CLI's --quick); a folder is continued only with the same `quick`.
    `checkpoint_every`: also save the step-exact state every N steps (train's --checkpoint-every).
    SIGTERM / SIGINT save the state and raise train.TrainingInterrupted.
    Returns {"dataset", "folder", "models": {model: status + "stopped"}, "table": table1 dict, "complete"}.
    """
    from ..data import dataset_info
    dataset_info(dataset)  # unknown dataset -> ValueError
    models = _check_models(models)
    for model in models:
        get_preset(model, dataset)
    unknown = sorted(set(preset_overrides or {}) - set(models))
    if unknown:
        raise ValueError(f"preset_overrides for models not asked for: {unknown}")
    folder = Path(out) / dataset
    budget = _Budget(budget_minutes, clock, max_epochs_per_call)
    machinery = {"data_root": data_root, "cache_dir": cache_dir, "device": device, "num_workers": num_workers,
                 "checkpoint_every": checkpoint_every}
    options = {"data_root": data_root, "cache_dir": cache_dir, "fad_dir": fad_dir, "device": device,
               "inception_weights": inception_weights, "is_weights": is_weights, "seed": seed,
               "eval": dict(eval_options or {}), "robustness": dict(robustness_options or {})}
    summary = {}
    for model in models:
        run_dir = folder / model
        overrides = None if preset_overrides is None else preset_overrides.get(model, {})
        lock_folder(run_dir)  # training and evaluation: one process at a time
        try:
            state = _open_schedule(run_dir, dataset=dataset, model=model, seed=seed, overrides=overrides,
                                   quick=quick)
            _write_state(run_dir, state)
            stopped = _train_model(run_dir, state, budget, machinery=machinery, log=log)
            if stopped == "complete":
                _finish(run_dir, state, dataset=dataset, options=options, reevaluate=reevaluate, log=log)
            summary[model] = {**model_status(run_dir), "stopped": stopped}
        finally:
            release_lock(run_dir)
        log(_status_line(model, summary[model], "schedule complete" if stopped == "complete"
                         else "stopped before the budget ran out; rerun to continue"))
    table = write_table(folder, models=models, options=options)
    return {"dataset": dataset, "folder": str(folder), "models": summary, "table": table,
            "complete": all(s["complete"] for s in summary.values())}
