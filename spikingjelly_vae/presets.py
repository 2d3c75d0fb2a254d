"""Per-(model, dataset) training hyper-parameters: the official settings of the ESVAE and FSVAE papers' code.

ESVAE rows are the official configs: the effective learning rate is
the YAML lr scaled by batch / 250 (as the official code does before building AdamW), the bottleneck
(prior layer) trains at 10x that lr, AdamW weight decay 0.001, 300 epochs, no scheduler, T = 16,
lambda = 0.001; latent 32 for MNIST / Fashion-MNIST and 128 for CIFAR-10 / CelebA. `drop_last` is the
official train loader's (`dataspec.DatasetSpec.drop_last`: True for Fashion-MNIST and CIFAR-10 only).

A row holds the training keys of `train.TrainConfig` (`batch_size`, `lr`, `epochs`, `weight_decay`,
`drop_last`, and optionally `bottleneck_lr_mult`, which is passed to `model.param_groups`) and
`model`: keyword arguments of the model builder (`latent_dim`, `T`, model-specific ones).
Every value can be overridden (`TrainConfig` fields, `--option` on the command line).
To add a model, add rows with `register_preset(model, dataset, row)` or to PRESETS directly.
"""
from __future__ import annotations

import copy

from .dataspec import DATASETS

__all__ = ["PRESETS", "TRAIN_KEYS", "get_preset", "register_preset", "effective_lr", "preset_table"]

TRAIN_KEYS = ("batch_size", "lr", "epochs", "weight_decay", "drop_last", "bottleneck_lr_mult")


def effective_lr(yaml_lr: float, batch_size: int, n_gpus: int = 1) -> float:
    """The official code's learning rate: lr * n_gpus * batch_size / 250."""
    return yaml_lr * n_gpus * batch_size / 250


def _esvae(dataset, batch_size, yaml_lr, latent_dim):
    return {"batch_size": batch_size, "lr": round(effective_lr(yaml_lr, batch_size), 12), "epochs": 300,
            "weight_decay": 1e-3, "drop_last": DATASETS[dataset].drop_last, "bottleneck_lr_mult": 10.0,
            "model": {"latent_dim": latent_dim, "T": 16, "mmd_lambda": 1e-3}}


PRESETS: dict = {
    ("esvae", "mnist"): _esvae("mnist", 256, 0.003, 32),       # lr 0.003072
    ("esvae", "fashion"): _esvae("fashion", 256, 0.003, 32),   # lr 0.003072
    ("esvae", "cifar10"): _esvae("cifar10", 256, 0.0006, 128),  # lr 0.0006144
    ("esvae", "celeba"): _esvae("celeba", 64, 0.001, 128),     # lr 0.000256 (ESVAELarge, 64x64)
}


def _fsvae(batch_size, drop_last):
    """FSVAE (kamata1729/FullySpikingVAE NetworkConfigs): YAML lr 0.001 (x batch / 250), 150 epochs, L 128, k 20,
    scheduled sampling, PSP "mmd" loss, one AdamW group with wd 0.001. CelebA: batch 64 as the ESVAE authors'
    re-run (the original config has 250 and lr 0.001)."""
    return {"batch_size": batch_size, "lr": round(effective_lr(0.001, batch_size), 12), "epochs": 150,
            "weight_decay": 1e-3, "drop_last": drop_last,
            "model": {"latent_dim": 128, "T": 16, "k": 20, "scheduled": True, "distance": "mmd"}}


def _ann_vae():
    """ANN VAE (main_ann_vae.py): batch 250, AdamW lr 1e-3 with its default wd 0.01, 150 epochs, L 128,
    KL weight 1 / len(train_loader) (set by the training loop through model.set_num_train_batches)."""
    return {"batch_size": 250, "lr": 1e-3, "epochs": 150, "weight_decay": 0.01, "drop_last": False,
            "model": {"latent_dim": 128}}


for _ds, _batch in (("mnist", 250), ("fashion", 250), ("cifar10", 250), ("celeba", 64)):
    PRESETS[("fsvae", _ds)] = _fsvae(_batch, DATASETS[_ds].drop_last)
    PRESETS[("ann-vae", _ds)] = _ann_vae()
for _model in ("esvae", "fsvae", "ann-vae"):  # the embedded MNIST subset trains with MNIST's rows
    PRESETS[(_model, "mnist-mini")] = copy.deepcopy(PRESETS[(_model, "mnist")])


def register_preset(model: str, dataset: str, row: dict) -> None:
    """Add or replace the row of (model, dataset); it needs the TRAIN_KEYS except bottleneck_lr_mult."""
    missing = [k for k in TRAIN_KEYS if k != "bottleneck_lr_mult" and k not in row]
    unknown = [k for k in row if k not in TRAIN_KEYS and k != "model"]
    if missing or unknown:
        raise ValueError(f"preset row for ({model}, {dataset}): missing {missing}, unknown {unknown}")
    PRESETS[(model, dataset)] = {**row, "model": dict(row.get("model", {}))}


def get_preset(model: str, dataset: str) -> dict:
    """A copy of the row of (model, dataset); ValueError naming the known pairs if there is none."""
    try:
        return copy.deepcopy(PRESETS[(model, dataset)])
    except KeyError:
        known = ", ".join(f"{m}/{d}" for m, d in sorted(PRESETS))
        raise ValueError(f"no preset for model {model!r} on dataset {dataset!r}; known: {known}") from None


def preset_table() -> str:
    """The presets as a small text table (one row per model and group of datasets with equal values), for
    `sjvae train --help` and the docs."""
    cols = ("model", "datasets", "epochs", "batch", "lr", "latent", "T", "wd")
    groups: dict = {}
    for (model, dataset), row in PRESETS.items():
        key = (model, row["epochs"], row["batch_size"], row["lr"], row["model"].get("latent_dim"),
               row["model"].get("T", "-"), row["weight_decay"])
        groups.setdefault(key, []).append(dataset)
    order = list(dict.fromkeys(m for m, _ in PRESETS))
    datasets = {m: [d for mm, d in PRESETS if mm == m] for m in order}

    def named(model, ds):
        rest = [d for d in datasets[model] if d not in ds]
        return "all" if not rest else f"all but {rest[0]}" if len(rest) == 1 and len(ds) > 2 else ",".join(ds)
    rows = [cols] + [(k[0], named(k[0], ds), *(f"{v:g}" if isinstance(v, float) else str(v) for v in k[1:]))
                     for k, ds in sorted(groups.items(), key=lambda kv: order.index(kv[0][0]))]
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
