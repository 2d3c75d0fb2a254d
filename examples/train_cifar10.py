"""Train ESVAE on CIFAR-10 with the Python API (the official recipe: batch 256, lr 0.0006144, L 128, T 16).

    python examples/train_cifar10.py --data-root DATA               # 300 epochs; use a GPU
    torchrun --nproc_per_node 2 examples/train_cifar10.py --data-root ...     # DDP, one process per GPU
    python examples/train_cifar10.py --data-root DATA --quick       # CPU smoke run, seconds

The data root may hold torchvision's `cifar-10-batches-py/`, an image-folder tree, or the
`CIFAR-10-images.tar.gz` archive (also inside a `cifar10_jpeg_q75/` folder; JPEG quality 75 re-encodings give
numbers close to but not equal to the paper's); the archive is extracted once into the cache folder
(`--cache-dir`, env SJVAE_CACHE, default ~/.cache/spikingjelly_vae), never into the data root.
"""
import argparse

from spikingjelly_vae.train import TrainConfig, fit


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=None, help="datasets folder (else env SJVAE_DATA, else ./data)")
    p.add_argument("--cache-dir", default=None, help="where the JPEG archive is extracted")
    p.add_argument("--out", default=None, help="run folder (default runs/cifar10-esvae-<time>)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--epochs", type=int, default=None, help="default: the preset's 300")
    p.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"], help="mixed precision (CUDA)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--quick", action="store_true", help="CPU smoke run: 3 steps of 8 images, 32 test images")
    args = p.parse_args(argv)

    config = TrainConfig(dataset="cifar10", model="esvae", data_root=args.data_root, cache_dir=args.cache_dir,
                         out=args.out, device=args.device, epochs=args.epochs, amp=args.amp, resume=args.resume)
    if args.quick:
        config.batch_size, config.max_steps, config.test_subset, config.grid_images = 8, 3, 32, 16
        config.tensorboard = False
    results = fit(config)
    m = results["metrics"]
    print(f"epoch {m['epoch']}, step {m['step']}: test MSE {m['test_mse']:.4f} on {m['test_images']} test images; "
          f"{m['images_per_s']:.0f} train images/s on {results['device']} x {results['world_size']}")
    print(f"run folder {results['out']} (last.pt, best.pt, log.csv, images/)")
    return results


if __name__ == "__main__":
    main()
