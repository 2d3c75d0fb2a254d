"""Robustness (Table II, Fig. 5) and encoder-probe (Table III) experiments on trained checkpoints.

    python examples/robustness.py runs/esvae/last.pt [runs/fsvae/last.pt] --data-root DATA

Give several checkpoints of the same dataset to compare them: every model decodes the same permutations
and noise masks (they are drawn from --seed and the batch index only). --quick uses 1,000 test images and
a 20-epoch probe on 10,000 training images, for a first look in minutes on a CPU. The same runs from the
command line: ``sjvae robustness --kind shuffle|flip|gaussian ...`` and ``sjvae classify ...``; see
docs/experiments.md.
"""
import argparse
from pathlib import Path

from spikingjelly_vae.experiments import ProbeOptions, run_classify, run_robustness


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="checkpoint(s) written by `sjvae train` (esvae, fsvae)")
    p.add_argument("--data-root", default=None,
                   help="folder with the datasets (else env SJVAE_DATA, else ./data)")
    p.add_argument("--dataset", default=None, help="dataset name if the checkpoint does not record it")
    p.add_argument("--out-dir", default="results/robustness_example", help="where CSV/JSON/PNG files go")
    p.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0, help="seed of all random draws")
    p.add_argument("--quick", action="store_true",
                   help="1,000 test images, probe on 10,000 images for 20 epochs")
    args = p.parse_args()

    out = Path(args.out_dir)
    num_images = 1000 if args.quick else None
    common = dict(dataset=args.dataset, data_root=args.data_root, seed=args.seed, device=args.device)

    # Table II: decode time-shuffled posterior spikes; MSE vs the original images and vs clean reconstructions
    res = run_robustness(args.checkpoints, "shuffle", out_dir=out, num_images=num_images, **common)
    print("time shuffle (Table II)")
    for label, r in res["models"].items():
        print(f"  {label}: vs original {r['mse_vs_original'][0]:.4f}, "
              f"vs clean recon. {r['mse_vs_clean'][0]:.4f} (clean recon. MSE {r['clean_mse']:.4f})")

    # Fig. 5: latent noise at a = 0.05 .. 0.30, as bit flips and as the Gaussian variant
    for kind in ("flip", "gaussian"):
        res = run_robustness(args.checkpoints, kind, out_dir=out, num_images=num_images, **common)
        print(f"latent noise ({kind})")
        for label, r in res["models"].items():
            curve = ", ".join(f"a={a:g}: {o:.4f}/{c:.4f}"
                              for a, o, c in zip(r["levels"], r["mse_vs_original"], r["mse_vs_clean"]))
            print(f"  {label} (vs original / vs clean): {curve}")

    # Table III: MLP probe on the frozen encoder's posterior firing rates
    probe = ProbeOptions(epochs=20 if args.quick else 200)
    res = run_classify(args.checkpoints, probe, out_dir=out, num_train=10000 if args.quick else None,
                       num_test=num_images, **common)
    print("encoder probe (Table III)")
    for label, r in res["models"].items():
        print(f"  {label}: test accuracy {100 * r['test_acc']:.2f}% on {r['num_test']} images")
    print(f"results and figures in {out}/")


if __name__ == "__main__":
    main()
