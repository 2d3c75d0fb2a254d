"""Where one ESVAE training step spends its time: a torch.profiler breakdown by kernel category.

The step is the one of bench_esvae_step.py (CIFAR-10 shapes 3x32x32, L=128, T=16; forward, MSE + MMD loss,
backward, AdamW) on synthetic images. After ``--warmup`` steps one step is profiled. Every profiled op is put
in one category: LIF, Poisson and MMD by the scope it runs in (the calls to ``kernels.lif_multistep``,
``kernels.poisson_sample`` and ``rbf_mmd`` are wrapped in ``record_function`` scopes here; their backward by
autograd node name, MMD's backward falls under "other"), the optimizer by torch's ``Optimizer.step`` scope,
and the rest by op name: conv, BN, linear, copies, other. Time per op is its self time: CPU time on CPU,
the time of the kernels it launched on CUDA. The rest of the step's wall time is "idle/launch gaps" on CUDA
(GPU not busy) and "Python/framework" on CPU (with the phase scopes' own self time). JSON to results/, a
table to stdout.

    python benchmarks/profile_step.py --device cpu --batch 4 --threads 2
    python benchmarks/profile_step.py --device cuda --batch 256
"""
import argparse
import re
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_lif import commit, device_info, sync, write_json  # noqa: E402

SCOPES = [("LIF", re.compile(r"sjvae::lif|LIF(Torch|CuPy)Backward")),
          ("Poisson", re.compile(r"sjvae::poisson|Poisson(Torch|CuPy)Backward")),
          ("MMD", re.compile(r"sjvae::mmd")),
          ("optimizer", re.compile(r"Optimizer\.step|Optimizer\.zero_grad|sjvae::optimizer"))]
# first match wins: BN before conv, since cuDNN's BN ops (aten::cudnn_batch_norm*) also match "cudnn"
OPS = [("BN", re.compile(r"batch_norm|BatchNorm|bn_fw|bn_bw|welford", re.I)),
       ("conv", re.compile(r"conv|cudnn|Convolution|implicit_gemm|xmma|winograd|dgrad|wgrad", re.I)),
       ("linear", re.compile(r"addmm|aten::mm|aten::bmm|matmul|linear|gemm|Addmm|MmBackward", re.I)),
       ("copies", re.compile(r"copy_|aten::to$|_to_copy|contiguous|clone|aten::cat|aten::stack|Memcpy|Memset",
                             re.I))]
PHASES = ("sjvae::forward", "sjvae::loss", "sjvae::backward")
FRAMEWORK = "Python/framework"
CATEGORIES = [c for c, _ in SCOPES] + [c for c, _ in OPS] + ["other", FRAMEWORK]


def category(evt) -> str:
    """The category of a profiled CPU op: a scope among its ancestors first, else its own (or nearest
    ancestor's) op name. The self time of the phase scopes themselves is Python between ops."""
    if evt.name in PHASES:
        return FRAMEWORK
    chain, node = [], evt
    while node is not None:
        chain.append(node.name)
        node = node.cpu_parent
    for label, pattern in SCOPES:
        if any(pattern.search(name) for name in chain):
            return label
    for name in chain:
        for label, pattern in OPS:
            if pattern.search(name):
                return label
    return "other"


def scope_library_calls() -> None:
    """Wrap the LIF, Poisson and MMD entry points in record_function scopes (this process only)."""
    from spikingjelly_vae import kernels
    from spikingjelly_vae.models import esvae

    def scoped(label, fn):
        def wrapper(*args, **kwargs):
            with record_function(label):
                return fn(*args, **kwargs)
        return wrapper

    kernels.lif_multistep = scoped("sjvae::lif", kernels.lif_multistep)
    kernels.poisson_sample = scoped("sjvae::poisson", kernels.poisson_sample)
    esvae.rbf_mmd = scoped("sjvae::mmd", esvae.rbf_mmd)


def build_step(device: torch.device, batch: int, T: int, kernel_backend: str):
    from spikingjelly_vae.models import ESVAE

    torch.manual_seed(0)
    model = ESVAE(in_channels=3, latent_dim=128, T=T, image_size=32, kernel_backend=kernel_backend).to(device)
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1)).mul(2).sub(1).to(device)
    optimizer = torch.optim.AdamW(model.param_groups(6.144e-4), weight_decay=1e-3)
    generator = torch.Generator(device=device).manual_seed(2)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with record_function("sjvae::forward"):
            out = model(x, generator=generator)
        with record_function("sjvae::loss"):
            loss = model.loss(x, out)["loss"]
        with record_function("sjvae::backward"):
            loss.backward()
        optimizer.step()
        return loss

    return step


