"""Metric speed (FID in clean and fast modes) and the sanity numbers of docs/metrics.md, as JSON.

timing: seconds to compute the FID of `--num` random 32x32 RGB images in [-1, 1] against fixed
reference statistics, per device (cpu, and cuda when present) and resize mode; split into feature
extraction (resize + Inception), the resize alone, and the Frechet distance (scipy sqrtm). One
warm-up batch is run first and not counted (TorchScript's first calls are slow).

sanity (`--sanity`): FAD of real test images against the official stats (whole split in order at
batch 256 = the stats maker's protocol; random 5,120 in batches of 128 = the sampling protocol; the
first 5,120 in order), FAD of uniform noise, FID of MNIST train vs test and of noise vs test.

    python benchmarks/bench_metrics.py --data-root ../shared/data            # timing, 5,000 images
    python benchmarks/bench_metrics.py --skip-timing --sanity --sanity-num 1000 --data-root ../shared/data
"""
import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spikingjelly_vae.metrics.fid import (clean_resize, fast_resize, inception_features,  # noqa: E402
                                          load_fid_inception, to_pixels)
from spikingjelly_vae.metrics.frechet import frechet_distance, gaussian_stats  # noqa: E402
from spikingjelly_vae.metrics.sources import tensor_batches  # noqa: E402


def timing(args, device):
    inception = load_fid_inception(args.inception_weights, device)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.num, 3, 32, 32, generator=g) * 2 - 1
    ref_mu, ref_sigma = np.zeros(2048), np.eye(2048)
    out = []
    for mode in args.modes:
        inception_features([images[:args.chunk]], inception, mode, device=device, chunk=args.chunk)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        feats = inception_features(tensor_batches(images, args.batch), inception, mode, num=args.num,
                                   device=device, chunk=args.chunk)
        t1 = time.perf_counter()
        mu, sigma = gaussian_stats(feats)
        fid = frechet_distance(mu, sigma, ref_mu, ref_sigma)
        t2 = time.perf_counter()
        tr = time.perf_counter()
        for b in tensor_batches(images, args.batch):
            p = to_pixels(b)
            if mode == "clean":
                clean_resize(p)
            else:
                fast_resize(p.to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        resize_s = time.perf_counter() - tr
        row = {"device": str(device), "mode": mode, "num_images": int(len(feats)),
               "seconds_total": t2 - t0, "seconds_features": t1 - t0, "seconds_resize_only": resize_s,
               "seconds_frechet": t2 - t1, "images_per_second_features": len(feats) / (t1 - t0),
               "fid_vs_standard_normal": fid}
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def sanity(args):
    from spikingjelly_vae.data import load_dataset
    from spikingjelly_vae.metrics.fad import compute_fad, load_fad_model
    from spikingjelly_vae.metrics.sources import collect, dataset_batches
    res = {"fad": {}, "fid": {}}
    for ds in ("mnist", "fashion") if "fad" in args.sanity_parts else ():
        fad = load_fad_model(ds, args.fad_dir)
        x = collect(dataset_batches(load_dataset(ds, "test", root=args.data_root), 1000))
        idx = [torch.randperm(len(x), generator=torch.Generator().manual_seed(s))[:5120] for s in range(3)]
        noise = torch.rand(5120, 1, 32, 32, generator=torch.Generator().manual_seed(100)) * 2 - 1
        res["fad"][ds] = {
            "test_all_in_order_batch256": compute_fad(tensor_batches(x, 256), fad)["fad"],
            "test_random5120_batch128_seeds0-2": [compute_fad(tensor_batches(x[i], 128), fad)["fad"] for i in idx],
            "test_first5120_in_order_batch128": compute_fad(tensor_batches(x[:5120], 128), fad)["fad"],
            "test_last5120_in_order_batch128": compute_fad(tensor_batches(x[-5120:], 128), fad)["fad"],
            "test_random1024_batch128_seed0": compute_fad(tensor_batches(x[idx[0][:1024]], 128), fad)["fad"],
            "test_random512_batch128_seed0": compute_fad(tensor_batches(x[idx[0][:512]], 128), fad)["fad"],
            "uniform_noise5120_batch128": compute_fad(tensor_batches(noise, 128), fad)["fad"],
        }
        print(ds, json.dumps(res["fad"][ds]), flush=True)
    if "fid" not in args.sanity_parts:
        return res
    n = args.sanity_num
    inception = load_fid_inception(args.inception_weights, "cpu")
    g = torch.Generator().manual_seed(0)
    sets = {}
    for split in ("train", "test"):
        d = load_dataset("mnist", split, root=args.data_root)
        idx = torch.randperm(len(d), generator=g)[:n].tolist()
        sets[split] = collect(dataset_batches(torch.utils.data.Subset(d, idx), 500))
    sets["noise"] = torch.rand(n, 1, 32, 32, generator=g) * 2 - 1
    for mode in args.modes:
        t = time.time()
        f = {k: inception_features(tensor_batches(v, 100), inception, mode) for k, v in sets.items()}
        ref = gaussian_stats(f["test"])
        res["fid"][mode] = {"num_per_set": n, "sets": "random MNIST train / test subsets (seed 0), uniform noise",
                            "train_vs_test": frechet_distance(*gaussian_stats(f["train"]), *ref),
                            "noise_vs_test": frechet_distance(*gaussian_stats(f["noise"]), *ref),
                            "seconds": time.time() - t}
        print(mode, json.dumps(res["fid"][mode]), flush=True)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num", type=int, default=5000, help="images for the timing (default 5000)")
    ap.add_argument("--batch", type=int, default=128, help="generator batch (the reference's 128)")
    ap.add_argument("--chunk", type=int, default=64, help="Inception batch")
    ap.add_argument("--modes", default="clean,fast", help="resize modes to time")
    ap.add_argument("--devices", default=None, help="comma list (default: cpu, plus cuda when present)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--inception-weights", default=os.environ.get("SJVAE_INCEPTION"),
                    help="FID Inception TorchScript (or env SJVAE_INCEPTION)")
    ap.add_argument("--data-root", default=os.environ.get("SJVAE_DATA"), help="datasets (sanity part)")
    ap.add_argument("--fad-dir", default=None, help="official FAD folder (default <data-root>/esvae_fad)")
    ap.add_argument("--skip-timing", action="store_true", help="no timing part")
    ap.add_argument("--sanity", action="store_true", help="also measure the sanity numbers")
    ap.add_argument("--sanity-num", type=int, default=1000, help="images per set for the FID sanity part")
    ap.add_argument("--sanity-parts", default="fad,fid", help="which sanity parts: fad, fid or both")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench_metrics.json"), help="JSON output")
    args = ap.parse_args()
    args.modes = [m for m in args.modes.split(",") if m]
    if args.inception_weights is None and args.data_root:
        args.inception_weights = str(Path(args.data_root) / "inception")
    args.fad_dir = args.fad_dir or (str(Path(args.data_root) / "esvae_fad") if args.data_root else None)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    res = {"argv": sys.argv[1:], "python": platform.python_version(), "torch": torch.__version__,
           "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(),
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "load_average_start": os.getloadavg()}
    if not args.skip_timing:
        res["timing"] = [row for d in devices for row in timing(args, torch.device(d))]
    if args.sanity:
        res["sanity"] = sanity(args)
    res["load_average_end"] = os.getloadavg()
    from spikingjelly_vae.atomic import write_json
    print(f"wrote {write_json(args.out, res)}")


if __name__ == "__main__":
    main()
