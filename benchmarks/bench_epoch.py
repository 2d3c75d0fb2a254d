"""End-to-end `sjvae train` epoch time with the data on the device or on the DataLoader path, and the loaders alone.

1. `epoch`: for each dataset and each data path, one `sjvae train` process (default preset, --grid-every 0,
   no progress bar, no TensorBoard) runs --epochs epochs. An epoch's end-to-end time is the wall time between
   two consecutive rows of its log.csv (polled every 5 ms): training, the test pass and the checkpoint writes.
   The first epoch (process start, cache load, warm-up) is reported apart; seconds_per_epoch is the median of
   the later ones. Each dataset runs twice, with `--data-on-gpu` and with `--no-data-on-gpu` (on a CPU device
   the first holds the data resident in CPU memory).
2. `loader`: images/s of iterating the train split alone, as train.py does: the DataLoader path
   (load_dataset, RandomSampler with a seeded generator, --num-workers, each batch moved to the device) vs
   `resident_data.ResidentLoader` (decoded cache on the device, same order, seeded flips).

    python benchmarks/bench_epoch.py --device cuda --data-root ../shared/data            # both parts
    python benchmarks/bench_epoch.py --device cpu --parts loader --out results/bench_epoch_loader_cpu.json
Writes results/bench_epoch_<device>.json (or --out).
"""
import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CLI = [sys.executable, "-c", "from spikingjelly_vae.cli import main; main()"]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_train import provenance  # noqa: E402  (commit, dirty, versions, GPU, load average)


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _complete_rows(path: Path) -> int:
    try:
        text = path.read_text()
    except OSError:
        return 0
    return max(0, text.count("\n") - 1)  # header line; a row counts once its newline is written


def run_epochs(dataset: str, data_on_gpu: bool, args) -> dict:
    """One `sjvae train` process; wall time stamps of each finished epoch (a new row of log.csv)."""
    with tempfile.TemporaryDirectory(prefix="bench_epoch_") as tmp:
        run = Path(tmp) / "run"
        cmd = CLI + ["train", "--dataset", dataset, "--epochs", str(args.epochs), "--out", str(run),
                     "--device", args.device, "--seed", "0", "--grid-every", "0", "--no-progress", "--no-tensorboard"]
        for opt in ("data_root", "cache_dir", "batch_size", "train_subset", "test_subset", "num_workers"):
            if getattr(args, opt) is not None:
                cmd += ["--" + opt.replace("_", "-"), str(getattr(args, opt))]
        cmd.append("--data-on-gpu" if data_on_gpu else "--no-data-on-gpu")
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        stamps, log = [], run / "log.csv"
        while proc.poll() is None:
            rows = _complete_rows(log)
            stamps += [time.perf_counter() - t0] * (rows - len(stamps))
            time.sleep(0.005)
        total = time.perf_counter() - t0
        err = proc.stderr.read()
        if proc.returncode != 0:
            raise RuntimeError(f"sjvae train failed ({proc.returncode}): {' '.join(cmd)}\n{err[-3000:]}")
        stamps += [total] * (_complete_rows(log) - len(stamps))
        with log.open(newline="") as f:
            rows = list(csv.DictReader(f))
    steady = [b - a for a, b in zip(stamps, stamps[1:])]
    train_images = [float(r["images_per_s"]) * float(r["epoch_seconds"]) for r in rows]
    rec = {"dataset": dataset, "data_on_gpu": data_on_gpu, "epochs": len(rows), "command": " ".join(cmd[3:]),
           "process_seconds": total, "first_epoch_end_s": stamps[0] if stamps else None,
           "epoch_end_to_end_s": steady, "train_loop_s": [float(r["epoch_seconds"]) for r in rows],
           "train_images_per_epoch": round(train_images[-1]) if rows else None,
           "test_images": int(rows[-1]["test_images"]) if rows else None}
    if steady:
        rec["seconds_per_epoch"] = statistics.median(steady)
        rec["images_per_s"] = rec["train_images_per_epoch"] / rec["seconds_per_epoch"]
    return rec


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_loader(loader, device, max_batches) -> dict:
    n, t0 = 0, time.perf_counter()
    for b, (x, _) in enumerate(loader):
        x = x.to(device, non_blocking=True)
        n += x.shape[0]
        if b + 1 >= max_batches:
            break
    _sync(device)
    seconds = time.perf_counter() - t0
    return {"images": n, "seconds": seconds, "images_per_s": n / seconds}


