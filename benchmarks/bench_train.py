"""Training-step throughput and peak memory of ESVAE on CIFAR-10 shapes (3x32x32, L=128, T=16).

One step is `train.train_step` exactly as `sjvae train` runs it: forward with a seeded generator, loss
(MSE + 0.001 RBF-MMD^2), finiteness check, backward, AdamW update (bottleneck at 10x lr), on synthetic
images in [-1, 1] (the data pipeline is not timed). Each (device, batch) runs in a fresh process so its
peak memory is its own: on CUDA `max_memory_allocated` over the timed steps, on CPU the growth of the
peak RSS (ru_maxrss) from just before the first (warm-up) step, i.e. what training adds to the model.

    python benchmarks/bench_train.py                                # CPU, and CUDA when present
    python benchmarks/bench_train.py --devices cpu --batches 64 --steps 2 --threads 2
Writes results/bench_train.json (or --out).
"""
import argparse
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def provenance() -> dict:
    from importlib import metadata

    from bench_lif import commit
    return {**commit(),
            "torch": torch.__version__, "spikingjelly": metadata.version("spikingjelly"),
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "loadavg_1min_at_start": round(os.getloadavg()[0], 2)}  # other work on a shared machine skews times


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_one(device_name: str, batch: int, opts: dict) -> dict:
    """Time `opts['steps']` training steps after `opts['warmup']` (runs in a child process)."""
    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    from spikingjelly_vae.models import build_model
    from spikingjelly_vae.train import train_step

    device = torch.device(device_name)
    torch.manual_seed(0)
    model = build_model({"model": "esvae", "in_channels": 3, "image_size": 32, "latent_dim": 128, "T": 16,
                         "mmd_lambda": 1e-3}).to(device)
    optimizer = torch.optim.AdamW(model.param_groups(0.0006144, bottleneck_lr_mult=10.0), weight_decay=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=opts["amp"] == "fp16")
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1)).mul(2).sub(1).to(device)
    gen = torch.Generator(device=device).manual_seed(2)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    for _ in range(opts["warmup"]):
        train_step(model, model, optimizer, scaler, x, generator=gen, amp=opts["amp"])
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    times = []
    for _ in range(opts["steps"]):
        t = time.perf_counter()
        terms, _ = train_step(model, model, optimizer, scaler, x, generator=gen, amp=opts["amp"])
        _sync(device)
        times.append(time.perf_counter() - t)
    rec = {"device": str(device), "batch": batch, "amp": opts["amp"], "steps": len(times),
           "warmup": opts["warmup"], "step_s_median": statistics.median(times), "step_s_min": min(times),
           "images_per_s": batch / statistics.median(times), "torch_threads": torch.get_num_threads(),
           "final_loss": float(terms["loss"])}
    if device.type == "cuda":
        rec.update(gpu=torch.cuda.get_device_name(device),
                   peak_allocated_bytes=torch.cuda.max_memory_allocated(device),
                   peak_above_model_bytes=torch.cuda.max_memory_allocated(device) - base)
    else:
        rec["peak_rss_growth_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0
        rec["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return rec


def _child(queue, device, batch, opts):
    try:
        queue.put(run_one(device, batch, opts))
    except Exception as err:  # report, don't hang the parent
        queue.put({"device": device, "batch": batch, "error": f"{type(err).__name__}: {err}"})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", default=None, help="comma-separated, e.g. cpu,cuda (default: cpu, + cuda if present)")
    ap.add_argument("--batches", default="64,256", help="comma-separated batch sizes [64,256]")
    ap.add_argument("--steps", type=int, default=None, help="timed steps [CPU 2, CUDA 20]")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first [CPU 1, CUDA 5]")
    ap.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: torch's default)")
    ap.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off", help="mixed precision on CUDA")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench_train.json"), help="JSON file to write")
    args = ap.parse_args(argv)
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    record = {"benchmark": "ESVAE training step, CIFAR-10 shapes (3x32x32, L=128, T=16), synthetic data",
              "provenance": provenance(), "results": []}
    ctx = mp.get_context("spawn")
    for device in devices:
        cuda = device.startswith("cuda")
        for batch in (int(b) for b in args.batches.split(",")):
            opts = {"steps": args.steps or (20 if cuda else 2), "warmup": args.warmup if args.warmup is not None
                    else (5 if cuda else 1), "threads": args.threads, "amp": args.amp if cuda else "off"}
            queue = ctx.Queue()
            proc = ctx.Process(target=_child, args=(queue, device, batch, opts))
            proc.start()
            rec = queue.get()
            proc.join()
            record["results"].append(rec)
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in rec.items()}, flush=True)
    from spikingjelly_vae.atomic import write_json
    print(f"wrote {write_json(args.out, record)}")


if __name__ == "__main__":
    main()
