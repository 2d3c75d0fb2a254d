"""Forward + backward time and memory of the paper's LIF at ESVAE's layer shapes, several implementations.

Implementations (one process, same inputs):
  cupy              our CuPy kernel (CUDA + CuPy only)
  lean_torch        our torch path (kernels.lif_multistep_torch): no-graph forward loop + hand-written
                    backward
  sj_lif_rectangle  SpikingJelly LIFNode(tau=4/3, decay_input=False, v_th=0.2, hard reset 0, reset not
                    detached) with our RectangleSurrogate: SpikingJelly's torch reference path
  sj_lif_atan       the same LIFNode with SpikingJelly's built-in ATan surrogate: its native path (a custom
                    op with its own backward on CPU; native CUDA / Triton on GPU). Different gradient!
  plain_loop        a plain autograd loop over T with our rectangle surrogate
  paper_lif_node_torch  PaperLIFNode(kernel_backend="torch"): the package's neuron module on its torch path
Memory: ``saved_bytes`` = bytes autograd keeps for backward (deduplicated by storage), and
``saved_bytes_beyond_output`` the same without the returned spikes (kept by the next layer anyway); on
CUDA also the peak allocated during forward+backward above what was allocated before. CPU peak RSS is
not reported (it only grows within one process).

    python benchmarks/bench_lif.py                      # CUDA if available (batch 256), else CPU (batch 16)
    python benchmarks/bench_lif.py --device cpu --batch 32 --threads 2
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (name, per-step neuron shape, how many LIF layers of ESVAE (CIFAR-10, L=128) have it)
ESVAE_LAYERS = [
    ("32x16x16", (32, 16, 16), 2),   # enc1, dec3
    ("64x8x8", (64, 8, 8), 2),       # enc2, dec2
    ("128x4x4", (128, 4, 4), 2),     # enc3, dec1
    ("256x2x2", (256, 2, 2), 1),     # enc4
    ("fc1024", (1024,), 1),          # decoder_input
    ("latent128", (128,), 1),        # before_latent (x_e)
    ("32x32x32", (32, 32, 32), 1),   # final_layer[0]
]


# ------------------------------------------------------------------------------------------ provenance

def commit() -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    if os.environ.get("SJVAE_COMMIT"):  # a copy on a remote GPU machine: the commit is passed in
        return {"commit": os.environ["SJVAE_COMMIT"], "dirty": None}
    head = git("rev-parse", "HEAD")
    return {"commit": head,
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no", "--", "spikingjelly_vae",
                                "benchmarks"))}


def device_info(device: torch.device) -> dict:
    from importlib import metadata

    info = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(), "spikingjelly": metadata.version("spikingjelly"),
            "cpu_count": os.cpu_count(), "cpu": _cpu_model(),
            "loadavg_1min_at_start": round(os.getloadavg()[0], 2)}  # other work on the machine skews times
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda)
    try:
        import cupy
        info["cupy"] = cupy.__version__
    except Exception as err:  # noqa: BLE001 - record why
        info["cupy"] = f"unavailable: {type(err).__name__}"
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_round_robin(fns: dict, device: torch.device, warmup: int, repeats: int) -> dict:
    """{name: median/min/max ms of ``fn()``}; the calls alternate between the functions, so load from other
    processes on a shared machine spreads over all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            sync(device)
            times[name].append((time.perf_counter() - start) * 1e3)
            cpu[name].append((time.process_time() - start_cpu) * 1e3)
    # process CPU time (all threads) does not count time spent waiting for a core on a busy machine
    return {name: {"ms_median": round(statistics.median(t), 4), "ms_min": round(min(t), 4),
                   "ms_max": round(max(t), 4), "cpu_ms_median": round(statistics.median(cpu[name]), 4),
                   "repeats": repeats} for name, t in times.items()}


def write_json(record: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)
    return path


# ------------------------------------------------------------------------------------------ implementations

def implementations(device: torch.device, decay=0.25, v_th=0.2):
    from spikingjelly.activation_based import functional, neuron, surrogate

    from spikingjelly_vae import kernels
    from spikingjelly_vae.surrogate import RectangleSurrogate, rectangle_spike

    def sj_node(surrogate_function):
        node = neuron.LIFNode(tau=1.0 / (1.0 - decay), decay_input=False, v_threshold=v_th, v_reset=0.0,
                              surrogate_function=surrogate_function, detach_reset=False, step_mode="m")

        def run(x):
            functional.reset_net(node)
            return node(x)

        return run

    def plain_loop(x):
        # unbind, not x[t]: each x[t] would give backward a zero-filled full-size gradient per step
        spikes, u, o = [], None, None
        for t, x_t in enumerate(x.unbind(0)):
            u = x_t if t == 0 else decay * u * (1.0 - o) + x_t
            o = rectangle_spike(u - v_th, offset=v_th, half_width=0.5)
            spikes.append(o)
        return torch.stack(spikes)

    impls = {}
    if device.type == "cuda" and kernels.select_backend(torch.zeros(1, device=device), "cupy") == "cupy":
        impls["cupy"] = lambda x: kernels.lif_multistep(x, backend="cupy")
    impls["lean_torch"] = kernels.lif_multistep_torch
    impls["sj_lif_rectangle"] = sj_node(RectangleSurrogate(0.0, 0.5, v_th))
    impls["sj_lif_atan"] = sj_node(surrogate.ATan())
    impls["plain_loop"] = plain_loop
    try:
        from spikingjelly_vae.neuron import PaperLIFNode
    except ImportError:
        return impls
    paper = PaperLIFNode(decay=decay, v_threshold=v_th, kernel_backend="torch")

    def paper_lif_node_torch(x):
        functional.reset_net(paper)
        return paper(x)

    impls["paper_lif_node_torch"] = paper_lif_node_torch
    return impls