def bench_loader(dataset: str, args) -> list:
    """Iterate the train split: DataLoader path (as train.py) and resident path, same seed and batch."""
    from torch.utils.data import DataLoader, RandomSampler

    from spikingjelly_vae.data import load_dataset
    from spikingjelly_vae.presets import get_preset
    from spikingjelly_vae.resident_data import ResidentDataset, ResidentLoader

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    preset = get_preset("esvae", dataset)
    batch, drop_last = args.batch_size or preset["batch_size"], preset["drop_last"]
    workers = args.num_workers if args.num_workers is not None else (4 if device.type == "cuda" else 0)
    gen = torch.Generator()
    out = []
    t = time.perf_counter()
    train = load_dataset(dataset, "train", args.data_root, args.cache_dir)
    dl = DataLoader(train, batch, sampler=RandomSampler(train, generator=gen), num_workers=workers,
                    drop_last=drop_last, generator=gen, pin_memory=device.type == "cuda")
    setup = time.perf_counter() - t
    gen.manual_seed(0)
    out.append({"dataset": dataset, "path": "dataloader", "device": str(device), "batch": batch,
                "num_workers": workers, "setup_s": setup, **_time_loader(dl, device, args.loader_batches)})
    t = time.perf_counter()
    res = ResidentDataset.load(dataset, "train", root=args.data_root, cache_dir=args.cache_dir, device=device)
    _sync(device)
    setup = time.perf_counter() - t
    rl = ResidentLoader(res, batch_size=batch, shuffle=True, drop_last=drop_last, generator=gen)
    gen.manual_seed(0)
    _time_loader(rl, device, 2)  # warm-up (CUDA kernels)
    for epoch in range(args.loader_epochs):
        gen.manual_seed(epoch)
        out.append({"dataset": dataset, "path": "resident", "device": str(device), "batch": batch, "epoch": epoch,
                    "setup_s_incl_cache_load": setup, "flip": rl.flip,
                    **_time_loader(rl, device, len(rl))})
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--epochs", type=int, default=3, help="epochs per training run (>= 2: the first is apart)")
    p.add_argument("--datasets", default="mnist,cifar10")
    p.add_argument("--parts", default="epoch,loader", help="epoch, loader or both (comma-separated)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the preset (256)")
    p.add_argument("--train-subset", type=int, default=None, help="smaller runs on CPU")
    p.add_argument("--test-subset", type=int, default=None)
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--loader-batches", type=int, default=40, help="DataLoader batches timed per dataset")
    p.add_argument("--loader-epochs", type=int, default=2, help="resident epochs timed per dataset")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.epochs < 2 and "epoch" in args.parts:
        p.error("--epochs must be >= 2 (the first epoch includes start-up and is reported apart)")
    dev_name = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out or ROOT / "results" / f"bench_epoch_{dev_name.replace(':', '')}.json")
    result = {"benchmark": "bench_epoch", "device": dev_name, **provenance(), "argv": sys.argv[1:],
              "torch_threads": torch.get_num_threads(), "loader": [], "epoch": []}
    datasets = [d for d in args.datasets.split(",") if d]
    if "loader" in args.parts:
        for d in datasets:
            result["loader"] += bench_loader(d, args)
            print(json.dumps(result["loader"][-1]), flush=True)
    if "epoch" in args.parts:
        for d in datasets:
            for mode in (True, False):
                result["epoch"].append(run_epochs(d, mode, args))
                print(json.dumps({k: v for k, v in result["epoch"][-1].items() if k != "command"}), flush=True)
    result["loadavg_1min_at_end"] = round(os.getloadavg()[0], 2)
    from spikingjelly_vae.atomic import atomic_write_text
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
