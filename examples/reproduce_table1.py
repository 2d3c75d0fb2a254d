"""Reproduce Table I of the ESVAE paper from Python, in pieces that each fit a time budget.

    python examples/reproduce_table1.py --dataset mnist --out results/table1 --budget-minutes 10 \\
        --data-root DATA --fad-dir DATA/esvae_fad \\
        --inception-weights DATA/inception/fid_inception_2015-12-05_pool3_torchscript.pt
    python examples/reproduce_table1.py --dataset mnist --out /tmp/t1 --data-root DATA --quick

Each call continues every model's schedule in <out>/<dataset>/<model>/ (ESVAE 300 epochs, FSVAE and
ANN VAE 150), stops at a step boundary before the budget runs out (keeping the exact state), evaluates a schedule once it is
complete and writes <out>/<dataset>/table1.json and table1.md. Rerun the same command to continue.
`sjvae reproduce` takes the same options. `--quick` is a CPU smoke run on tiny models (not Table I).
"""
import argparse

from spikingjelly_vae.reproduce import REPRODUCE_MODELS, reproduce

QUICK = {"batch_size": 16, "latent_dim": 8, "train_subset": 32, "test_subset": 16, "grid_images": 8,
         "epochs": 2}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=["mnist", "fashion", "cifar10", "celeba"])
    p.add_argument("--models", default=",".join(REPRODUCE_MODELS), help="comma-separated, in training order")
    p.add_argument("--out", required=True, help="results folder (the runs go to OUT/<dataset>/<model>/)")
    p.add_argument("--budget-minutes", type=float, default=None, help="training time of this call")
    p.add_argument("--reevaluate", action="store_true", help="evaluate complete schedules again")
    p.add_argument("--data-root", default=None, help="datasets folder (else env SJVAE_DATA, else ./data)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--fad-dir", default=None, help="official FAD files (stat_checkpoints/, stats/)")
    p.add_argument("--inception-weights", default=None,
                   help="FID TorchScript Inception (else FID unavailable)")
    p.add_argument("--is-weights", default=None,
                   help="torchvision inception_v3 weights (else IS unavailable)")
    p.add_argument("--device", default="auto")
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="tiny models, 2 epochs, MSE only: a smoke run")
    args = p.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    extra = {}
    if args.quick:
        extra = {"preset_overrides": {m: {**QUICK, **({} if m == "ann-vae" else {"T": 4})} for m in models},
                 "eval_options": {"metrics": ("mse",), "mse_num": 32},
                 "robustness_options": {"num_images": 16, "batch_size": 16}, "quick": True}
    return reproduce(dataset=args.dataset, models=models, out=args.out, budget_minutes=args.budget_minutes,
                     reevaluate=args.reevaluate, data_root=args.data_root, cache_dir=args.cache_dir,
                     fad_dir=args.fad_dir, inception_weights=args.inception_weights,
                     is_weights=args.is_weights,
                     device=args.device, num_workers=args.num_workers, **extra)


if __name__ == "__main__":
    main()
