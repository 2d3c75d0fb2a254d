"""Training-step and generation time of ESVAE vs FSVAE vs the ANN VAE at the same batch (JSON out).

Measured per model (MNIST-shaped input 1x32x32 by default, --channels 3 for CIFAR-10; T = 16; the same latent
size for all):
  train_step   forward + loss + backward + AdamW step, training mode (FSVAE: its O(T^2) prefix passes)
  recon_eval   forward in eval mode under no_grad (the test-set reconstruction)
  sample       model.sample(batch) in eval mode
FSVAE extras (what its autoregressive latent costs, and what our O(T) eval-mode stepping gains):
  fsvae_posterior_train   posterior sampling alone in training mode (T-1 no-grad prefix passes + 1 full)
  fsvae_sample_prefix     generation in eval mode by re-running the prior MLP on every prefix (the
                          official code's loop) vs our stepwise generation (one MLP step per time step);
                          both draw the same spikes (checked, ``prefix_equals_stepwise``)
  fsvae_posterior_eval_*  the same for the posterior in eval mode (test reconstructions), checked by
                          ``posterior_prefix_equals_stepwise``

    python benchmarks/bench_models.py                          # CUDA if available (batch 250), else CPU (32)
    python benchmarks/bench_models.py --device cpu --batch 16 --threads 2 --repeats 5
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_lif import commit  # noqa: E402
from spikingjelly_vae.models import build_model  # noqa: E402
from spikingjelly_vae.models.fsvae import pick, random_index, run_prefix  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stats(times) -> dict:
    return {"median_s": statistics.median(times), "mean_s": statistics.fmean(times), "min_s": min(times),
            "repeats": len(times)}


def timed_interleaved(fns: dict, device, warmup, repeats) -> dict:
    """Seconds per call of each ``fns[name]()``; the calls alternate (a, b, c, a, b, c, ...) so that load on a
    shared machine drifting over time hits every function alike. ``warmup`` untimed rounds first."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t)
    return {name: _stats(ts) for name, ts in times.items()}


def peak_memory(fn, device):
    if device.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return int(torch.cuda.max_memory_allocated(device) - base)


@torch.no_grad()
def prefix_generation(prior, n, T, generator, device):
    """The official generation loop in eval mode: re-run the prior MLP on every prefix (O(T^2) steps)."""
    L, k = prior.latent_dim, prior.k
    inputs = torch.zeros(T + 1, n, L, device=device)
    for t in range(T):
        out = run_prefix(prior.mlp, inputs[:t + 1])[-1]
        inputs[t + 1] = pick(out, random_index(n, L, k, generator, device), k)
    return inputs[1:]


@torch.no_grad()
def prefix_posterior(posterior, x_e, generator):
    """The official posterior loop in eval mode: T-1 prefix passes, then the full pass, z re-read."""
    T, N, L = x_e.shape
    k = posterior.k
    z_prev, indices = torch.zeros_like(x_e), []
    for t in range(T - 1):
        out = run_prefix(posterior.mlp, torch.cat([x_e[:t + 1], z_prev[:t + 1]], dim=2))[-1]
        indices.append(random_index(N, L, k, generator, x_e.device))
        z_prev[t + 1] = pick(out, indices[-1], k)
    q = run_prefix(posterior.mlp, torch.cat([x_e, z_prev], dim=2))
    indices.append(random_index(N, L, k, generator, x_e.device))
    return pick(q, torch.stack(indices), k)


def build(name, args, device):
    config = {"model": name, "in_channels": args.channels, "image_size": 32, "latent_dim": args.latent_dim}
    if name != "ann-vae":
        config["T"] = args.T
    torch.manual_seed(0)
    model = build_model(config).to(device)
    if hasattr(model, "set_num_train_batches"):
        model.set_num_train_batches(240)
    if hasattr(model, "set_epoch"):
        model.set_epoch(75, 150)  # mid-schedule scheduled-sampling probability (0.2)
    return model


def model_calls(model, x, device):
    """train_step / recon_eval / sample closures of one model."""
    opt = torch.optim.AdamW(model.param_groups(1e-3), weight_decay=1e-3)
    gen = torch.Generator(device=device).manual_seed(0)

    def train_step():
        model.train()
        terms = model.loss(x, model(x, generator=gen))
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()

    @torch.no_grad()
    def recon_eval():
        model.eval()
        model(x, generator=gen)

    def sample():
        model.eval()
        model.sample(x.shape[0], generator=gen)

    return {"train_step": train_step, "recon_eval": recon_eval, "sample": sample}


