"""The `sjvae` command line (click). Each command is a thin layer over the Python API."""
import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="spikingjelly-vae")
def main():
    """Spiking variational autoencoders (ESVAE, FSVAE, ANN VAE) on SpikingJelly."""


# --- training and using a model: `train`, `sample`, `reconstruct`, `info` (logic in spikingjelly_vae.train) ---
_DEVICE_HELP = "auto (CUDA when available, else CPU), cpu, cuda or cuda:N."


def _model_opts(ctx, param, values):
    """--model-opt KEY=VALUE -> dict, VALUE parsed as int, float, true/false, or kept as text."""
    opts = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}")
        low = raw.strip().lower()
        if low in ("true", "false"):
            value = low == "true"
        else:
            try:
                value = int(raw)
            except ValueError:
                try:
                    value = float(raw)
                except ValueError:
                    value = raw
        opts[key.strip()] = value
    return opts


@main.command("train")
@click.option("--dataset", default="mnist", show_default=True, help="mnist, fashion, cifar10 or celeba.")
@click.option("--model", default="esvae", show_default=True, help="esvae, fsvae or ann-vae.")
@click.option("--data-root", default=None, help="Folder holding the datasets (else env SJVAE_DATA, else ./data).")
@click.option("--cache-dir", default=None,
              help="Cache for extracted archives (else env SJVAE_CACHE, else ~/.cache/spikingjelly_vae).")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Run folder (default runs/<dataset>-<model>-<timestamp>). A folder holding a run is never "
                   "overwritten without --resume or --force.")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out from its last.pt (same optimizer state, next epoch); options not "
                   "given again are taken from the run's train_config.json.")
@click.option("--force", is_flag=True, help="Start over in an --out that holds a run, replacing its run files.")
@click.option("--epochs", type=click.IntRange(1), default=None, help="Epochs [preset: 300].")
@click.option("--max-steps", type=click.IntRange(1), default=None,
              help="Stop after this many optimizer steps in total (a short run); the epoch in progress is then "
                   "evaluated and checkpointed.")
@click.option("--batch-size", type=click.IntRange(1), default=None,
              help="Batch per process [preset: 256, CelebA 64]; under torchrun the global batch is "
                   "processes x this.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=None,
              help="Learning rate actually used [preset: the official lr x batch/250, e.g. MNIST 0.003072].")
@click.option("--bottleneck-lr-mult", type=click.FloatRange(0, min_open=True), default=None,
              help="ESVAE: learning rate of the bottleneck (prior) layer as a multiple of --lr [preset: 10].")
@click.option("--weight-decay", type=click.FloatRange(0), default=None, help="AdamW weight decay [preset: 0.001].")
@click.option("--latent-dim", type=click.IntRange(1), default=None,
              help="Latent size L [preset: 32 MNIST/Fashion-MNIST, 128 CIFAR-10/CelebA].")
@click.option("--T", "T", type=click.IntRange(1), default=None, help="Time steps [preset: 16].")
@click.option("--lambda", "mmd_lambda", type=click.FloatRange(0), default=None,
              help="ESVAE: weight of the MMD term in the loss [preset: 0.001].")
@click.option("--model-opt", "model_opts", multiple=True, callback=_model_opts, metavar="KEY=VALUE",
              help="Other model-builder option, e.g. backend=torch or half_width=0.5; repeatable.")
@click.option("--drop-last/--keep-last", default=None,
              help="Drop the last incomplete training batch [preset: official, on for Fashion-MNIST, CIFAR-10].")
@click.option("--test-batch-size", type=click.IntRange(1), default=None, help="Test batch [2 x --batch-size].")
@click.option("--train-subset", type=click.IntRange(1), default=None,
              help="Train on a fixed random subset of this many images (chosen by --seed).")
@click.option("--test-subset", type=click.IntRange(1), default=None,
              help="Evaluate on the first this many test images (default: the whole test set).")
@click.option("--grid-every", type=click.IntRange(0), default=1, show_default=True,
              help="Write reconstruction and sample PNG grids every N epochs and after the last (0: last only).")
@click.option("--grid-images", type=click.IntRange(1), default=64, show_default=True, help="Images per grid.")
@click.option("--keep-every", type=click.IntRange(0), default=0, show_default=True,
              help="Also keep <out>/checkpoints/epochNNNN.pt every N epochs, for `sjvae analyze --history` "
                   "(0: only last.pt and best.pt).")
