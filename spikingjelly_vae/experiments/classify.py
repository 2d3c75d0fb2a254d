"""Encoder probe (paper Table III): classify the frozen encoder's posterior firing rates with an MLP.

features:   r_p = (1/T) sum_t x_e,t   (``model.encode(x)[1]``, model in eval mode, no augmentation);
            for the ANN VAE the posterior mean mu (``encode(x)[0]``)
classifier: L -> 512 -> 256 -> 128 -> classes, cross-entropy, SGD lr 0.01, 200 epochs (paper);
            ReLU, momentum 0.9, batch 128, no weight decay, PyTorch's default init (our choices).
Features are computed once per checkpoint (and cached in the output folder); the MLP trains on them.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

HIDDEN = (512, 256, 128)


@dataclass(frozen=True)
class ProbeOptions:
    """How the MLP probe trains (paper: SGD, lr 0.01, 200 epochs; momentum and batch are our choices)."""

    epochs: int = 200
    lr: float = 0.01
    momentum: float = 0.9
    batch_size: int = 128


@torch.no_grad()
def extract_features(model, loader, device=None, progress: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Posterior firing rates ``[N, L]`` (float32, CPU) and labels ``[N]`` (int64) of ``loader``'s images.

    Spiking models: ``encode(x)[1]`` (the rate of the encoder spikes); the ANN VAE: ``encode(x)[0]`` (mu).
    """
    from .common import is_spiking

    which = 1 if is_spiking(model) else 0
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    feats, labels = [], []
    for b, (x, y) in enumerate(loader):
        feats.append(model.encode(x.to(device))[which].float().cpu())
        labels.append(torch.as_tensor(y, dtype=torch.long))
        if progress and b % 10 == 0:
            print(f"  features: batch {b + 1}/{len(loader)}", flush=True)
    if not feats:
        raise ValueError("the data loader gave no images")
    return torch.cat(feats), torch.cat(labels)


