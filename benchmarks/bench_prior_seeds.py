"""FAD of rate priors over several sample seeds (results/prior_seeds_mnist_e20.json): one fitted prior, the
same 1,280-sample FAD protocol as bench_prior.py, three sample seeds, so a fit is compared with the seed noise.

    PYTHONPATH=$PWD python benchmarks/bench_prior.py --only-rates --fit-images 60000 --rates-cache /tmp/r60k.pt
    RATES=/tmp/r60k.pt ROWS=/tmp/rows.jsonl PYTHONPATH=$PWD python benchmarks/bench_prior_seeds.py \
        '{"posterior": true, "gmm": true, "diffusion": {"seed": 0, "epochs": 20}, "variants": [{}]}'

A spec's "variants" rescore the same denoiser: sampler settings of its config, "temperature" (x_T and the
ancestral noise scaled) or "snap" (rates rounded to multiples of 1/snap). Rows are appended to ROWS."""
import json
import os
import sys
import time

import torch
from spikingjelly_vae.checkpoint import load_model
from spikingjelly_vae.metrics.fad import compute_fad, fad_test_stats, load_fad_model
from spikingjelly_vae.metrics.sources import tensor_batches
from spikingjelly_vae.prior import DiffusionPrior, fit_diffusion, fit_rate_mixture, prior_batches
from spikingjelly_vae.functional import rbf_mmd

torch.set_num_threads(int(os.environ.get("THREADS", "1")))
CK = os.environ.get("CHECKPOINT", "../shared/checkpoints/esvae_mnist_e20_h200.pt")
model, _ = load_model(CK); model.eval()
fad = load_fad_model("mnist", fad_dir=os.environ.get("FAD_DIR", "../shared/data/esvae_fad"))
ref = fad_test_stats(fad, "reference")
saved = torch.load(os.environ["RATES"], weights_only=True)
rtrain, rtest = saved["train"], saved["test"]

def fad_of(prior, seed, n=1280):
    g = torch.Generator().manual_seed(seed)
    imgs = torch.cat(list(prior_batches(model, n, 128, prior=prior, generator=g)))
    return compute_fad(tensor_batches(imgs, 128), fad, "reference", reference=ref)["fad"]

def stats(prior):
    r = prior.sample_rates(2000, generator=torch.Generator().manual_seed(123))
    return {"mmd": float(rbf_mmd(r.double(), rtest.double())), "lo": float((r < .05).float().mean()),
            "hi": float((r > .95).float().mean())}

def report(name, prior, seeds, extra=None):
    t = time.perf_counter()
    f = [fad_of(prior, s) for s in seeds]
    row = {"name": name, "fad": [round(x, 3) for x in f], "mean": round(sum(f) / len(f), 3), **stats(prior),
           "s": round(time.perf_counter() - t, 1), **(extra or {})}
    print(json.dumps(row), flush=True)
    with open(os.environ.get("ROWS", "rows.jsonl"), "a") as fh:
        fh.write(json.dumps(row) + "\n")

if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    seeds = spec.get("seeds", [100, 101, 102])
    if spec.get("posterior"):
        class Post:
            name, latent_dim = "posterior", rtrain.shape[1]
            def sample_rates(self, n, *, generator=None, device=None):
                return rtrain[torch.randperm(len(rtrain), generator=generator)[:n]].float()
        report("posterior-train", Post(), seeds)
    if spec.get("gmm"):
        p = fit_rate_mixture(rtrain, components=10, covariance="full", seed=spec.get("fit_seed", 0))
        report(f"gmm-seed{spec.get('fit_seed', 0)}", p, seeds)
        if spec.get("gmm_snap"):
            base = p.sample_rates
            p.sample_rates = lambda n, *, generator=None, device=None: (torch.round(base(n, generator=generator, device=device) * 16) / 16).clamp(1e-4, 1 - 1e-4)
            report(f"gmm-seed{spec.get('fit_seed', 0)} snap16", p, seeds)
    if "diffusion" in spec:
        opts = spec["diffusion"]
        path = spec.get("save")
        if path and os.path.exists(path):
            p = DiffusionPrior.load(path)
        else:
            p = fit_diffusion(rtrain, **opts)
            if path: p.save(path)
        print("fit", p.provenance.get("fit_seconds"), p.provenance.get("final_loss"), flush=True)
        for v in spec.get("variants", [{}]):
            temp = v.pop("temperature", None)
            snap = v.pop("snap", None)
            q = DiffusionPrior({**p.config, **v}, p.net.state_dict(), provenance=p.provenance)
            if temp is not None:
                orig = torch.randn
                def sample(n, *, generator=None, device=None, q=q, temp=temp):
                    torch.randn = lambda *a, **k: orig(*a, **k) * temp
                    try: return q.to_rates(DiffusionPrior.sample_x0(q, n, generator=generator, device=device))
                    finally: torch.randn = orig
                q.sample_rates = sample
            if snap:
                base = q.sample_rates
                def snapped(n, *, generator=None, device=None, base=base, snap=snap):
                    r = base(n, generator=generator, device=device)
                    return (torch.round(r * snap) / snap).clamp(q.eps, 1 - q.eps)
                q.sample_rates = snapped
            report(f"diff snap={snap} {json.dumps(opts)} {json.dumps(v)} T={temp}", q, seeds,
                   {"fit_s": p.provenance.get("fit_seconds")})