def fsvae_extras(model, x, args, device) -> dict:
    """FSVAE: posterior share of the training step; eval-mode prefix re-runs vs our stepwise passes."""
    gen = torch.Generator(device=device).manual_seed(0)
    row = {}
    with torch.no_grad():
        x_e, _ = model.encode(x)
    g1, g2 = (torch.Generator(device=device).manual_seed(1) for _ in range(2))
    model.eval()
    row["prefix_equals_stepwise"] = bool(torch.equal(prefix_generation(model.prior, x.shape[0], args.T, g1, device),
                                                     model.prior_spikes(x.shape[0], g2)))
    g1, g2 = (torch.Generator(device=device).manual_seed(3) for _ in range(2))
    row["posterior_prefix_equals_stepwise"] = bool(torch.equal(prefix_posterior(model.posterior, x_e, g1),
                                                               model.posterior(x_e, g2)[0]))

    def posterior_train():
        model.train()
        model.posterior(x_e, gen)

    def posterior_eval_stepwise():
        model.eval()
        with torch.no_grad():
            model.posterior(x_e, gen)

    def generate_stepwise():
        model.eval()
        model.prior_spikes(x.shape[0], gen)

    row.update(timed_interleaved({
        "fsvae_posterior_train": posterior_train,
        "fsvae_posterior_eval_prefix": lambda: prefix_posterior(model.eval().posterior, x_e, gen),
        "fsvae_posterior_eval_stepwise": posterior_eval_stepwise,
        "fsvae_sample_prefix": lambda: prefix_generation(model.eval().prior, x.shape[0], args.T, gen, device),
        "fsvae_prior_generate_stepwise": generate_stepwise}, device, args.warmup, args.repeats))
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:i]")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 250 on CUDA, 32 on CPU)")
    ap.add_argument("--T", type=int, default=16, help="time steps (paper: 16)")
    ap.add_argument("--channels", type=int, default=1, help="image channels (1: MNIST shapes, 3: CIFAR-10)")
    ap.add_argument("--latent-dim", type=int, default=128, help="latent size for all models (paper: 128)")
    ap.add_argument("--models", default="esvae,fsvae,ann-vae", help="comma list of registry names")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds per measurement")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds (default 20 CUDA, 5 CPU)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", default=None, help="JSON path (default results/bench_models_<cpu|cuda>.json)")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    args.batch = args.batch or (250 if device.type == "cuda" else 32)
    args.repeats = args.repeats or (20 if device.type == "cuda" else 5)
    x = (torch.rand(args.batch, args.channels, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)
    record = {"benchmark": "bench_models", **commit(), "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
              or platform.machine(), "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
              "batch": args.batch, "T": args.T, "latent_dim": args.latent_dim, "input": f"{args.channels}x32x32",
              "warmup": args.warmup, "models": {}}
    record["loadavg_before"] = os.getloadavg()
    names = args.models.split(",")
    models = {name: build(name, args, device) for name in names}
    calls = {name: model_calls(models[name], x, device) for name in names}
    for name in names:
        record["models"][name] = {"config": models[name].config,
                                  "params": sum(p.numel() for p in models[name].parameters()),
                                  "train_step_peak_bytes": peak_memory(calls[name]["train_step"], device)}
    for kind in ("train_step", "recon_eval", "sample"):
        print(f"{kind} ...", file=sys.stderr, flush=True)
        res = timed_interleaved({name: calls[name][kind] for name in names}, device, args.warmup, args.repeats)
        for name in names:
            record["models"][name][kind] = res[name]
            print(f"  {name}: {res[name]['median_s'] * 1e3:.1f} ms", file=sys.stderr)
    for name in names:
        record["models"][name]["train_images_per_s"] = x.shape[0] / record["models"][name]["train_step"]["median_s"]
    if "fsvae" in models:
        print("fsvae extras ...", file=sys.stderr, flush=True)
        record["models"]["fsvae"].update(fsvae_extras(models["fsvae"], x, args, device))
    record["loadavg_after"] = os.getloadavg()
    m = record["models"]
    for stat in ("median_s", "min_s"):  # min: the least disturbed call, the better estimate under load
        ratios = {}
        for other in ("fsvae", "ann-vae"):
            if "esvae" in m and other in m:
                for key in ("train_step", "recon_eval", "sample"):
                    ratios[f"{other}_over_esvae_{key}"] = m[other][key][stat] / m["esvae"][key][stat]
        if "fsvae" in m:
            f = m["fsvae"]
            ratios["fsvae_posterior_share_of_train_step"] = f["fsvae_posterior_train"][stat] / f["train_step"][stat]
            ratios["fsvae_posterior_eval_prefix_over_stepwise"] = (f["fsvae_posterior_eval_prefix"][stat]
                                                                   / f["fsvae_posterior_eval_stepwise"][stat])
            ratios["fsvae_generation_prefix_over_stepwise"] = (f["fsvae_sample_prefix"][stat]
                                                               / f["fsvae_prior_generate_stepwise"][stat])
        record["ratios" if stat == "median_s" else "ratios_min"] = ratios
    out = Path(args.out or ROOT / "results" / f"bench_models_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, out)
    print(json.dumps({"median": record["ratios"], "min": record["ratios_min"]}, indent=2))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