def saved_bytes(fn, x):
    """Bytes of the distinct storages autograd saves for backward during ``fn(x)``: in total, and beyond
    the returned spikes (which the next layer keeps anyway, so in a network they cost nothing extra)."""
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(x)
    total = int(sum(storages.values()))
    beyond = total - storages.get(out.untyped_storage().data_ptr(), 0)
    del out
    return total, int(beyond)


def bench_layer(impls, shape, args, device, dtype):
    g = torch.Generator(device=device).manual_seed(0)
    x0 = (torch.randn((args.T, args.batch, *shape), generator=g, device=device) * 0.4 + 0.12).to(dtype)
    grad = torch.randn(x0.shape, generator=g, device=device).to(dtype)
    x = x0.clone().requires_grad_()
    ref_out, ref_grad = None, None
    rows, steps = [], {}
    for name, fn in impls.items():
        x.grad = None
        out = fn(x)
        out.backward(grad)
        row = {"impl": name}
        if ref_out is None:
            ref_out, ref_grad = out.detach(), x.grad.clone()
        row["spikes_equal_first"] = bool(torch.equal(out.detach(), ref_out))
        row["grad_max_abs_diff_first"] = float((x.grad.float() - ref_grad.float()).abs().max())
        row["firing_rate"] = float(out.detach().float().mean())
        del out
        row["saved_bytes"], row["saved_bytes_beyond_output"] = saved_bytes(fn, x)

        def step(fn=fn):
            x.grad = None
            fn(x).backward(grad)

        steps[name] = step
        if device.type == "cuda":
            x.grad = None
            sync(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            step()
            sync(device)
            row["cuda_peak_bytes_above_inputs"] = int(torch.cuda.max_memory_allocated(device) - base)
        rows.append(row)
    timing = timed_round_robin(steps, device, args.warmup, args.repeats)
    for row in rows:
        row.update(timing[row["impl"]])
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:i]")
    ap.add_argument("--T", type=int, default=16, help="time steps (ESVAE: 16)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 256 on CUDA, 16 on CPU)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--layers", default="all", help="comma list of layer names, or all: "
                    + ", ".join(n for n, _, _ in ESVAE_LAYERS))
    ap.add_argument("--impls", default="all", help="comma list of implementations, or all")
    ap.add_argument("--warmup", type=int, default=10,
                    help="untimed calls per measurement (CPU: glibc malloc needs a few to settle)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls (default 50 CUDA, 10 CPU)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", default=None, help="JSON path (default results/bench_lif_<cpu|cuda>.json)")
    args = ap.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    args.batch = args.batch or (256 if device.type == "cuda" else 16)
    args.repeats = args.repeats or (50 if device.type == "cuda" else 10)
    dtype = getattr(torch, args.dtype)
    impls = implementations(device)
    if args.impls != "all":
        wanted = args.impls.split(",")
        unknown = set(wanted) - set(impls)
        if unknown:
            ap.error(f"unknown or unavailable implementations {sorted(unknown)}; available: {sorted(impls)}")
        impls = {k: impls[k] for k in wanted}
    names = [n for n, _, _ in ESVAE_LAYERS] if args.layers == "all" else args.layers.split(",")
    layers = [layer for layer in ESVAE_LAYERS if layer[0] in names]

    record = {"benchmark": "bench_lif", "T": args.T, "batch": args.batch, "dtype": args.dtype,
              "warmup": args.warmup, **commit(), **device_info(device),
              "note": "fwd+bwd of one LIF layer; times in ms; saved_bytes: what autograd keeps for backward",
              "layers": []}
    totals, cpu_totals = {}, {}
    for name, shape, count in layers:
        rows = bench_layer(impls, shape, args, device, dtype)
        record["layers"].append({"layer": name, "shape": [args.T, args.batch, *shape],
                                 "count_in_esvae": count, "results": rows})
        for r in rows:
            totals[r["impl"]] = totals.get(r["impl"], 0.0) + count * r["ms_median"]
            cpu_totals[r["impl"]] = cpu_totals.get(r["impl"], 0.0) + count * r["cpu_ms_median"]
            mib = r["saved_bytes_beyond_output"] / 2**20
            print(f"{name:>10} {r['impl']:>20}: {r['ms_median']:9.3f} ms (cpu {r['cpu_ms_median']:9.3f})"
                  f"  saved beyond output {mib:8.2f} MiB"
                  f"  spikes==first {r['spikes_equal_first']}", flush=True)
    record["esvae_all_lif_layers_ms"] = {k: round(v, 3) for k, v in totals.items()}
    record["esvae_all_lif_layers_cpu_ms"] = {k: round(v, 3) for k, v in cpu_totals.items()}
    out = Path(args.out) if args.out else ROOT / "results" / f"bench_lif_{device.type}.json"
    print("sum over ESVAE's LIF layers (ms):", record["esvae_all_lif_layers_ms"])
    print("the same in process CPU ms:", record["esvae_all_lif_layers_cpu_ms"])
    print("wrote", write_json(record, out))


if __name__ == "__main__":
    main()
