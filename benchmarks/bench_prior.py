"""Learned bottleneck vs ex-post GMM vs diffusion rate priors for ESVAE generation: FAD, clean FID, fit
time, sampling speed, grids. ``--floor`` also scores the model's own reconstructions (the test images'
posterior rates through the same Poisson latent and decoder): the FAD no rate prior can beat.

Every prior draws the same number of samples with the same seed; the images go through the metric
modules' functions (not the evaluate CLI). The JSON is rewritten after each prior, so a cut-short run
keeps what it finished.

    PYTHONPATH=$PWD nice -n 19 python benchmarks/bench_prior.py \
        --checkpoint ../shared/checkpoints/esvae_mnist_e20_h200.pt --out results/prior_mnist_e20.json
    PYTHONPATH=$PWD python benchmarks/bench_prior.py --components 10 --covariances full --diffusion logit,rate \
        --floor --rates-cache /tmp/rates.pt --out results/prior_diffusion_mnist_e20.json
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from spikingjelly_vae.atomic import atomic_write_text, sha256_file
from spikingjelly_vae.checkpoint import load_model
from spikingjelly_vae.data import load_dataset
from spikingjelly_vae.functional import rbf_mmd
from spikingjelly_vae.metrics.fad import compute_fad, fad_test_stats, load_fad_model
from spikingjelly_vae.metrics.fid import (compute_fid, fid_reference_stats, inception_features,
                                          load_fid_inception)
from spikingjelly_vae.metrics.sources import tensor_batches
from spikingjelly_vae.prior import (DiffusionPrior, LearnedPrior, RatePrior, default_prior_path, fit_diffusion,
                                    fit_rate_mixture, load_prior, posterior_rates, prior_batches, sample_images)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import provenance  # noqa: E402  (commit, dirty, versions, load average)

BATCH = 128


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="../shared/checkpoints/esvae_mnist_e20_h200.pt")
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--inception", default="../shared/data/inception")
    p.add_argument("--fad-dir", default="../shared/data/esvae_fad")
    p.add_argument("--out", default="results/prior_mnist_e20.json")
    p.add_argument("--grid-dir", default="results/prior_grids")
    p.add_argument("--gmm-dir", default="/tmp/prior_gmms", help="where the fitted GMM files go")
    p.add_argument("--components", default="10,50,1", help="in this order (K=10 is Ghosh et al.'s)")
    p.add_argument("--eps", type=float, default=1e-4, help="rates clamped to [eps, 1 - eps] before the logit")
    p.add_argument("--covariances", default="full,diag")
    p.add_argument("--fit-images", type=int, default=20000, help="first N training images for the fit")
    p.add_argument("--fad-num", type=int, default=1280, help="samples per prior for FAD (batches of 128)")
    p.add_argument("--fid-num", type=int, default=512, help="the first N of them for FID")
    p.add_argument("--ref-num", type=int, default=1000, help="first N test images for the FID reference")
    p.add_argument("--mmd-num", type=int, default=2000, help="test images whose rates are compared by MMD")
    p.add_argument("--diffusion", default="", help="diffusion priors to fit, by space: logit,rate")
    p.add_argument("--diffusion-opts", default="{}", help='JSON of fit_diffusion options, e.g. {"epochs": 40}')
    p.add_argument("--diffusion-variants", default="[]", help='JSON list of sampler settings scored with the '
                   'same fitted denoiser, e.g. [{"eta": 1.0, "sample_steps": 100}]')
    p.add_argument("--floor", action="store_true", help="also score the test images' own posterior rates")
    p.add_argument("--skip-learned", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only-throughput", action="store_true")
    p.add_argument("--rates-cache", default="", help="file for the posterior rates (reused when its "
                   "checkpoint sha256 and image counts match)")
    p.add_argument("--only-rates", action="store_true", help="encode (into --rates-cache) and stop")
    p.add_argument("--eps-sweep", default="", help="e.g. 0.03125,0.01,0.001,0.0001: only rate-level "
                   "statistics of K=10 mixtures per eps (no decoder, no FID/FAD), written to --out")
    return p.parse_args(argv)


def throughput(model, inception, generator) -> dict:
    """Images/s of sampling (batch 128) and of clean-FID features (32 images, after a warm-up)."""
    t0 = time.perf_counter()
    x = sample_images(model, BATCH, prior=LearnedPrior(model), generator=generator)
    t1 = time.perf_counter()
    inception_features([x[:4]], inception, "clean")
    t2 = time.perf_counter()
    inception_features([x[:32]], inception, "clean")
    t3 = time.perf_counter()
    return {"sample_images_per_s": BATCH / (t1 - t0), "fid_features_images_per_s": 32 / (t3 - t2),
            "warmup_s": t2 - t1}


def grid(images, path):
    from torchvision.utils import save_image
    save_image((images[:64] + 1) / 2, path, nrow=8, padding=2)


def score(name, prior, model, ctx, args, rates_test):
    """Samples, FAD, FID, rate MMD and a grid for one prior."""
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(args.seed)
    images = torch.cat(list(prior_batches(model, args.fad_num, BATCH, prior=prior, generator=gen)))
    t1 = time.perf_counter()
    fad = compute_fad(tensor_batches(images, BATCH), ctx["fad"], "reference", reference=ctx["fad_ref"])
    t2 = time.perf_counter()
    fid = compute_fid(tensor_batches(images[:args.fid_num], BATCH), ctx["fid_ref"], ctx["inception"],
                      "clean", num=args.fid_num)
    t3 = time.perf_counter()
    t4 = time.perf_counter()
    rates = prior.sample_rates(len(rates_test), generator=torch.Generator().manual_seed(args.seed + 1))
    rates_s = time.perf_counter() - t4
    png = Path(args.grid_dir) / f"prior_mnist_e20_{name}{f'_seed{args.seed}' if args.seed else ''}.png"
    grid(images, png)
    return {"fad": fad["fad"], "fad_num_images": fad["num_images"], "fid": fid["fid"],
            "fid_num_images": fid["num_images"],
            "mmd_rates_vs_test_posterior": float(rbf_mmd(rates.double(), rates_test.double()).detach()),
            "mean_rate": float(rates.mean()), "frac_rates_below_0.05": float((rates < 0.05).float().mean()),
            "frac_rates_above_0.95": float((rates > 0.95).float().mean()),
            "sample_seconds": t1 - t0, "images_per_s": len(images) / (t1 - t0),
            "prior_rates_per_s": len(rates) / rates_s, "fad_seconds": t2 - t1, "fid_seconds": t3 - t2,
            "grid": str(png), "load_average": list(os.getloadavg())}


class PosteriorRates(RatePrior):
    """The decoder's floor: rows of the fitted training images' posterior rates, drawn at random without
    replacement, so the images are reconstructions (r_p -> Poisson spikes -> decoder) of random training
    images. Drawn at random: the first images of MNIST in order are not a fair sample (the FAD of the
    first 1,280 real test images is 15, of 1,280 random ones 4)."""

    name = "posterior-train"

    def __init__(self, rates):
        self.rates, self.latent_dim = rates, rates.shape[1]

    def sample_rates(self, n, *, generator=None, device=None):
        idx = torch.randperm(len(self.rates), generator=generator)[:n]
        return self.rates[idx].float().to(device or "cpu")


def rate_stats(rates, rates_test, T) -> dict:
    """How close prior rates are to test posterior rates: MMD, and P(no spike) / P(all T spikes) per unit."""
    return {"mmd_vs_test_posterior": float(rbf_mmd(rates.double(), rates_test.double()).detach()),
            "p_no_spike": float(((1 - rates) ** T).mean()), "p_all_spikes": float((rates ** T).mean())}


def eps_sweep(args, model, record):
    """Rate-level statistics of K=10 full/diag mixtures fitted with each eps of --eps-sweep."""
    rates_train, rates_test = _rates(args, model, record)
    gen = lambda: torch.Generator().manual_seed(args.seed + 1)  # noqa: E731
    n, T = len(rates_test), model.T
    floor = rate_stats(rates_train[:n], rates_test, T)
    record["rows"] = [{"prior": "train posterior (noise floor)", **floor},
                      {"prior": "learned", **rate_stats(LearnedPrior(model).sample_rates(n, generator=gen()),
                                                        rates_test, T)}]
    for eps in map(float, args.eps_sweep.split(",")):
        for cov in args.covariances.split(","):
            p = fit_rate_mixture(rates_train, components=10, covariance=cov, seed=args.seed, eps=eps)
            record["rows"].append({"prior": p.name, "eps": eps, "fit_seconds": p.provenance["fit_seconds"],
                                   "iterations": p.provenance["iterations"],
                                   **rate_stats(p.sample_rates(n, generator=gen()), rates_test, T)})
            print(json.dumps(record["rows"][-1]), flush=True)
    write(args.out, record)


def _rates(args, model, record):
    """Posterior rates of the first --fit-images training and --mmd-num test images (cached with
    --rates-cache: the encoding is the slow part on a CPU, and every run of one checkpoint shares it)."""
    cache = Path(args.rates_cache) if args.rates_cache else None
    key = {"checkpoint_sha256": sha256_file(args.checkpoint), "fit_images": args.fit_images,
           "mmd_num": args.mmd_num}
    if cache is not None and cache.is_file():
        saved = torch.load(cache, weights_only=True)
        if saved["key"] == key:
            record["encode_seconds"], record["rates_cache"] = saved["seconds"], str(cache)
            return saved["train"], saved["test"]
    t = time.perf_counter()
    train = load_dataset("mnist", "train", root=args.data_root, augment=False)
    test = load_dataset("mnist", "test", root=args.data_root, augment=False)
    rates_train = posterior_rates(model, train, max_images=args.fit_images)
    rates_test = posterior_rates(model, test, max_images=args.mmd_num).float()
    record["encode_seconds"] = time.perf_counter() - t
    if cache is not None:
        torch.save({"key": key, "seconds": record["encode_seconds"], "train": rates_train,
                    "test": rates_test}, cache)
    return rates_train, rates_test


def fixed_prior(prior, args, model, ctx, rates_test, record):
    """Score a prior that needs no fit (the learned one, the posterior floor)."""
    record["priors"][prior.name] = {**score(prior.name, prior, model, ctx, args, rates_test), "fit_seconds": 0.0}
    write(args.out, record)
    print(prior.name, json.dumps(record["priors"][prior.name]), flush=True)


def real_images(args, ctx) -> dict:
    """FAD and FID of --fad-num random real training images: what the metric gives the data itself."""
    train = load_dataset("mnist", "train", root=args.data_root, augment=False)
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))[:args.fad_num]
    images = torch.stack([train[int(i)][0] for i in idx])
    fad = compute_fad(tensor_batches(images, BATCH), ctx["fad"], "reference", reference=ctx["fad_ref"])
    fid = compute_fid(tensor_batches(images[:args.fid_num], BATCH), ctx["fid_ref"], ctx["inception"], "clean",
                      num=args.fid_num)
    return {"fad": fad["fad"], "fad_num_images": fad["num_images"], "fid": fid["fid"],
            "fid_num_images": fid["num_images"], "images": "random training images (seeded by --seed)"}


def diffusion(space, args, model, ctx, rates_train, rates_test, record):
    """Fit a diffusion prior (``--diffusion-opts``, seed ``--seed``), save it, load it back as the CLI does,
    and score it."""
    opts = json.loads(args.diffusion_opts)
    fitted = fit_diffusion(rates_train, space=space, seed=args.seed, eps=args.eps, checkpoint=args.checkpoint,
                           **opts)
    path = fitted.save(default_prior_path(Path(args.gmm_dir) / Path(args.checkpoint).name, kind="diffusion",
                                          name=fitted.name))
    prior = load_prior(f"diffusion:{path}", model, checkpoint=args.checkpoint)
    res = score(prior.name, prior, model, ctx, args, rates_test)
    res.update(fit_seconds=fitted.provenance["fit_seconds"], file=str(path), config=prior.config,
               provenance=prior.provenance)
    record["priors"][prior.name] = res
    write(args.out, record)
    print(prior.name, json.dumps({k: v for k, v in res.items() if k != "provenance"}), flush=True)
    for variant in json.loads(args.diffusion_variants):
        other = DiffusionPrior({**prior.config, **variant}, prior.net.state_dict(), provenance=prior.provenance)
        name = f"{prior.name}-eta{other.config['eta']:g}-s{other.config['sample_steps']}"
        record["priors"][name] = {**score(name, other, model, ctx, args, rates_test), "config": other.config,
                                  "fit_seconds": fitted.provenance["fit_seconds"], "same_denoiser_as": prior.name}
        write(args.out, record)
        print(name, json.dumps(record["priors"][name]), flush=True)


def write(out, record):
    record["load_average_now"] = list(os.getloadavg())
    atomic_write_text(out, json.dumps(record, indent=2) + "\n")


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, ckpt = load_model(args.checkpoint)
    model.eval()
    inception = load_fid_inception(args.inception)
    record = {"argv": sys.argv[1:], **provenance(), "torch": str(torch.__version__),
              "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": "cpu",
              "load_average_start": list(os.getloadavg()), "checkpoint": str(Path(args.checkpoint).resolve()),
              "checkpoint_sha256": sha256_file(args.checkpoint), "model_config": ckpt["config"],
              "seed": args.seed, "batch": BATCH, "throughput": throughput(model, inception,
                                                                         torch.Generator().manual_seed(99))}
    print(json.dumps(record["throughput"]), flush=True)
    if args.eps_sweep:
        return eps_sweep(args, model, record)
    if args.only_rates:
        _rates(args, model, record)
        return print(json.dumps({"encode_seconds": record["encode_seconds"]}))
    if args.only_throughput:
        return print(json.dumps(record, indent=2))
    t = time.perf_counter()
    fad = load_fad_model("mnist", fad_dir=args.fad_dir)
    ctx = {"inception": inception, "fad": fad, "fad_ref": fad_test_stats(fad, "reference")}
    ctx["fid_ref"] = fid_reference_stats("mnist", "test", inception, "clean", root=args.data_root,
                                         num=args.ref_num)
    record["reference"] = {
        "fad": {**fad.describe(), "protocol": "reference (train-mode BN, batches of 128)",
                "stats": "official mnist_test_64.npz (all 10,000 test images)"},
        "fid": {"split": "test", "images": int(ctx["fid_ref"]["count"]), "mode": "clean",
                "cache": ctx["fid_ref"]["path"], "was_cached": ctx["fid_ref"]["cached"],
                "inception_sha256": inception.sha256},
        "seconds": time.perf_counter() - t}
    record["counts"] = {"fad_samples_per_prior": args.fad_num, "fid_samples_per_prior": args.fid_num,
                        "fid_reference_test_images": int(ctx["fid_ref"]["count"]),
                        "fit_train_images": args.fit_images, "mmd_test_images": args.mmd_num}
    rates_train, rates_test = _rates(args, model, record)
    record["priors"] = {}
    Path(args.grid_dir).mkdir(parents=True, exist_ok=True)
    if not args.skip_learned:
        fixed_prior(LearnedPrior(model), args, model, ctx, rates_test, record)
    for space in filter(None, args.diffusion.split(",")):
        diffusion(space, args, model, ctx, rates_train, rates_test, record)
    for k in map(int, filter(None, args.components.split(","))):
        for cov in args.covariances.split(","):
            fitted = fit_rate_mixture(rates_train, components=k, covariance=cov, seed=args.seed,
                                      eps=args.eps, checkpoint=args.checkpoint)
            path = fitted.save(default_prior_path(Path(args.gmm_dir) / Path(args.checkpoint).name, k, cov))
            prior = load_prior(f"gmm:{path}", model, checkpoint=args.checkpoint)  # the file path, as the CLI
            res = score(prior.name, prior, model, ctx, args, rates_test)
            res.update(fit_seconds=fitted.provenance["fit_seconds"], file=str(path),
                       provenance=prior.provenance)
            record["priors"][prior.name] = res
            write(args.out, record)
            print(prior.name, json.dumps({k2: v for k2, v in res.items() if k2 != "provenance"}), flush=True)
    if args.floor:
        fixed_prior(PosteriorRates(rates_train), args, model, ctx, rates_test, record)
        record["real_train_images"] = real_images(args, ctx)
        write(args.out, record)
        print("real training images", json.dumps(record["real_train_images"]), flush=True)
    record["load_average_end"] = list(os.getloadavg())
    record["wall_seconds"] = time.perf_counter() - start
    write(args.out, record)


if __name__ == "__main__":
    main()
