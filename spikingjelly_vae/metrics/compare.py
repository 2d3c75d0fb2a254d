"""Table I of the ESVAE paper with our measured numbers beside the published ones.

Columns as in the paper: reconstruction loss (lower is better), Inception Score (higher), FID (lower),
FAD (lower). Every cell is marked ``P`` (published) or ``M`` (measured by this package). Measured rows
come from the JSON that ``sjvae evaluate`` writes (``<checkpoint>.eval-<protocol>.json``); a checkpoint or
run folder without one is evaluated first only when asked (``evaluate=True``), since that takes long.
The measured reconstruction loss is the reference's number (``mse_batch_mean``: the mean of per-batch
MSEs on the test split, as the official code averages it), falling back to the per-image mean.
A measured row whose samples came from another prior than the model's learned one (``sjvae evaluate
--prior gmm:PATH``) is labelled with the prior's name and a note: it is not the paper's protocol.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from ..atomic import write_json
from ..data import DATASETS

__all__ = ["PUBLISHED", "PUBLISHED_SOURCES", "METRIC_COLUMNS", "load_result", "check_dataset", "measured_row",
           "published_rows",
           "build_table", "format_table", "compare"]

METRIC_COLUMNS = (("mse", "Recon. loss"), ("is", "IS"), ("fid", "FID"), ("fad", "FAD"))
MODELS = ("swgan", "sgad", "ann-vae", "fsvae", "taid", "esvae")  # the paper's row order
MODEL_LABELS = {"swgan": "SWGAN", "sgad": "SGAD", "ann-vae": "ANN", "fsvae": "FSVAE", "taid": "TAID",
                "esvae": "ESVAE"}
BASELINES = ("ann-vae", "fsvae", "esvae")  # the models this package trains; other rows need --all-published

_ESVAE = "Zhan et al., ESVAE (arXiv 2310.14839), Table I"
PUBLISHED_SOURCES = {
    "esvae": f"{_ESVAE}: the authors' own runs",
    "fsvae": f"{_ESVAE}, copied from Kamata et al., FSVAE (AAAI 2022)",
    "ann-vae": f"{_ESVAE}, copied from Kamata et al., FSVAE (AAAI 2022), its ANN VAE",
    "taid": f"{_ESVAE}, citing TAID (ICLR 2023) [16]",
    "swgan": f"{_ESVAE}, citing SWGAN [19]",
    "sgad": f"{_ESVAE}, citing SGAD [19]",
}
# (dataset, model) -> (recon. loss, IS, FID, FAD) as printed in the paper; None where it prints "-".
PUBLISHED: Dict[tuple, tuple] = {
    ("mnist", "swgan"): (None, None, "100.29", None),
    ("mnist", "sgad"): (None, None, "69.64", None),
    ("mnist", "ann-vae"): ("0.048", "5.947", "112.5", "17.09"),
    ("mnist", "fsvae"): ("0.031", "6.209", "97.06", "35.54"),
    ("mnist", "esvae"): ("0.013", "5.612", "117.8", "10.99"),
    ("fashion", "swgan"): (None, None, "175.34", None),
    ("fashion", "sgad"): (None, None, "165.42", None),
    ("fashion", "ann-vae"): ("0.050", "4.252", "123.7", "18.08"),
    ("fashion", "fsvae"): ("0.031", "4.551", "90.12", "15.75"),
    ("fashion", "esvae"): ("0.019", "6.227", "125.3", "11.13"),
    ("cifar10", "swgan"): (None, None, "178.40", None),
    ("cifar10", "sgad"): (None, None, "181.50", None),
    ("cifar10", "ann-vae"): ("0.105", "2.591", "229.6", "196.9"),
    ("cifar10", "fsvae"): ("0.066", "2.945", "175.5", "133.9"),
    ("cifar10", "taid"): (None, "3.53", "171.1", "120.5"),
    ("cifar10", "esvae"): ("0.045", "3.758", "127.0", "14.74"),
    ("celeba", "swgan"): (None, None, "238.42", None),
    ("celeba", "sgad"): (None, None, "151.36", None),
    ("celeba", "ann-vae"): ("0.059", "3.231", "92.53", "156.9"),
    ("celeba", "fsvae"): ("0.051", "3.697", "101.6", "112.9"),
    ("celeba", "taid"): (None, "4.31", "99.54", "105.3"),
    ("celeba", "esvae"): ("0.034", "3.868", "85.33", "51.93"),
}


def _json_path(checkpoint: Path, protocol: str) -> Path:
    return checkpoint.with_name(f"{checkpoint.name}.eval-{protocol}.json")


def _is_eval_json(data) -> bool:
    return isinstance(data, dict) and isinstance(data.get("metrics"), dict) and "dataset" in data


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable JSON file ({err})") from None
    if not _is_eval_json(data):
        raise ValueError(f"{path} is JSON but not a result of `sjvae evaluate` (it needs 'metrics' and 'dataset')")
    from ..schemas import EvaluateResult, check
    check(EvaluateResult, data, path, "rerun `sjvae evaluate` to write it again")
    return data


def load_result(path, protocol: str = "reference", which: str = "best", evaluate: bool = False,
                **evaluate_kwargs) -> dict:
    """The `sjvae evaluate` result for ``path``: an evaluate JSON, a checkpoint, or a run folder.

    A checkpoint's JSON is ``<checkpoint>.eval-<protocol>.json``; a run folder uses its ``best.pt`` or
    ``last.pt`` (``which``, falling back to the other). Without a JSON, ``evaluate=True`` runs
    ``metrics.evaluate.evaluate_checkpoint`` with ``protocol`` and ``evaluate_kwargs`` (flat options, split by
    ``split_eval_kwargs``) and writes it;
    otherwise ValueError says which command to run.
    """
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path} does not exist; pass evaluate JSON files, checkpoints or run folders")
    if path.is_file() and path.suffix == ".json":
        return {**_read_json(path), "_path": str(path)}
    if path.is_dir():
        order = ("best.pt", "last.pt") if which == "best" else ("last.pt", "best.pt")
        found = [path / name for name in order if (path / name).is_file()]
        if not found:
            raise ValueError(f"{path} is a folder without best.pt or last.pt; pass a run folder of `sjvae train`")
        checkpoint = found[0]
    else:
        checkpoint = path
    target = _json_path(checkpoint, protocol)
    stale = target.is_file() and _stale(_read_json(target), checkpoint)
    if target.is_file() and not (stale and evaluate):
        if stale:
            raise ValueError(f"{target} was computed for an earlier {checkpoint} (its sha256 differs); rerun "
                             f"`sjvae evaluate --checkpoint {checkpoint} --protocol {protocol}`, or pass --evaluate")
        return {**_read_json(target), "_path": str(target)}
    if not evaluate:
        raise ValueError(f"{checkpoint} has no {target.name}; run `sjvae evaluate --checkpoint {checkpoint} "
                         f"--protocol {protocol}` first, or pass --evaluate to compare")
    from .evaluate import evaluate_checkpoint, split_eval_kwargs
    options, sources, rest = split_eval_kwargs(protocol=protocol, **evaluate_kwargs)
    res = evaluate_checkpoint(str(checkpoint), options, sources, **rest)
    write_json(target, res)
    return {**res, "_path": str(target)}


def trained_dataset(res: dict) -> Optional[str]:
    """The dataset the evaluated checkpoint was trained on: the result's record, else the checkpoint's own."""
    if "checkpoint_dataset" in res:
        return res.get("checkpoint_dataset")
    from ..checkpoint import CheckpointError, checkpoint_dataset, load_checkpoint
    try:
        return checkpoint_dataset(load_checkpoint(res.get("checkpoint", ""))) if res.get("checkpoint") else None
    except CheckpointError:  # the checkpoint is gone or unreadable: only the result's record counts
        return None


def check_dataset(res: dict, allow_mismatch: bool = False) -> None:
    """ValueError when `res` was measured on another dataset than its model was trained on (unless allowed;
    then `res["trained_on"]` is set and its row carries a note)."""
    own = trained_dataset(res)
    if own is None or own == res["dataset"]:
        return
    if not allow_mismatch:
        raise ValueError(f"{res.get('_path') or res.get('checkpoint')}: a {own} model measured on {res['dataset']}; "
                         f"its numbers do not belong in the {res['dataset']} rows. Evaluate it on {own}, or pass "
                         "--allow-dataset-mismatch to show it marked")
    res["trained_on"] = own


def _stale(res: dict, checkpoint: Path) -> bool:
    """Whether an evaluate result beside `checkpoint` was computed for another version of that file."""
    from ..atomic import sha256_file
    recorded = res.get("checkpoint_sha256")
    return bool(recorded) and checkpoint.is_file() and sha256_file(checkpoint) != recorded


def _fmt(value: Optional[float]) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:#.4g}"


def measured_row(res: dict) -> dict:
    """One measured row of the table from an evaluate result (notes say where it departs from the paper)."""
    config = res.get("model") or {}
    model = config.get("model", "?") if isinstance(config, dict) else str(config)
    dataset = res["dataset"]
    m = res.get("metrics", {})
    values = {"mse": None, "is": None, "fid": None, "fad": None}
    notes = []
    if "mse" in m:
        values["mse"] = m["mse"].get("mse_batch_mean", m["mse"].get("mse"))
        n = m["mse"].get("num_images")
        if n is not None and dataset in DATASETS and n < DATASETS[dataset].test_size:
            notes.append(f"recon. loss on {n} test images only")
    if "is" in m:
        values["is"] = m["is"].get("is")
        if m["is"].get("note"):
            notes.append(f"IS: {m['is']['note']}")
    if "fid" in m:
        values["fid"] = m["fid"].get("fid")
        if m["fid"].get("mode", "clean") != "clean":
            notes.append(f"FID with {m['fid']['mode']} resize (the paper: clean)")
        if m["fid"].get("num_images", 5000) < 5000:
            notes.append(f"FID on {m['fid']['num_images']} samples (the paper: 5000)")
    if "fad" in m:
        values["fad"] = m["fad"].get("fad")
        if m["fad"].get("note"):
            notes.append(f"FAD: {m['fad']['note']}")
        if m["fad"].get("num_images", 5120) < 5120:
            notes.append(f"FAD on {m['fad']['num_images']} samples (the paper: 5120)")
    prior = res.get("prior", "learned")
    if prior != "learned" and {"is", "fid", "fad"} & set(m):
        notes.append(f"IS/FID/FAD from samples of the {prior} prior, not the model's learned prior "
                     "(not the paper's protocol)")
    if res.get("protocol", "reference") != "reference":
        notes.append(f"{res['protocol']} metric protocol (the paper: reference)")
    if dataset == "cifar10":
        notes.append("CIFAR-10 from JPEG q75 copies here, not the original pixels")
    if res.get("trained_on") or res.get("dataset_mismatch"):
        notes.append(f"DATASET MISMATCH: a model trained on {res.get('trained_on') or res.get('checkpoint_dataset')} "
                     f"measured on {dataset}")
    unavailable = {k: str(v) for k, v in (res.get("unavailable") or {}).items()}
    skipped = [label for key, label in METRIC_COLUMNS if key not in m and key not in unavailable]
    if skipped:
        notes.append(f"not evaluated: {', '.join(skipped)}")
    for key, why in unavailable.items():
        notes.append(f"{key.upper()} unavailable: {why}")
    where = res.get("_path") or res.get("checkpoint", "")
    epoch = res.get("epoch")
    source = f"{where}" + (f" (epoch {epoch})" if epoch is not None else "")
    return {"dataset": dataset, "model": model, "kind": "measured", **values, "unavailable": sorted(unavailable),
            "source": source, "notes": notes, "prior": prior}


def published_rows(datasets: Iterable[str], models: Iterable[str]) -> List[dict]:
    """The paper's rows for ``datasets`` x ``models`` (pairs it does not report are skipped)."""
    rows = []
    for ds in datasets:
        for model in models:
            values = PUBLISHED.get((ds, model))
            if values is None:
                continue
            rows.append({"dataset": ds, "model": model, "kind": "published",
                         **{k: (float(v) if v is not None else None) for (k, _), v in zip(METRIC_COLUMNS, values)},
                         "printed": dict(zip([k for k, _ in METRIC_COLUMNS], values)),
                         "unavailable": [], "source": PUBLISHED_SOURCES[model], "notes": []})
    return rows


