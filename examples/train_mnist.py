"""Train ESVAE on MNIST with the Python API, then sample and reconstruct with the trained model.

    python examples/train_mnist.py --data-root DATA                 # the official recipe (300 epochs)
    python examples/train_mnist.py --data-root DATA --max-steps 300 --batch-size 16   # ~minutes on CPU
    python examples/train_mnist.py --data-root DATA --quick         # CPU smoke run, seconds

Everything `sjvae train` does is `spikingjelly_vae.train.fit(TrainConfig(...))`; options left at None come
from the preset of (model, dataset) in spikingjelly_vae/presets.py.
"""
import argparse

from spikingjelly_vae.checkpoint import load_model
from spikingjelly_vae.inference import reconstruct_to_file, sample_to_file
from spikingjelly_vae.train import TrainConfig, fit


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=None, help="folder with MNIST/raw (else env SJVAE_DATA, else ./data)")
    p.add_argument("--out", default=None, help="run folder (default runs/mnist-esvae-<time>)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--batch-size", type=int, default=None, help="default: the preset's 256")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--quick", action="store_true", help="CPU smoke run: 5 steps of 8 images, 32 test images")
    args = p.parse_args(argv)

    config = TrainConfig(dataset="mnist", model="esvae", data_root=args.data_root, out=args.out,
                         device=args.device, batch_size=args.batch_size, max_steps=args.max_steps)
    if args.quick:
        config.batch_size, config.max_steps, config.test_subset, config.grid_images = 8, 5, 32, 16
        config.tensorboard = False
    results = fit(config)
    m = results["metrics"]
    print(f"trained {m['step']} steps: test MSE {m['test_mse']:.4f} on {m['test_images']} test images")

    # use the trained model: the best checkpoint by test loss
    model, ckpt = load_model(results["files"]["best"])
    images = model.eval().sample(16)  # [16, 1, 32, 32] in [-1, 1]
    print(f"sampled {tuple(images.shape)} from the model of epoch {ckpt['epoch']}")
    out = results["out"]
    sample_to_file(results["files"]["best"], 64, f"{out}/samples.png", seed=0, force=True)
    rec = reconstruct_to_file(results["files"]["best"], f"{out}/reconstructions.png", n=32,
                              data_root=args.data_root, force=True)
    print(f"wrote {out}/samples.png and {out}/reconstructions.png (MSE of those 32 images {rec['mse']:.4f})")
    return results


if __name__ == "__main__":
    main()
