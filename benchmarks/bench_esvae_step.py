"""Whole ESVAE training steps (CIFAR-10 shapes: 3x32x32, L=128, T=16) per LIF backend: images/s and memory.

One step = forward, loss (MSE + 0.001 * RBF-MMD^2), backward, AdamW update, on synthetic images in [-1, 1]
(the data pipeline is not timed). Each variant runs in a fresh process so its peak memory is its own:
CUDA max_memory_allocated over the timed steps, or on CPU the growth of the peak RSS (ru_maxrss) from
just before the first step to the end.

Variants (``--variants``):
  cupy        ESVAE(kernel_backend="cupy"): our CuPy LIF and Poisson kernels (CUDA + CuPy only)
  torch       ESVAE(kernel_backend="torch"): PaperLIFNode's plain autograd loop (the lead's reference path)
  lean-torch  ESVAE(kernel_backend="torch") with PaperLIFNode's loop replaced by kernels.lif_multistep_torch
Options to try on a GPU: --channels-last, --bf16 (torch.autocast bfloat16), --compile (torch.compile).

    python benchmarks/bench_esvae_step.py                       # CUDA: batch 256; CPU: batch 16
    python benchmarks/bench_esvae_step.py --device cpu --batch 8 --steps 3 --threads 2
"""
import argparse
import multiprocessing as mp
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_lif import commit, device_info, sync, write_json  # noqa: E402


def route_lif_to_lean_torch():
    """Make PaperLIFNode use kernels.lif_multistep_torch (when it starts from a reset state)."""
    from spikingjelly_vae import neuron
    from spikingjelly_vae.kernels import lif_multistep_torch

    original = neuron.PaperLIFNode.multi_step_forward

    def multi_step_forward(self, x_seq, *args, **kwargs):
        if self.store_v_seq or isinstance(self.v, torch.Tensor):
            return original(self, x_seq, *args, **kwargs)
        sg = self.surrogate_function
        return lif_multistep_torch(x_seq, self.decay, self.v_threshold, self.v_reset, sg.centre,
                                   sg.half_width)

    neuron.PaperLIFNode.multi_step_forward = multi_step_forward


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run_variant(variant: str, opts: dict) -> dict:
    """Build ESVAE for ``variant`` and time ``opts['steps']`` training steps (runs in a child process)."""
    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    from spikingjelly_vae.models import ESVAE

    device = torch.device(opts["device"])
    backend = {"cupy": "cupy", "torch": "torch", "lean-torch": "torch"}[variant]
    if variant == "lean-torch":
        route_lif_to_lean_torch()
    torch.manual_seed(0)
    model = ESVAE(in_channels=3, latent_dim=128, T=opts["T"], image_size=32, kernel_backend=backend).to(device)
    x = torch.rand(opts["batch"], 3, 32, 32, generator=torch.Generator().manual_seed(1))
    x = x.mul(2).sub(1).to(device)
    if opts["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.param_groups(6.144e-4), weight_decay=1e-3)
    forward = torch.compile(model) if opts["compile"] else model
    generator = torch.Generator(device=device).manual_seed(2)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=opts["bf16"]):
            out = forward(x, generator=generator)
            loss = model.loss(x, out)["loss"]
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    rss_before = _rss_bytes()  # model, optimizer and images exist; activations and Adam state not yet
    for _ in range(opts["warmup"]):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, cpu_times, losses = [], [], []
    for _ in range(opts["steps"]):
        start, start_cpu = time.perf_counter(), time.process_time()
        losses.append(step())
        sync(device)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - start_cpu)
    median = statistics.median(times)
    row = {"variant": variant, "backend": backend, "step_s_median": round(median, 5),
           "step_s_min": round(min(times), 5), "images_per_s": round(opts["batch"] / median, 3),
           "step_cpu_s_median": round(statistics.median(cpu_times), 5),  # process CPU time, all threads
           "steps": opts["steps"], "first_loss": losses[0], "last_loss": losses[-1]}
    if device.type == "cuda":
        row["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated(device))
    else:
        row["rss_peak_growth_bytes"] = int(_rss_bytes() - rss_before)
        row["rss_peak_bytes"] = _rss_bytes()
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:i]")
    ap.add_argument("--variants", default=None,
                    help="comma list of cupy, torch, lean-torch (default: all that can run here)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 256 on CUDA, 16 on CPU)")
    ap.add_argument("--T", type=int, default=16, help="time steps (paper: 16)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20 CUDA, 3 CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5 CUDA, 1 CPU)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads in each run")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the set of variants, alternating")
    ap.add_argument("--channels-last", action="store_true", help="model and images in channels_last")
    ap.add_argument("--bf16", action="store_true", help="torch.autocast(dtype=bfloat16) around the forward")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--out", default=None,
                    help="JSON path (default results/bench_esvae_step_<cpu|cuda>.json)")
    args = ap.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    on_gpu = device.type == "cuda"
    if args.variants:
        variants = args.variants.split(",")
        bad = set(variants) - {"cupy", "torch", "lean-torch"}
        if bad:
            ap.error(f"unknown variants {sorted(bad)}; choose from cupy, torch, lean-torch")
    else:
        from spikingjelly_vae.kernels import select_backend

        can_cupy = on_gpu and select_backend(torch.zeros(1, device=device), "cupy") == "cupy"
        variants = (["cupy"] if can_cupy else []) + ["torch", "lean-torch"]
    opts = dict(rounds=args.rounds, device=str(device), batch=args.batch or (256 if on_gpu else 16), T=args.T,
                steps=args.steps or (20 if on_gpu else 3), warmup=args.warmup if args.warmup is not None
                else (5 if on_gpu else 1), threads=args.threads, channels_last=args.channels_last,
                bf16=args.bf16, compile=args.compile)

    if args.threads:
        torch.set_num_threads(args.threads)
    record = {"benchmark": "bench_esvae_step", "model": "ESVAE(in_channels=3, latent_dim=128, image_size=32)",
              "data": "synthetic images in [-1, 1], CIFAR-10 shapes", **opts, **commit(),
              **device_info(device), "results": []}
    ctx = mp.get_context("spawn")
    for rnd in range(args.rounds):  # variants alternate, so a busy spell on a shared machine hits all
        for variant in variants:
            with ctx.Pool(1) as pool:
                row = pool.apply(run_variant, (variant, opts))
            row["round"] = rnd
            record["results"].append(row)
            step_ms = row["step_s_median"] * 1e3
            print(f"round {rnd} {variant:>10}: {row['images_per_s']:10.2f} images/s  step {step_ms:9.1f} ms"
                  f"  (process CPU {row['step_cpu_s_median'] * 1e3:9.1f} ms)", flush=True)
    record["images_per_s_median_over_rounds"] = {
        v: statistics.median(r["images_per_s"] for r in record["results"] if r["variant"] == v)
        for v in variants}
    record["step_cpu_s_median_over_rounds"] = {
        v: statistics.median(r["step_cpu_s_median"] for r in record["results"] if r["variant"] == v)
        for v in variants}
    record["images_per_s_best_round"] = {
        v: max(r["images_per_s"] for r in record["results"] if r["variant"] == v) for v in variants}
    print("images/s, median over rounds:", record["images_per_s_median_over_rounds"],
          "best round:", record["images_per_s_best_round"],
          "process CPU s per step:", record["step_cpu_s_median_over_rounds"])
    out = Path(args.out) if args.out else ROOT / "results" / f"bench_esvae_step_{device.type}.json"
    print("wrote", write_json(record, out))


if __name__ == "__main__":
    main()