def build_table(results: Iterable[dict], all_published: bool = False, datasets: Optional[Iterable[str]] = None
                ) -> List[dict]:
    """Published rows beside measured rows, in the paper's dataset and model order.

    Datasets: those of ``results`` (all four when there are none, or ``datasets``); models: ANN, FSVAE and
    ESVAE (with ``all_published`` also SWGAN, SGAD, TAID) plus any measured model.
    """
    measured = [measured_row(r) for r in results]
    if datasets is None:
        datasets = [d for d in DATASETS if any(r["dataset"] == d for r in measured)] or list(DATASETS)
    datasets = list(datasets)
    extra = [r["dataset"] for r in measured if r["dataset"] not in datasets]
    datasets += sorted(set(extra))
    models = MODELS if all_published else BASELINES
    rows = published_rows(datasets, models) + measured

    def key(row):
        ds = datasets.index(row["dataset"]) if row["dataset"] in datasets else len(datasets)
        mo = MODELS.index(row["model"]) if row["model"] in MODELS else len(MODELS)
        return ds, mo, row["kind"] != "published"

    return sorted(rows, key=key)


def _cell(row: dict, key: str) -> str:
    if row["kind"] == "published":
        printed = row.get("printed", {}).get(key)
        return "-" if printed is None else f"{printed} P"
    if row.get(key) is None:
        return "n/a" if key in row.get("unavailable", []) else "-"
    return f"{_fmt(row[key])} M"


