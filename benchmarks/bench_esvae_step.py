"""Whole ESVAE training steps (CIFAR-10 shapes: 3x32x32, L=128, T=16) per variant: images/s and memory.

One step = forward, loss (MSE + 0.001 * RBF-MMD^2), backward, AdamW update, on synthetic images in [-1, 1]
(the data pipeline is not timed). Each variant runs in a fresh process so its peak memory is its own:
CUDA max_memory_allocated from the build on (warm-up, a CUDA graph's capture, the timed steps), or on CPU
the growth of the peak RSS (ru_maxrss) from
just before the first step to the end. A variant that cannot run here is recorded with ``skipped`` (the
reason) and one that fails with ``error``; neither stops the others.

Variants (``--variants``; default: all that can run on the device):
  torch          kernel_backend="torch": the kernels' torch LIF/Poisson path, torch's default AdamW
  cupy           kernel_backend="cupy": our CuPy kernels (CUDA + CuPy only)
  adamw-foreach  kernel_backend="auto", AdamW(foreach=True)
  adamw-fused    kernel_backend="auto", AdamW(fused=True)
  channels-last  kernel_backend="auto", model and images in channels_last
  fuse-bn-lif    kernel_backend="auto", tdBN + LIF fused (ESVAE(fuse_bn_lif=True), keeps less for backward)
  cuda-graph     kernel_backend="auto", the whole step (forward, backward, capturable AdamW) captured once
                 with torch.cuda.graphs and replayed (static shapes; default CUDA generator; CUDA only)
  compile        kernel_backend="auto", torch.compile(model) (CUDA by default; name it to try on CPU)
Option: --bf16 (torch.autocast bfloat16 around the forward) for every variant.

    python benchmarks/bench_esvae_step.py                       # CUDA: batch 256; CPU: batch 16
    python benchmarks/bench_esvae_step.py --device cpu --batch 8 --steps 3 --threads 2
"""
import argparse
import multiprocessing as mp
import resource
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_lif import commit, device_info, sync, write_json  # noqa: E402

VARIANTS = {
    "torch": dict(kernel_backend="torch"),
    "cupy": dict(kernel_backend="cupy", needs="cupy"),
    "adamw-foreach": dict(optimizer=dict(foreach=True)),
    "adamw-fused": dict(optimizer=dict(fused=True)),
    "channels-last": dict(channels_last=True),
    "fuse-bn-lif": dict(model=dict(fuse_bn_lif=True)),
    "cuda-graph": dict(graph=True, optimizer=dict(capturable=True, foreach=True), needs="cuda"),
    "compile": dict(compile=True, needs="cuda-default"),
}


def why_not(variant: str, device: torch.device, named: bool) -> str:
    """"" when ``variant`` can run on ``device``, else the reason it is skipped."""
    needs = VARIANTS[variant].get("needs")
    if needs == "cupy":
        from spikingjelly_vae.kernels import select_backend

        if device.type != "cuda" or select_backend(torch.zeros(1, device=device), "cupy") != "cupy":
            return "needs a CUDA device and a working CuPy"
    if needs == "cuda" and device.type != "cuda":
        return "needs CUDA (torch.cuda graphs)"
    if needs == "cuda-default" and device.type != "cuda" and not named:
        return "not run on CPU unless named in --variants (compiling takes minutes on a small CPU)"
    return ""


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _build(variant: str, opts: dict):
    """(model, step function returning the loss tensor) for ``variant``."""
    from spikingjelly_vae.models import ESVAE

    cfg = VARIANTS[variant]
    device = torch.device(opts["device"])
    torch.manual_seed(0)
    model = ESVAE(in_channels=3, latent_dim=128, T=opts["T"], image_size=32,
                  kernel_backend=cfg.get("kernel_backend", "auto"), **cfg.get("model", {})).to(device)
    x = torch.rand(opts["batch"], 3, 32, 32, generator=torch.Generator().manual_seed(1))
    x = x.mul(2).sub(1).to(device)
    if cfg.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.param_groups(6.144e-4), weight_decay=1e-3, **cfg.get("optimizer", {}))
    forward = torch.compile(model) if cfg.get("compile") else model
    # a CUDA graph replays the default generator's draws; other variants use their own seeded generator
    generator = None if cfg.get("graph") else torch.Generator(device=device).manual_seed(2)

    def loss_fn():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=opts["bf16"]):
            out = forward(x, generator=generator)
            return model.loss(x, out)["loss"]

    if cfg.get("graph"):
        from spikingjelly_vae.train.capture import CapturedStep
        captured = CapturedStep(lambda _x: loss_fn(), optimizer, x, model=model, warmup=max(3, opts["warmup"]),
                                restore=False)
        return model, lambda: captured(x)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        return loss

    return model, step


