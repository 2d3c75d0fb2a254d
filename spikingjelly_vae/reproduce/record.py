"""reproduce.json and the progress of one model's folder: the schedule, the call records (also carried by
every checkpoint, see CALLS_KEY), measured seconds per step and epoch, and the status line."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ..atomic import atomic_write_text

STATE_FILE = "reproduce.json"
CALLS_KEY = "reproduce_calls"  # the call records a checkpoint carries (written with it, atomically)
MACHINERY = ("data_root", "cache_dir", "out", "device", "num_workers", "resume", "force", "progress",
             "tensorboard", "checkpoint_every")  # TrainConfig fields that do not change the schedule's numbers


def _read_state(run_dir: Path) -> Optional[dict]:
    path = run_dir / STATE_FILE
    if not path.is_file():
        return None
    hint = f"restore it from a backup or delete the folder {run_dir} to start that model over"
    try:
        state = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path} is not readable JSON ({err}); {hint}") from None
    from ..schemas import ReproduceState, check
    check(ReproduceState, state, path, hint)
    return state


def _write_state(run_dir: Path, state: dict) -> None:
    atomic_write_text(run_dir / STATE_FILE, json.dumps(state, indent=2) + "\n")


def _checkpoint_epoch(run_dir: Path) -> int:
    """The epoch of last.pt; for a schedule whose weights were shipped (`pretrained.export_weights`, then
    last.pt deleted), the epoch recorded then; else 0."""
    from ..checkpoint import load_checkpoint
    if not (run_dir / "last.pt").is_file():
        shipped = (_read_state(run_dir) or {}).get("shipped")
        return int(shipped["epoch"]) if shipped else 0
    return int(load_checkpoint(run_dir / "last.pt").get("epoch", 0))


def _schedule(*, dataset: str, model: str, seed: int, overrides: dict) -> dict:
    """The TrainConfig options that fix the schedule's numbers (preset + overrides), as a plain dict."""
    from ..train import TrainConfig
    cfg = TrainConfig(dataset=dataset, model=model, seed=seed, grid_every=0, **overrides).resolved()
    plain = {k: v for k, v in cfg.to_dict().items() if k not in MACHINERY}
    return json.loads(json.dumps(plain))  # as reproduce.json stores it (lists, not tuples)


def _open_schedule(run_dir: Path, *, dataset, model, seed, overrides, quick: bool = False) -> dict:
    """reproduce.json of the run folder, created on the first call; a later call must ask the same (and be
    --quick exactly when the first was). Call records a checkpoint holds beyond reproduce.json's are restored."""
    state = _read_state(run_dir)
    wanted = _schedule(dataset=dataset, model=model, seed=seed, overrides=overrides or {})
    if state is None:
        if (run_dir / "last.pt").exists():
            raise ValueError(f"{run_dir} holds a run that `reproduce` did not start (no {STATE_FILE}); "
                             "pass another --out or move that run away")
        return {"dataset": dataset, "model": model, "quick": quick, "schedule": wanted, "calls": [],
                "evaluated": None}
    if bool(state.get("quick")) != quick:
        was = "a --quick smoke run (tiny models, not Table I)" if state.get("quick") else "a full schedule"
        raise ValueError(f"{run_dir} holds {was}; continue it {'with' if state.get('quick') else 'without'} "
                         "--quick, or use another --out")
    state["calls"] = _merged_calls(state["calls"], _saved_calls(run_dir))
    if overrides is not None and state["schedule"] != wanted:
        diff = sorted(k for k in wanted if wanted[k] != state["schedule"].get(k))
        raise ValueError(f"{run_dir} was started with other training options (differ: {', '.join(diff)}); "
                         "resume with the same options, or use another --out")
    return state


def _resume_checkpoint(run_dir: Path) -> Optional[dict]:
    """The checkpoint a resumed run starts from (last.pt or resume.pt), or None."""
    from ..checkpoint import load_checkpoint
    from ..train.resume import resume_source
    path = resume_source(run_dir)
    return load_checkpoint(path) if path.is_file() else None