@click.option("--seed", type=int, default=42, show_default=True,
              help="Seed of initialisation, shuffling, augmentation and latent sampling (re-derived per epoch).")
@click.option("--device", default="auto", show_default=True, help=_DEVICE_HELP)
@click.option("--amp", type=click.Choice(["off", "bf16", "fp16"]), default="off", show_default=True,
              help="Mixed precision on CUDA (fp16 uses a gradient scaler).")
@click.option("--num-workers", type=click.IntRange(0), default=None,
              help="DataLoader worker processes [0 on CPU, 4 on CUDA].")
@click.option("--progress/--no-progress", default=True, show_default=True, help="tqdm progress bars.")
@click.option("--tensorboard/--no-tensorboard", default=True, show_default=True,
              help="Also log to <out>/tb when TensorBoard is installed.")
@click.option("--find-unused-parameters", is_flag=True,
              help="DDP: allow parameters that get no gradient in a step.")
@click.pass_context
def train_cmd(ctx, **opts):
    """Train a model (one process, or DDP under torchrun), writing checkpoints, log.csv and PNG grids.

    Values not given come from the preset of (model, dataset) (the official configs; see
    docs/training.md). Multi-GPU: torchrun --nproc_per_node 4 -m spikingjelly_vae.cli train ...
    """
    import json
    import os
    from pathlib import Path

    from click.core import ParameterSource

    from .train import TrainConfig, fit
    given = {k for k in opts if ctx.get_parameter_source(k) is not ParameterSource.DEFAULT}
    model_kwargs = dict(opts.pop("model_opts"))
    mmd_lambda = opts.pop("mmd_lambda")
    if mmd_lambda is not None:
        model_kwargs["mmd_lambda"] = mmd_lambda
    opts["model_kwargs"] = model_kwargs
    try:
        if opts["resume"]:  # the run's own options, with those given again on this command line on top
            saved = Path(opts["out"] or ".") / "train_config.json"
            if opts["out"] is None or not saved.is_file():
                raise ValueError(f"--resume needs --out <run folder> holding train_config.json and last.pt "
                                 f"({saved} not found)")
            base = json.loads(saved.read_text())["train_config"]
            again = {k: v for k, v in opts.items() if k in given}
            again["model_kwargs"] = {**base.get("model_kwargs", {}), **model_kwargs}
            opts = {**base, **again, "resume": True, "force": False}
        res = fit(TrainConfig.from_dict(opts))
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    m = res["metrics"]
    if m:
        click.echo(f"epoch {m['epoch']}, step {m['step']}: test MSE {m['test_mse']:.5f} over {m['test_images']} "
                   f"test images, test loss {m['test_loss']:.5f}, train {m['images_per_s']:.1f} images/s")
    click.echo(f"run folder {res['out']}: last.pt, best.pt, log.csv, images/")


@main.command("sample")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Model checkpoint written by `sjvae train` (last.pt or best.pt).")
@click.option("-n", "--num", "n", type=click.IntRange(1), default=64, show_default=True, help="Images to generate.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Output: .png for a grid, .pt for the tensor [n, C, H, W] in [-1, 1].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sampling generator.")
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True, help="Images per model call.")
@click.option("--nrow", type=click.IntRange(1), default=8, show_default=True, help="Images per grid row (.png).")
@click.option("--device", default="auto", show_default=True, help=_DEVICE_HELP)
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
def sample_cmd(checkpoint, n, out, seed, batch_size, nrow, device, force):
    """Generate n images from the prior of a trained model."""
    from .train import sample_to_file
    try:
        res = sample_to_file(checkpoint, n, out, seed, device, batch_size, nrow, force)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    click.echo(f"wrote {res['out']} ({res['n']} images of shape {res['shape'][1:]}, seed {seed})")


@main.command("reconstruct")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Model checkpoint written by `sjvae train`.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="PNG: rows of originals, each above its row of reconstructions.")
@click.option("-n", "--num", "n", type=click.IntRange(1), default=32, show_default=True,
              help="Use the first n images of the split.")