def _busy_us(device_events) -> float:
    """Length of the union of the kernels' time intervals (us)."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in device_events)
    busy, end = 0.0, float("-inf")
    for s, e in spans:
        if e > end:
            busy += e - max(s, end)
            end = e
    return busy


def breakdown(prof, device: torch.device, wall_s: float) -> dict:
    """{category: ms} of the profiled step, plus the unattributed / idle rest and the phase wall times."""
    on_cuda = device.type == "cuda"
    totals, by_op = dict.fromkeys(CATEGORIES, 0.0), {}
    events = prof.events()
    cpu_ops = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]
    for evt in cpu_ops:
        us = (getattr(evt, "self_device_time_total", None) or getattr(evt, "self_cuda_time_total", 0.0)) \
            if on_cuda else evt.self_cpu_time_total
        if us:
            cat = category(evt)
            totals[cat] += us
            by_op[(cat, evt.name)] = by_op.get((cat, evt.name), 0.0) + us
    ms = {k: round(v / 1e3, 4) for k, v in totals.items()}
    top = {cat: [[name, round(us / 1e3, 4)] for (c, name), us in sorted(by_op.items(), key=lambda kv: -kv[1])
                 if c == cat][:6] for cat in CATEGORIES}
    wall_ms = wall_s * 1e3
    if on_cuda:
        kernels = [e for e in events if e.device_type != torch.autograd.DeviceType.CPU]
        busy_ms = _busy_us(kernels) / 1e3
        ms["idle/launch gaps"] = round(max(wall_ms - busy_ms, 0.0), 4)
        ms["kernels_busy"] = round(busy_ms, 4)
    else:
        ms[FRAMEWORK] = round(ms[FRAMEWORK] + max(wall_ms - sum(totals.values()) / 1e3, 0.0), 4)
    phases = {e.name.split("::", 1)[1]: round(e.cpu_time_total / 1e3, 4) for e in cpu_ops
              if e.name in PHASES}
    phases["optimizer"] = round(sum(e.cpu_time_total for e in cpu_ops if e.name.startswith("Optimizer.step"))
                                / 1e3, 4)
    return {"step_wall_ms": round(wall_ms, 4), "ms_by_category": ms, "phase_cpu_ms": phases,
            "top_ops_ms_by_category": top}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:i]")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 256 on CUDA, 8 on CPU)")
    ap.add_argument("--T", type=int, default=16, help="time steps (paper: 16)")
    ap.add_argument("--kernel-backend", default="auto", choices=["auto", "cupy", "torch"])
    ap.add_argument("--warmup", type=int, default=None, help="unprofiled steps first (default 5 CUDA, 1 CPU)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default=None, help="JSON path (default results/profile_step_<cpu|cuda>.json)")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    on_cuda = device.type == "cuda"
    batch = args.batch or (256 if on_cuda else 8)
    scope_library_calls()
    step = build_step(device, batch, args.T, args.kernel_backend)
    for _ in range(args.warmup if args.warmup is not None else (5 if on_cuda else 1)):
        step()
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        step()
        sync(device)
        wall_s = time.perf_counter() - start
    result = breakdown(prof, device, wall_s)
    record = {"benchmark": "profile_step", "model": "ESVAE(in_channels=3, latent_dim=128, image_size=32)",
              "data": "synthetic images in [-1, 1], CIFAR-10 shapes", "batch": batch, "T": args.T,
              "kernel_backend": args.kernel_backend, "time_basis": "device kernel time" if on_cuda else
              "CPU self time", "note": "one profiled step; the profiler itself adds overhead to the wall time",
              **commit(), **device_info(device), **result}
    print(f"ESVAE step, batch {batch}, T {args.T}, {device}: wall {result['step_wall_ms']:.1f} ms "
          f"(profiled, {record['time_basis']})")
    for name, value in result["ms_by_category"].items():
        share = 100.0 * value / result["step_wall_ms"] if result["step_wall_ms"] else 0.0
        print(f"  {name:34s} {value:10.2f} ms  {share:5.1f} %")
    out = Path(args.out) if args.out else ROOT / "results" / f"profile_step_{device.type}.json"
    print("wrote", write_json(record, out))


if __name__ == "__main__":
    main()