def format_table(rows: List[dict], fmt: str = "text") -> str:
    """Render the rows as ``text`` (aligned, with footnotes), ``markdown`` or ``csv``."""
    if fmt not in ("text", "markdown", "csv"):
        raise ValueError(f"format must be text, markdown or csv, got {fmt!r}")
    header = ["Dataset", "Model", *[label for _, label in METRIC_COLUMNS], "Source"]
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["dataset", "model", "kind", *[k for k, _ in METRIC_COLUMNS], "source", "notes",
                         "prior"])
        for r in rows:
            writer.writerow([r["dataset"], r["model"], r["kind"], *["" if r[k] is None else r[k]
                                                                    for k, _ in METRIC_COLUMNS],
                             r["source"], "; ".join(r["notes"]), r.get("prior", "learned")])
        return buf.getvalue()
    notes: List[str] = []
    body = []
    last_ds = None
    for r in rows:
        marks = []
        for note in r["notes"]:
            if note not in notes:
                notes.append(note)
            marks.append(str(notes.index(note) + 1))
        prior = r.get("prior", "learned")
        ours = " (ours)" if prior == "learned" else f" (ours, {prior} prior)"  # never taken for the paper's
        label = MODEL_LABELS.get(r["model"], r["model"]) + (ours if r["kind"] == "measured" else "")
        if marks:
            label += " [" + ",".join(marks) + "]"
        ds = DATASETS[r["dataset"]].label if r["dataset"] in DATASETS else r["dataset"]
        source = "published" if r["kind"] == "published" else f"measured: {r['source']}"
        body.append([ds if ds != last_ds or fmt == "markdown" else "", label,
                     *[_cell(r, k) for k, _ in METRIC_COLUMNS], source])
        last_ds = ds
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
    else:
        widths = [max(len(x[i]) for x in [header] + body) for i in range(len(header) - 1)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  " + header[-1]]
        lines.append("-" * (sum(widths) + 2 * len(widths) + len(header[-1])))
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] for row in body]
    used = sorted({r["model"] for r in rows if r["kind"] == "published"}, key=MODELS.index)
    legend = ["P = published, M = measured by this package; recon. loss = test MSE in [-1, 1] "
              "(lower is better), IS higher is better, FID and FAD lower is better; n/a = not measurable here."]
    legend += [f"P {MODEL_LABELS[m]}: {PUBLISHED_SOURCES[m]}" for m in used]
    legend += [f"[{i + 1}] {note}" for i, note in enumerate(notes)]
    return "\n".join(lines) + "\n\n" + ("\n" if fmt == "text" else "\n\n").join(legend) + "\n"


def compare(paths: Iterable, protocol: str = "reference", which: str = "best", evaluate: bool = False, *,
            all_published: bool = False, fmt: str = "text", output=None, allow_dataset_mismatch: bool = False,
            **evaluate_kwargs) -> dict:
    """Load every path's evaluate result, build and render the table; optionally write the rows as JSON.
    A result measured on another dataset than its checkpoint's is refused (ValueError) unless
    `allow_dataset_mismatch`; its row is then marked."""
    results = [load_result(p, protocol, which, evaluate, **evaluate_kwargs) for p in paths]
    for res in results:
        check_dataset(res, allow_dataset_mismatch)
    rows = build_table(results, all_published)
    table = format_table(rows, fmt)
    if output is not None:
        output = write_json(output, {"rows": rows, "protocol": protocol, "columns": dict(METRIC_COLUMNS)})
    return {"rows": rows, "table": table, "output": None if output is None else str(output)}