@click.option("--dataset", default=None, help="Dataset (default: the one in the checkpoint).")
@click.option("--split", default="test", show_default=True, help="train or test (CelebA also valid, all).")
@click.option("--data-root", default=None, help="Folder holding the datasets (else env SJVAE_DATA, else ./data).")
@click.option("--cache-dir", default=None, help="Cache folder (else env SJVAE_CACHE).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the posterior sampling.")
@click.option("--nrow", type=click.IntRange(1), default=8, show_default=True, help="Images per row.")
@click.option("--device", default="auto", show_default=True, help=_DEVICE_HELP)
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
def reconstruct_cmd(checkpoint, out, n, dataset, split, data_root, cache_dir, seed, nrow, device, force):
    """Grid of dataset images and their reconstructions; prints their MSE."""
    from .train import reconstruct_to_file
    try:
        res = reconstruct_to_file(checkpoint, out, n, dataset, data_root, cache_dir, split, seed, device, nrow, force)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    click.echo(f"wrote {res['out']}: {res['n']} {res['dataset']} {res['split']} images, MSE {res['mse']:.5f}")


@main.command("info")
@click.option("--checkpoint", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Summarise the model of this checkpoint (else build one from --model/--dataset).")
@click.option("--model", default="esvae", show_default=True, help="Model to build when no --checkpoint: "
              "esvae, fsvae or ann-vae.")
@click.option("--dataset", default="mnist", show_default=True, help="Dataset shapes and preset when no --checkpoint.")
@click.option("--latent-dim", type=click.IntRange(1), default=None, help="Latent size [preset].")
@click.option("--T", "T", type=click.IntRange(1), default=None, help="Time steps [preset].")
@click.option("--device", default="auto", show_default=True, help=_DEVICE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info_cmd(checkpoint, model, dataset, latent_dim, T, device, as_json):
    """Model summary: parameters, layers, latent size, T, device and kernel backend."""
    import json

    from .train import TrainConfig, build_from_config, model_summary, resolve_device
    try:
        dev = resolve_device(device)
        ckpt = None
        if checkpoint:
            from .checkpoint import load_model
            net, ckpt = load_model(checkpoint, map_location=dev)
        else:
            _, net = build_from_config(TrainConfig(dataset=dataset, model=model, latent_dim=latent_dim, T=T).resolved())
        res = model_summary(net.to(dev), dev, ckpt)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if as_json:
        click.echo(json.dumps(res, indent=2, default=str))
        return
    click.echo(f"model {res['model']} ({res['class']}): {res['parameters']:,} parameters "
               f"({res['trainable_parameters']:,} trainable)")
    click.echo(f"images {'x'.join(str(v) for v in res['image_shape'])}, latent {res['latent_dim']}, T {res['T']}")
    click.echo(f"device {res['device']}, kernel backend {res['kernel_backend']['on_this_device']} "
               f"(requested {res['kernel_backend']['requested']})")
    click.echo("blocks: " + ", ".join(f"{k} {v:,}" for k, v in res["blocks"].items()))
    click.echo("layers: " + ", ".join(f"{k} x{v}" for k, v in res["layers"].items()))
    if ckpt is not None:
        c = res["checkpoint"]
        click.echo(f"checkpoint: epoch {c['epoch']}, step {c['step']}, dataset {c['dataset']}, "
                   f"test MSE {(c['metrics'] or {}).get('test_mse', 'n/a')}")


# --- metrics: `evaluate` and the `fad-ae` group (logic in spikingjelly_vae.metrics) ---------------
_DATASETS = ["mnist", "fashion", "cifar10", "celeba"]


@main.command("evaluate")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Model checkpoint written by `sjvae train`.")
@click.option("--metrics", default="mse,fid,is,fad", show_default=True,
              help="Comma-separated subset of mse, fid, is, fad.")
@click.option("--dataset", type=click.Choice(_DATASETS), default=None,
              help="Dataset the model was trained on (default: read from the checkpoint).")
@click.option("--data-root", default=None, help="Folder holding the datasets (else env SJVAE_DATA, else ./data).")
@click.option("--protocol", type=click.Choice(["reference", "standard"]), default="reference", show_default=True,
              help="reference: as the paper's numbers were computed (IS on unnormalised input, FAD with "
                   "train-mode BN); standard: normalised IS input, eval-mode FAD. See docs/metrics.md.")
@click.option("--fid-mode", type=click.Choice(["clean", "fast"]), default="clean", show_default=True,
              help="Resize to 299: clean = PIL bicubic per channel on the CPU (clean-fid, the reference); "
                   "fast = bilinear on the tensor's device.")
@click.option("--inception-weights", default=None,
              help="FID Inception TorchScript file (or its folder); else env SJVAE_INCEPTION. Never downloaded.")
@click.option("--is-weights", default=None,
              help="torchvision ImageNet inception_v3 weights (inception_v3_google-0cc3c7bd.pth) for IS; "
                   "else env SJVAE_IS_WEIGHTS. Without them IS is reported as unavailable.")
@click.option("--fad-dir", default=None,
              help="Folder with the official FAD stat_checkpoints/ and stats/; else env SJVAE_FAD.")
@click.option("--fad-checkpoint", default=None, type=click.Path(exists=True, dir_okay=False),
              help="A feature AE from `sjvae fad-ae train` to use instead (its FAD is not the paper's).")
@click.option("--cache-dir", default=None,
              help="Cache for reference statistics and our AEs (else env SJVAE_CACHE, else ~/.cache/spikingjelly_vae).")
@click.option("--num-samples", default=5000, show_default=True, type=click.IntRange(2),
              help="Generated images for FID (FAD takes all ceil(n/128)*128 drawn).")
@click.option("--sample-batch", default=128, show_default=True, type=click.IntRange(2),
              help="Sampling batch for FID/FAD (the reference's 128; FAD's BN sees these batches).")
@click.option("--is-batch", default=256, show_default=True, type=click.IntRange(1), help="IS sampling batch.")
@click.option("--is-batches", default=10, show_default=True, type=click.IntRange(1),
              help="IS batches (reference protocol: one split per batch).")
@click.option("--mse-batch", default=None, type=click.IntRange(1),
              help="Test batch for MSE (default: ESVAE's, 2 x training batch: 512, CelebA 128; FSVAE's "
                   "reference used its training batch, 250 / 64).")
@click.option("--mse-num", default=None, type=click.IntRange(1), help="Use only the first N test images for MSE.")
@click.option("--fid-ref-num", default=None, type=click.IntRange(2),
              help="FID reference statistics from the first N images of the split only (default: all).")
@click.option("--seed", default=0, show_default=True, help="Seed of the sampling generators.")
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@click.option("--output", default=None, type=click.Path(dir_okay=False),
              help="JSON file for all numbers (default: <checkpoint>.eval-<protocol>.json beside it).")
def evaluate_cmd(checkpoint, metrics, dataset, data_root, protocol, fid_mode, inception_weights, is_weights,
                 fad_dir, fad_checkpoint, cache_dir, num_samples, sample_batch, is_batch, is_batches, mse_batch,
                 mse_num, fid_ref_num, seed, device, output):
    """Compute MSE, FID, IS and FAD of a checkpoint; print a table and write JSON."""
    from pathlib import Path

    from .metrics.evaluate import evaluate_checkpoint, format_table, write_json
    names = tuple(m.strip().lower() for m in metrics.split(",") if m.strip())
    try:
        res = evaluate_checkpoint(checkpoint, names, dataset, data_root, protocol, fid_mode, inception_weights,
                                  is_weights, fad_dir, fad_checkpoint, cache_dir, num_samples, sample_batch,
                                  is_batch, is_batches, mse_batch, mse_num, fid_ref_num, seed, device, progress=True,
                                  log=lambda msg: click.echo(msg, err=True))
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    out = Path(output) if output else Path(checkpoint).with_name(Path(checkpoint).name + f".eval-{protocol}.json")
    click.echo(format_table(res))
    click.echo(f"wrote {write_json(res, out)}")


@main.group("fad-ae")
def fad_ae():
    """The FAD feature autoencoder (train one where the official one is missing)."""


@fad_ae.command("train")
@click.option("--dataset", type=click.Choice(_DATASETS), required=True, help="Dataset to train the AE on.")
@click.option("--data-root", default=None, help="Folder holding the datasets (else env SJVAE_DATA, else ./data).")
@click.option("--cache-dir", default=None,
              help="Default output is <cache>/fad_ae/ (else env SJVAE_CACHE, else ~/.cache/spikingjelly_vae).")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Output folder instead of the cache.")
@click.option("--epochs", default=150, show_default=True, type=click.IntRange(1), help="Epochs (official 150).")
@click.option("--batch-size", default=250, show_default=True, type=click.IntRange(2), help="Batch (official 250).")
@click.option("--lr", default=1e-3, show_default=True, type=float, help="AdamW learning rate (official 1e-3).")
@click.option("--latent-dim", default=None, type=click.IntRange(1),
              help="Latent size (default: official, 64 MNIST/Fashion-MNIST, 128 CIFAR-10/CelebA).")
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@click.option("--seed", default=0, show_default=True, help="Seed for initialisation and shuffling.")
@click.option("--limit", default=None, type=click.IntRange(2), help="Use only the first N train and test images.")
@click.option("--overwrite", is_flag=True, help="Replace files of an earlier run in the output folder.")
def fad_ae_train(dataset, data_root, cache_dir, out, epochs, batch_size, lr, latent_dim, device, seed, limit,
                 overwrite):
    """Train a FAD feature AE by the official recipe and write its test statistics."""
    import torch

    from .metrics.feature_ae import train_feature_ae
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        meta = train_feature_ae(dataset, data_root, out, cache_dir, epochs, batch_size, lr, latent_dim, device,
                                seed, limit, overwrite, log=lambda msg: click.echo(msg, err=True))
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    click.echo(f"checkpoint {meta['checkpoint']} (best epoch {meta['best_epoch'] + 1}, "
               f"test MSE {meta['best_test_loss']:.5f})")
    click.echo(f"test statistics {meta['stats']}")
    click.echo("NOTE: FAD measured with this autoencoder is ours, NOT comparable with the paper's Table I "
               "(the paper used its own AE; see docs/metrics.md).")


# --- baselines: `compare` (logic in spikingjelly_vae.compare) ------------------------------------
@main.command("compare")
@click.argument("paths", nargs=-1, type=click.Path(exists=True))
@click.option("--protocol", type=click.Choice(["reference", "standard"]), default="reference", show_default=True,
              help="Which `sjvae evaluate` result to read: <checkpoint>.eval-<protocol>.json.")
@click.option("--which", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="Checkpoint of a run folder: best.pt (lowest test loss) or last.pt.")
@click.option("--evaluate", "run_evaluate", is_flag=True,
              help="Run `sjvae evaluate` (all metrics, default settings) on checkpoints that have no result yet "
                   "and write it beside them; slow (5,000 samples and Inception passes per model).")
@click.option("--all-published", is_flag=True, help="Also show the paper's SWGAN, SGAD and TAID rows.")
@click.option("--format", "fmt", type=click.Choice(["text", "markdown", "csv"]), default="text", show_default=True,
              help="Table format printed.")
@click.option("--output", default=None, type=click.Path(dir_okay=False),
              help="Also write every row (values, source, notes) to this JSON file.")
@click.option("--data-root", default=None, help="With --evaluate: folder holding the datasets.")
@click.option("--inception-weights", default=None, help="With --evaluate: FID Inception TorchScript file.")
@click.option("--is-weights", default=None, help="With --evaluate: torchvision inception_v3 weights for IS.")
@click.option("--fad-dir", default=None, help="With --evaluate: folder with the official FAD files.")
@click.option("--device", default=None, help="With --evaluate: cpu or cuda (default: cuda when available).")
def compare_cmd(paths, protocol, which, run_evaluate, all_published, fmt, output, data_root, inception_weights,
                is_weights, fad_dir, device):
    """Table I: published numbers beside ours, from evaluate JSONs, checkpoints or run folders (PATHS).

    Every cell is marked P (published) or M (measured). Without PATHS, prints the paper's table.
    """
    from .compare import compare
    kwargs = {}
    if run_evaluate:
        kwargs = dict(data_root=data_root, inception_weights=inception_weights, is_weights=is_weights,
                      fad_dir=fad_dir, device=device, log=lambda msg: click.echo(msg, err=True))
    try:
        res = compare(paths, protocol, which, run_evaluate, all_published, fmt, output, **kwargs)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    click.echo(res["table"], nl=False)
    if res["output"]:
        click.echo(f"wrote {res['output']}")


# --- experiments: `robustness`, `classify`, `analyze` (logic in spikingjelly_vae.experiments) -------
def _experiment_common(f):
    """Options shared by the experiment commands."""
    options = [
        click.option("--dataset", type=click.Choice(["mnist", "fashion", "cifar10", "celeba"]), default=None,
                     help="Dataset the model(s) were trained on (default: read from the checkpoint)."),
        click.option("--data-root", default=None,
                     help="Folder holding the datasets (else env SJVAE_DATA, else ./data)."),
        click.option("--seed", default=0, show_default=True, type=int,
                     help="Seed of every random draw (posterior sampling, permutations, masks, probe init)."),
        click.option("--device", default=None, help="cpu or cuda (default: cuda when available)."),
        click.option("--out-dir", default=None, type=click.Path(file_okay=False),
                     help="Folder for the CSV/JSON/PNG results (default: results/<command>)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _levels(ctx, param, value):
    if value is None:
        return None
    try:
        levels = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers like 0.05,0.1,0.2, got {value!r}") \
            from None
    if not levels or any(not 0.0 <= a <= 1.0 for a in levels):
        raise click.BadParameter(f"levels must be probabilities in [0, 1], got {value!r}")
    return levels


@main.command("robustness")
@click.option("--checkpoint", "checkpoints", required=True, multiple=True,
              type=click.Path(exists=True, dir_okay=False),
              help="Spiking model checkpoint (esvae, fsvae); repeat to compare models on identical draws.")
@click.option("--label", "labels", multiple=True, help="Plot label per --checkpoint (default: model:file).")
@click.option("--kind", type=click.Choice(["shuffle", "flip", "gaussian"]), required=True,
              help="shuffle: permute each latent neuron's T spikes independently per image (Table II); "
                   "flip: flip each latent spike bit with probability a; gaussian: add N(0,1) to a fraction "
                   "a of the bits and re-binarise at 0.5 (Fig. 5).")
@click.option("--levels", default=None, callback=_levels,
              help="Comma-separated noise levels a for flip/gaussian [default: 0.05,0.1,0.15,0.2,0.25,0.3]; "
                   "not used by shuffle.")
@click.option("--num-images", default=None, type=click.IntRange(1),
              help="Use the first N test images (default: the whole test set).")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(1),
              help="Test batch; the draws depend on (seed, batch index, shape), so keep it equal across runs "
                   "you compare.")
@click.option("--num-examples", default=8, show_default=True, type=click.IntRange(1),
              help="Images shown in the example grid.")
@_experiment_common
def robustness_cmd(checkpoints, labels, kind, levels, num_images, batch_size, num_examples, dataset,
                   data_root, seed, device, out_dir):
    """Decode perturbed posterior latent spikes; MSE vs original and vs clean recon. (Table II, Fig. 5)."""
    from .experiments.robustness import DEFAULT_LEVELS, run_robustness

    if kind == "shuffle" and levels is not None:
        raise click.UsageError("--levels applies to --kind flip/gaussian only; the time shuffle has no level")
    out_dir = out_dir or "results/robustness"
    try:
        res = run_robustness(checkpoints, kind, levels or DEFAULT_LEVELS, out_dir, dataset, data_root,
                             num_images, batch_size, seed, device, labels or None, num_examples,
                             progress=True)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    for label, r in res["models"].items():
        for level, mo, mc in zip(r["levels"], r["mse_vs_original"], r["mse_vs_clean"]):
            name = "shuffle" if level is None else f"a={level:g}"
            click.echo(f"{label:>24s} {name:>8s}  MSE vs original {mo:.5f}  vs clean recon. {mc:.5f}")
    click.echo(f"wrote {out_dir}/robustness_{kind}.{{csv,json,png}}")


@main.command("classify")
@click.option("--checkpoint", "checkpoints", required=True, multiple=True,
              type=click.Path(exists=True, dir_okay=False),
              help="Model checkpoint (esvae, fsvae; ann-vae uses mu); repeat to compare models.")
@click.option("--label", "labels", multiple=True, help="Label per --checkpoint (default: model:file).")
@click.option("--epochs", default=200, show_default=True, type=click.IntRange(1),
              help="Probe epochs (paper: 200).")
@click.option("--lr", default=0.01, show_default=True, type=click.FloatRange(0, min_open=True),
              help="SGD learning rate (paper: 0.01).")
@click.option("--momentum", default=0.9, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="SGD momentum (our choice; the paper does not say).")
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(1),
              help="Probe mini-batch (our choice; the paper does not say).")
@click.option("--feature-batch-size", default=256, show_default=True, type=click.IntRange(1),
              help="Batch for computing the encoder features.")
@click.option("--num-train", default=None, type=click.IntRange(1),
              help="Use the first N training images (default: all).")
@click.option("--num-test", default=None, type=click.IntRange(1),
              help="Use the first N test images (default: all).")
@click.option("--no-cache", is_flag=True,
              help="Recompute the encoder features even if out-dir has them cached.")
@_experiment_common
def classify_cmd(checkpoints, labels, epochs, lr, momentum, batch_size, feature_batch_size, num_train,
                 num_test, no_cache, dataset, data_root, seed, device, out_dir):
    """Encoder probe (Table III): an MLP L-512-256-128-10 on the frozen encoder's posterior firing rates."""
    from .experiments.classify import run_classify

    out_dir = out_dir or "results/classify"
    try:
        res = run_classify(checkpoints, out_dir, dataset, data_root, num_train, num_test, epochs, lr,
                           momentum, batch_size, feature_batch_size, seed, device, labels or None,
                           not no_cache, progress=True)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    for label, r in res["models"].items():
        click.echo(f"{label:>24s}  test accuracy {100 * r['test_acc']:.2f}%  "
                   f"(train {100 * r['train_acc']:.2f}%, {r['num_train']} / {r['num_test']} images)")
    click.echo(f"wrote {out_dir}/classify.{{csv,json,png}}")


@main.command("analyze")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Spiking model checkpoint (esvae, fsvae).")
@click.option("--history", multiple=True, type=click.Path(exists=True),
              help="Checkpoints of the same run (files, or a folder of .pt files) for the rate distributions "
                   "over training (Fig. 7); repeatable.")
@click.option("--num-images", default=1000, show_default=True, type=click.IntRange(1),
              help="Test images (and as many generated samples) to measure.")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(1), help="Batch size.")
@click.option("--num-raster", default=4, show_default=True, type=click.IntRange(1),
              help="Images shown in the spike raster (Fig. 4).")
@click.option("--e-ac", default=0.9, show_default=True, type=click.FloatRange(0),
              help="Energy of one accumulate in pJ (32-bit float add, 45 nm, Horowitz 2014).")
@click.option("--e-mac", default=4.6, show_default=True, type=click.FloatRange(0),
              help="Energy of one multiply-accumulate in pJ (3.7 mult + 0.9 add, 45 nm, Horowitz 2014).")
@_experiment_common
def analyze_cmd(checkpoint, history, num_images, batch_size, num_raster, e_ac, e_mac, dataset, data_root,
                seed, device, out_dir):
    """Latent firing rates (Fig. 6, 7), spike rasters (Fig. 4), per-layer rates, SOPs and energy."""
    from .experiments.analysis import run_analysis

    out_dir = out_dir or "results/analysis"
    try:
        res = run_analysis(checkpoint, out_dir, dataset, data_root, num_images, batch_size, seed, device,
                           history, e_ac, e_mac, num_raster, progress=True)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    r, en = res["rates"], res["energy"]
    click.echo(f"latent rate: posterior {r['posterior']['mean_rate']:.3f}, "
               f"prior {r['prior']['mean_rate']:.3f}; "
               f"histogram overlap {r['overlap']:.3f}; RBF-MMD^2 {r['rbf_mmd2']:.4f}")
    for stage in ("reconstruction", "generation"):
        s, a = en[stage], en["ann"][stage]
        click.echo(f"{stage}: {s['ac_per_image']:.4g} AC + {s['mac_per_image']:.4g} MAC = "
                   f"{s['energy_pj_per_image'] / 1e6:.3f} uJ/image; ANN {a['mac_per_image']:.4g} MAC = "
                   f"{a['energy_pj_per_image'] / 1e6:.3f} uJ/image")
    click.echo(f"wrote {out_dir}/analysis.json and figures")


if __name__ == "__main__":
    main()