def _saved_calls(run_dir: Path) -> Optional[list]:
    """The call records held by the checkpoint a resumed run starts from (None: none there)."""
    return (_resume_checkpoint(run_dir) or {}).get(CALLS_KEY)


def _saved_step(run_dir: Path) -> int:
    return int((_resume_checkpoint(run_dir) or {}).get("step", 0))


def _merged_calls(recorded: list, saved: Optional[list]) -> list:
    """Per call, the record that counts more steps: reproduce.json's or the checkpoint's (a kill after the
    checkpoint leaves reproduce.json behind)."""
    saved = saved or []
    merged = []
    for i in range(max(len(recorded), len(saved))):
        mine = recorded[i] if i < len(recorded) else None
        theirs = saved[i] if i < len(saved) else None
        if mine is None or (theirs is not None and theirs.get("steps", 0) > mine.get("steps", 0)):
            mine = theirs
        merged.append(mine)
    return merged


def _step_seconds(state: dict) -> Optional[float]:
    """Measured wall seconds per optimizer step over this model's calls (None before any)."""
    calls = [c for c in state["calls"] if c.get("steps")]
    steps = sum(c["steps"] for c in calls)
    return sum(c["wall_seconds"] for c in calls) / steps if steps else None


def _seconds_per_epoch(state: dict) -> Optional[float]:
    """Measured wall seconds per epoch over this model's calls (training, test pass and checkpoints)."""
    per_step, batches = _step_seconds(state), [c["batches"] for c in state["calls"] if c.get("batches")]
    if per_step is not None and batches:
        return per_step * batches[-1]
    epochs = sum(c["epochs"] for c in state["calls"])
    return sum(c["wall_seconds"] for c in state["calls"]) / epochs if epochs else None


def _in_epoch(run_dir: Path) -> Optional[dict]:
    """{"batch", "batches"} of a resume.pt a call stopped inside an epoch with; else None."""
    ckpt = _resume_checkpoint(run_dir)
    if not ckpt or "ranks" not in ckpt:
        return None
    return {"batch": int(ckpt["batch"]), "batches": int(ckpt["batches"])}


def model_status(run_dir, *, epochs_total: Optional[int] = None) -> dict:
    """Progress of one model's folder: epochs done of total, s/epoch, minutes left, evaluated or not."""
    run_dir = Path(run_dir)
    state = _read_state(run_dir) or {"schedule": {}, "calls": [], "evaluated": None}
    total = epochs_total or state["schedule"].get("epochs")
    done = _checkpoint_epoch(run_dir)
    spe = _seconds_per_epoch(state)
    part = _in_epoch(run_dir) if run_dir.is_dir() else None
    fraction = part["batch"] / part["batches"] if part else 0.0
    left = None if spe is None or total is None else max(0.0, total - done - fraction) * spe / 60
    return {"epochs_done": done, "in_epoch": part,
            "epochs_total": total, "complete": total is not None and done >= total,
            "seconds_per_epoch": spe, "minutes_left": left, "calls": len(state["calls"]),
            "wall_seconds": sum(c["wall_seconds"] for c in state["calls"]),
            "evaluated": state.get("evaluated")}


def _status_line(model: str, st: dict, note: str = "") -> str:
    spe = "n/a" if st["seconds_per_epoch"] is None else f"{st['seconds_per_epoch']:.1f}"
    left = "n/a" if st["minutes_left"] is None else f"{st['minutes_left']:.1f}"
    part = st.get("in_epoch")
    inside = f" + {part['batch']}/{part['batches']} steps of epoch {st['epochs_done'] + 1}" if part else ""
    return (f"{model}: {st['epochs_done']}/{st['epochs_total']} epochs{inside}, {spe} s/epoch measured, "
            f"{left} min of training left" + (f"; {note}" if note else ""))