def run_variant(variant: str, opts: dict) -> dict:
    """Time ``opts['steps']`` training steps of ``variant`` (runs in a child process)."""
    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    device = torch.device(opts["device"])
    row = {"variant": variant, **{k: v for k, v in VARIANTS[variant].items() if k != "needs"}}
    rss_before = _rss_bytes()
    if device.type == "cuda":  # from before the build: a CUDA graph allocates its memory while capturing
        torch.cuda.reset_peak_memory_stats(device)
    try:
        _, step = _build(variant, opts)
        for _ in range(opts["warmup"]):
            step()
        sync(device)
        times, cpu_times, losses = [], [], []
        for _ in range(opts["steps"]):
            start, start_cpu = time.perf_counter(), time.process_time()
            loss = step()
            sync(device)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - start_cpu)
            losses.append(float(loss.detach()))
    except Exception as err:  # noqa: BLE001 - one variant's failure is a result, not the end of the run
        row["error"] = f"{type(err).__name__}: {err}"
        row["traceback_tail"] = traceback.format_exc().splitlines()[-6:]
        return row
    median = statistics.median(times)
    row.update(step_s_median=round(median, 5), step_s_min=round(min(times), 5),
               images_per_s=round(opts["batch"] / median, 3),
               step_cpu_s_median=round(statistics.median(cpu_times), 5),  # process CPU time, all threads
               steps=opts["steps"], first_loss=losses[0], last_loss=losses[-1])
    if device.type == "cuda":
        row["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated(device))
    else:
        row["rss_peak_growth_bytes"] = int(_rss_bytes() - rss_before)
        row["rss_peak_bytes"] = _rss_bytes()
    return row


def summarise(record: dict, variants) -> None:
    """Per variant that ran: images/s (median and best over rounds) and process CPU s per step."""
    ran = [v for v in variants if any(r["variant"] == v and "error" not in r for r in record["results"])]

    def over_rounds(key, how):
        return {v: how(r[key] for r in record["results"] if r["variant"] == v and "error" not in r) for v in ran}

    record["images_per_s_median_over_rounds"] = over_rounds("images_per_s", statistics.median)
    record["step_cpu_s_median_over_rounds"] = over_rounds("step_cpu_s_median", statistics.median)
    record["images_per_s_best_round"] = over_rounds("images_per_s", max)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:i]")
    ap.add_argument("--variants", default=None,
                    help=f"comma list of {', '.join(VARIANTS)} (default: all that can run here)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 256 on CUDA, 16 on CPU)")
    ap.add_argument("--T", type=int, default=16, help="time steps (paper: 16)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20 CUDA, 3 CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5 CUDA, 1 CPU)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads in each run")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the set of variants, alternating")
    ap.add_argument("--bf16", action="store_true", help="torch.autocast(dtype=bfloat16) around the forward")
    ap.add_argument("--out", default=None,
                    help="JSON path (default results/bench_esvae_step_<cpu|cuda>.json)")
    args = ap.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    on_gpu = device.type == "cuda"
    named = args.variants.split(",") if args.variants else list(VARIANTS)
    bad = set(named) - set(VARIANTS)
    if bad:
        ap.error(f"unknown variants {sorted(bad)}; choose from {', '.join(VARIANTS)}")
    skipped = {v: why_not(v, device, bool(args.variants)) for v in named}
    variants = [v for v in named if not skipped[v]]
    opts = dict(rounds=args.rounds, device=str(device), batch=args.batch or (256 if on_gpu else 16), T=args.T,
                steps=args.steps or (20 if on_gpu else 3), warmup=args.warmup if args.warmup is not None
                else (5 if on_gpu else 1), threads=args.threads, bf16=args.bf16)

    if args.threads:
        torch.set_num_threads(args.threads)
    record = {"benchmark": "bench_esvae_step", "model": "ESVAE(in_channels=3, latent_dim=128, image_size=32)",
              "data": "synthetic images in [-1, 1], CIFAR-10 shapes", **opts, **commit(),
              **device_info(device), "results": [],
              "skipped": {v: why for v, why in skipped.items() if why}}
    for v, why in record["skipped"].items():
        print(f"skip {v}: {why}", flush=True)
    ctx = mp.get_context("spawn")
    for rnd in range(args.rounds):  # variants alternate, so a busy spell on a shared machine hits all
        for variant in variants:
            with ctx.Pool(1) as pool:
                row = pool.apply(run_variant, (variant, opts))
            row["round"] = rnd
            record["results"].append(row)
            if "error" in row:
                print(f"round {rnd} {variant:>13}: ERROR {row['error']}", flush=True)
                continue
            step_ms = row["step_s_median"] * 1e3
            print(f"round {rnd} {variant:>13}: {row['images_per_s']:10.2f} images/s  step {step_ms:9.1f} ms"
                  f"  (process CPU {row['step_cpu_s_median'] * 1e3:9.1f} ms)", flush=True)
    summarise(record, variants)
    print("images/s, median over rounds:", record["images_per_s_median_over_rounds"],
          "best round:", record["images_per_s_best_round"],
          "process CPU s per step:", record["step_cpu_s_median_over_rounds"])
    out = Path(args.out) if args.out else ROOT / "results" / f"bench_esvae_step_{device.type}.json"
    print("wrote", write_json(record, out))


if __name__ == "__main__":
    main()