class ProbeMLP(nn.Sequential):
    """in -> 512 -> 256 -> 128 -> classes with ReLU between (paper: "128-512FC-256FC-128FC-10FC")."""

    def __init__(self, in_features: int, num_classes: int = 10, hidden: Sequence[int] = HIDDEN):
        dims = (in_features, *hidden)
        layers = []
        for a, b in zip(dims, dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        super().__init__(*layers, nn.Linear(dims[-1], num_classes))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> float:
    """Top-1 accuracy of ``model`` on features ``x`` with labels ``y``."""
    model.eval()
    correct = sum((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
                  for i in range(0, len(x), batch_size))
    return correct / len(x)


def train_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, *,
                epochs: int = 200, lr: float = 0.01, momentum: float = 0.9, batch_size: int = 128,
                seed: int = 0, num_classes: Optional[int] = None, device="cpu", eval_every: int = 1,
                progress: bool = False) -> Dict:
    """Train :class:`ProbeMLP` with SGD on cached features; returns accuracies, per-epoch history and the MLP.

    Deterministic for a fixed ``seed``: the init is drawn under ``torch.manual_seed(seed)`` (global RNG
    restored afterwards) and the mini-batch order from a generator seeded with ``seed``.
    """
    if epochs < 1 or batch_size < 1 or lr <= 0 or not 0 <= momentum < 1:
        raise ValueError(f"need epochs >= 1, batch size >= 1, lr > 0 and momentum in [0, 1); got {epochs}, "
                         f"{batch_size}, {lr}, {momentum}")
    if train_x.dim() != 2 or test_x.dim() != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"features must be [N, L] with one L, got {tuple(train_x.shape)}, "
                         f"{tuple(test_x.shape)}")
    device = torch.device(device)
    num_classes = int(num_classes or max(train_y.max().item(), test_y.max().item()) + 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mlp = ProbeMLP(train_x.shape[1], num_classes)
    mlp = mlp.to(device)
    train_x, train_y = train_x.to(device), train_y.to(device)
    test_x, test_y = test_x.to(device), test_y.to(device)
    opt = torch.optim.SGD(mlp.parameters(), lr=lr, momentum=momentum)
    order_gen = torch.Generator().manual_seed(int(seed))
    history = []
    n = len(train_x)
    for epoch in range(1, epochs + 1):
        mlp.train()
        order = torch.randperm(n, generator=order_gen).to(device)
        total = 0.0
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            loss = F.cross_entropy(mlp(train_x[idx]), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        row = {"epoch": epoch, "train_loss": total / n}
        if epoch % eval_every == 0 or epoch == epochs:
            row["train_acc"] = accuracy(mlp, train_x, train_y)
            row["test_acc"] = accuracy(mlp, test_x, test_y)
        history.append(row)
        if progress and (epoch % 10 == 0 or epoch == epochs):
            print(f"  probe epoch {epoch}/{epochs}: loss {row['train_loss']:.4f} "
                  f"test acc {row.get('test_acc', float('nan')):.4f}", flush=True)
    final = history[-1]
    return {"test_acc": final["test_acc"], "train_acc": final["train_acc"], "history": history,
            "mlp": mlp.cpu(), "num_classes": num_classes}


def cached_features(model, checkpoint, *, dataset: str, data_root, num_train: Optional[int],
                    num_test: Optional[int], batch_size: int, device, cache_file: Optional[Path],
                    progress: bool = False) -> Dict:
    """Train/test features of one checkpoint, reused from ``cache_file`` when it holds the same key.

    The key is the checkpoint's sha256, the dataset and the image counts; the file is written atomically.
    """
    from ..atomic import sha256_file
    from ..checkpoint import save_checkpoint  # atomic torch.save
    from .common import image_loader

    key = f"{sha256_file(checkpoint)}|{dataset}|{num_train}|{num_test}"
    if cache_file is not None and Path(cache_file).is_file():
        try:
            cached = torch.load(cache_file, map_location="cpu", weights_only=True)
        except Exception:  # a damaged cache is recomputed, never trusted
            cached = None
        if isinstance(cached, dict) and cached.get("key") == key:
            if cached.get("payload_sha256") == _features_sha256(cached):
                return {**cached, "from_cache": True}
            import warnings
            warnings.warn(f"recomputing the feature cache {cache_file}: its tensors changed since it was written "
                          "(payload sha256 differs)", stacklevel=2)
    feats = {"key": key}
    for split, n in (("train", num_train), ("test", num_test)):
        loader = image_loader(dataset, split, root=data_root, num_images=n, batch_size=batch_size)
        feats[f"{split}_x"], feats[f"{split}_y"] = extract_features(model, loader, device, progress)
    feats["payload_sha256"] = _features_sha256(feats)
    if cache_file is not None:
        save_checkpoint(cache_file, feats)
    return {**feats, "from_cache": False}


def _features_sha256(feats: dict) -> Optional[str]:
    """sha256 over the cached feature and label tensors (None if one is missing or not a tensor)."""
    import hashlib
    h = hashlib.sha256()
    for name in ("train_x", "train_y", "test_x", "test_y"):
        t = feats.get(name)
        if not isinstance(t, torch.Tensor):
            return None
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def plot_history(results: Dict[str, Dict], path, chance: Optional[float] = None) -> None:
    """Probe curves: cross-entropy (left), train/test accuracy (right) per epoch; one colour per model."""
    from .common import pyplot, save_figure

    plt = pyplot()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    for (label, r), c in zip(results.items(), colours * 4):
        h = r["history"]
        ax_l.plot([e["epoch"] for e in h], [e["train_loss"] for e in h], color=c, label=label)
        ev = [e for e in h if "test_acc" in e]
        ax_a.plot([e["epoch"] for e in ev], [100 * e["test_acc"] for e in ev], color=c,
                  label=f"{label} test ({100 * r['test_acc']:.2f}%)")
        ax_a.plot([e["epoch"] for e in ev], [100 * e["train_acc"] for e in ev], color=c, ls="--", lw=0.9,
                  label=f"{label} train")
    if chance is not None:
        ax_a.axhline(100 * chance, color="0.5", ls=":", lw=1, label="chance")
    ax_l.set_xlabel("epoch")
    ax_l.set_ylabel("cross-entropy (train)")
    ax_a.set_xlabel("epoch")
    ax_a.set_ylabel("accuracy (%)")
    for ax in (ax_l, ax_a):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("MLP probe on frozen encoder firing rates (Table III)", fontsize=10)
    save_figure(fig, path)


def run_classify(checkpoints: Sequence, probe: ProbeOptions = ProbeOptions(), *, out_dir="results/classify",
                 dataset: Optional[str] = None, data_root=None, num_train: Optional[int] = None,
                 num_test: Optional[int] = None, feature_batch_size: int = 256, seed: int = 0, device="auto",
                 labels: Optional[Sequence[str]] = None, use_cache: bool = True, progress: bool = False) -> Dict:
    """Probe each checkpoint's encoder; write ``classify.csv``, ``classify_history.csv``, ``classify.json``,
    ``classify.png`` (and ``probe_features_<label>.pt`` caches) in ``out_dir``. Returns the JSON summary."""
    from ..atomic import write_json
    from ..data import dataset_info
    from ..runtime import resolve_device
    from .common import choose_dataset, load_spiking_model, model_label, provenance, safe_name, unique_labels

    started = time.time()
    if not checkpoints:
        raise ValueError("give at least one --checkpoint")
    if labels and len(labels) != len(checkpoints):
        raise ValueError(f"got {len(labels)} labels for {len(checkpoints)} checkpoints; "
                         "give one per checkpoint")
    device = resolve_device(device)
    loaded = [load_spiking_model(p, device, spiking_only=False) for p in checkpoints]
    dataset = choose_dataset(dataset, [c for _, c in loaded], checkpoints)
    num_classes = dataset_info(dataset)["num_classes"]
    if num_classes < 2:
        raise ValueError(f"{dataset} has no class labels; the encoder probe needs mnist, fashion or cifar10")
    labels = unique_labels(labels or [model_label(c, p) for (_, c), p in zip(loaded, checkpoints)])
    out_dir = Path(out_dir)
    features = dict(dataset=dataset, data_root=data_root, num_train=num_train, num_test=num_test,
                    batch_size=feature_batch_size, device=device, progress=progress)
    results = {}
    for (model, _), path, label in zip(loaded, checkpoints, labels):
        cache = out_dir / f"probe_features_{safe_name(label)}.pt" if use_cache else None
        results[label] = _probe_one(model, path, cache, features, probe, seed=seed, num_classes=num_classes)
    _write_results(out_dir, dataset, results, num_classes)
    summary = {
        "experiment": "classify", "dataset": dataset, "seed": seed,
        "probe": {"hidden": list(HIDDEN), "activation": "relu", "optimizer": "SGD", "lr": probe.lr,
                  "momentum": probe.momentum, "batch_size": probe.batch_size, "epochs": probe.epochs,
                  "loss": "cross-entropy",
                  "features": "posterior firing rate r_p = mean_t x_e (encode(x)[1]; ANN VAE: mu), "
                              "eval mode"},
        "models": {label: {"checkpoint": str(p), "config": c["config"], "epoch": c.get("epoch"),
                           **{k: v for k, v in r.items() if k not in ("mlp", "history")}}
                   for (label, r), p, (_, c) in zip(results.items(), checkpoints, loaded)},
        "provenance": provenance(device, started),
    }
    write_json(out_dir / "classify.json", summary)
    return summary


def _probe_one(model, path, cache, features: dict, probe: ProbeOptions, *, seed: int, num_classes: int) -> Dict:
    """Features of one checkpoint (cached) and the probe trained on them, with timings and counts."""
    t0 = time.time()
    f = cached_features(model, path, cache_file=cache, **features)
    t1 = time.time()
    r = train_probe(f["train_x"], f["train_y"], f["test_x"], f["test_y"], **asdict(probe), seed=seed,
                    num_classes=num_classes, device=features["device"], progress=features["progress"])
    r.update(feature_seconds=round(t1 - t0, 3), probe_seconds=round(time.time() - t1, 3),
             features_from_cache=f["from_cache"], num_train=len(f["train_x"]), num_test=len(f["test_x"]),
             latent_dim=f["train_x"].shape[1], mean_rate=f["train_x"].mean().item())
    return r


def _write_results(out_dir: Path, dataset: str, results: Dict[str, Dict], num_classes: int) -> None:
    """classify.csv (one row per model), classify_history.csv (one per model and epoch), classify.png."""
    from .common import write_csv

    rows = [{"model": label, "dataset": dataset, **{k: r[k] for k in CSV_FIELDS[2:]}}
            for label, r in results.items()]
    hist_rows = [{"model": label, **h} for label, r in results.items() for h in r["history"]]
    write_csv(out_dir / "classify.csv", rows, CSV_FIELDS)
    write_csv(out_dir / "classify_history.csv", hist_rows, ("model", "epoch", "train_loss", "train_acc", "test_acc"))
    plot_history(results, out_dir / "classify.png", chance=1.0 / num_classes)


CSV_FIELDS = ("model", "dataset", "test_acc", "train_acc", "num_train", "num_test", "latent_dim", "mean_rate",
              "feature_seconds", "probe_seconds")
