"""`sjvae train`, `sample`, `reconstruct`, `info` (logic in spikingjelly_vae.train and .inference)."""
from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import click

from ..presets import preset_table
from .main import main
from .options import count, finite, MAX_WORKERS  # bounded option types
from .options import (checkpoint_option, data_options, dataset_option, device_option, download_if_asked,
                      download_option, force_option, options, parse_model_opts, reports_value_errors,
                      seed_option)
from .options import checkpoint_or_pretrained, prior_option  # --pretrained NAME, --prior learned|gmm:PATH

_run_folder = options(
    click.option("--out", default=None, type=click.Path(file_okay=False),
                 help="Run folder (default runs/<dataset>-<model>-<timestamp>). A folder holding a run is never "
                      "overwritten without --resume or --force."),
    click.option("--resume", is_flag=True,
                 help="Continue the run in --out exactly where it stopped (last.pt, or resume.pt inside an epoch); options not "
                      "given again are taken from the run's train_config.json. Only --epochs, --max-steps and "
                      "machinery options may change; new hyper-parameters need --force or another --out."),
    click.option("--force", is_flag=True, help="Start over in an --out that holds a run, replacing its run files."),
    click.option("--checkpoint-every", type=count(1), default=None, metavar="N",
                 help="Also save the exact state inside an epoch (<out>/resume.pt) every N optimizer steps, so a "
                      "kill -9 loses at most N steps. SIGTERM and Ctrl-C always save it before exiting."),
)

_preset = options(
    click.option("--epochs", type=count(1), default=None, help="Epochs [default: the preset, table above]."),
    click.option("--max-steps", type=count(1), default=None,
                 help="Stop after this many optimizer steps in total (a short run); the epoch in progress is then "
                      "evaluated and checkpointed."),
    click.option("--batch-size", type=count(1, 1 << 20), default=None,
                 help="Batch per process [default: the preset]; under torchrun the global batch is "
                      "processes x this."),
    click.option("--lr", type=finite(0, min_open=True), default=None,
                 help="Learning rate actually used [default: the preset, the official lr x batch/250]."),
    click.option("--bottleneck-lr-mult", type=finite(0, min_open=True), default=None,
                 help="ESVAE: learning rate of the bottleneck (prior) layer as a multiple of --lr [default: "
                      "the preset, 10]."),
    click.option("--weight-decay", type=finite(0), default=None, help="AdamW weight decay [default: the preset]."),
    click.option("--latent-dim", type=count(1, 65536), default=None,
                 help="Latent size L [default: the preset]."),
    click.option("--T", "T", type=count(1, 1024), default=None, help="Time steps [default: the preset, 16]."),
    click.option("--lambda", "mmd_lambda", type=finite(0), default=None,
                 help="ESVAE: weight of the MMD term in the loss [default: the preset, 0.001]."),
    click.option("--model-opt", "model_opts", multiple=True, callback=parse_model_opts, metavar="KEY=VALUE",
                 help="Other model-builder option, e.g. kernel_backend=torch, half_width=0.5, "
                      "hidden=4,4,8,8 (a list) or fuse_bn_lif=true; repeatable."),
    click.option("--drop-last/--keep-last", default=None,
                 help="Drop the last incomplete training batch [default: the preset, the official loader's: on for "
                      "Fashion-MNIST and CIFAR-10]."),
)

_evaluation = options(
    click.option("--test-batch-size", type=count(1, 1 << 20), default=None, help="Test batch [2 x --batch-size]."),
    click.option("--train-subset", type=count(1), default=None,
                 help="Train on a fixed random subset of this many images (chosen by --seed)."),
    click.option("--test-subset", type=count(1), default=None,
                 help="Evaluate on the first this many test images (default: the whole test set)."),
    click.option("--grid-every", type=count(0), default=1, show_default=True,
                 help="Write reconstruction and sample PNG grids every N epochs and after the last (0: last only)."),
    click.option("--grid-images", type=count(1, 4096), default=64, show_default=True, help="Images per grid."),
    click.option("--keep-every", type=count(0), default=0, show_default=True,
                 help="Also keep <out>/checkpoints/epochNNNN.pt every N epochs, for `sjvae analyze --history` "
                      "(0: only last.pt and best.pt)."),
)

_machinery = options(
    seed_option(42, "Seed of initialisation, shuffling, augmentation and latent sampling (re-derived per epoch)."),
    device_option,
    click.option("--amp", type=click.Choice(["off", "bf16", "fp16"]), default="off", show_default=True,
                 help="Mixed precision on CUDA (fp16 uses a gradient scaler)."),
    click.option("--num-workers", type=count(0, MAX_WORKERS), default=None,
                 help="DataLoader worker processes [0 on CPU, 4 on CUDA]."),
    click.option("--data-on-gpu/--no-data-on-gpu", default=None,
                 help="Hold the whole dataset on the device and batch it there, no DataLoader [default: on for "
                      "CUDA with mnist, fashion, cifar10 when it fits]. MNIST/Fashion batches equal the "
                      "DataLoader's; CIFAR-10 flips are drawn differently. On a CPU device: resident on the CPU."),
    click.option("--progress/--no-progress", default=True, show_default=True, help="tqdm progress bars."),
    click.option("--tensorboard/--no-tensorboard", default=True, show_default=True,
                 help="Also log to <out>/tb when TensorBoard is installed."),
    click.option("--find-unused-parameters", is_flag=True, help="DDP: allow parameters that get no gradient in a step."),
)


@main.command("train")
@dataset_option("mnist, fashion, cifar10, celeba, or mnist-mini (a small MNIST subset inside the package: "
                "no data folder needed).", default="mnist", choice=False)
@click.option("--model", default="esvae", show_default=True, help="esvae, fsvae or ann-vae.")
@data_options()
@download_option
@_run_folder
@_preset
@_evaluation
@_machinery
@click.pass_context
@reports_value_errors
def train_cmd(ctx, **opts):
    """Train a model (one process, or DDP under torchrun), writing checkpoints, log.csv and PNG grids.

    Values not given come from the preset of (model, dataset) (the official configs; see
    docs/training.md). Multi-GPU: torchrun --nproc_per_node 4 -m spikingjelly_vae.cli train ...
    """
    from click.core import ParameterSource

    from ..train import TrainConfig, TrainingInterrupted, fit
    from ..train.loop import resume_command
    given = {k for k in opts if ctx.get_parameter_source(k) is not ParameterSource.DEFAULT}
    model_kwargs = dict(opts.pop("model_opts"))
    mmd_lambda = opts.pop("mmd_lambda")
    if mmd_lambda is not None:
        model_kwargs["mmd_lambda"] = mmd_lambda
    opts["model_kwargs"] = model_kwargs
    if opts["resume"]:
        opts = _resumed_options(opts, given)
    try:
        res = fit(TrainConfig.from_dict(opts))
    except TrainingInterrupted as stop:  # its state is saved; the message holds the command that resumes it
        click.echo(str(stop), err=True)
        ctx.exit(128 + stop.signum)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    m = res["metrics"]
    if m:
        click.echo(f"epoch {m['epoch']}, step {m['step']}: test MSE {m['test_mse']:.5f} over {m['test_images']} "
                   f"test images, test loss {m['test_loss']:.5f}, train {m['images_per_s']:.1f} images/s")
    rate = res["train_images_per_s"]
    click.echo(f"done: {res['steps']} steps in {res['seconds']:.1f} s"
               + (f", {rate:.1f} train images/s" if rate else ""))
    click.echo(f"run folder {res['out']}: last.pt, best.pt, log.csv, images/")
    click.echo(f"continue it with: {resume_command(res['out'])} (add --epochs N to train longer)")


train_cmd.help = inspect.cleandoc(train_cmd.help) + "\n\n\b\nPresets (the values of options not given):\n" + preset_table()


def _resumed_options(opts: dict, given: set) -> dict:
    """The run's own options (train_config.json), with those given again on this command line on top."""
    base = _saved_options(opts["out"])
    again = {k: v for k, v in opts.items() if k in given}
    again["model_kwargs"] = {**base.get("model_kwargs", {}), **opts["model_kwargs"]}
    # --download is never carried over from the saved run: only this command line asks for a download
    return {**base, **again, "resume": True, "force": False, "download": opts["download"]}


def _saved_options(out) -> dict:
    """The options a run was started with: its train_config.json (checked against its schema), else, when
    that file is gone, the copy its last.pt keeps."""
    from ..checkpoint import load_checkpoint
    from ..schemas import TrainConfigFile, check
    folder = Path(out or ".")
    saved, last = folder / "train_config.json", folder / "last.pt"
    if out is None or not (saved.is_file() or last.is_file()):
        raise ValueError(f"--resume needs --out <run folder> holding train_config.json and last.pt "
                         f"({saved} not found)")
    if not saved.is_file():
        click.echo(f"resume: {saved} is missing; using the options recorded in {last}", err=True)
        return dict(load_checkpoint(last, resume=True)["train_config"])
    try:
        data = json.loads(saved.read_text())
    except (UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{saved} is not readable JSON ({err}); delete it to resume with the options "
                         f"recorded in {last}") from None
    check(TrainConfigFile, data, saved, f"delete it to resume with the options recorded in {last}")
    return dict(data["train_config"])


@main.command("sample")
@checkpoint_or_pretrained("Model checkpoint written by `sjvae train` (last.pt or best.pt).")
@click.option("-n", "--num", "n", type=count(1), default=64, show_default=True, help="Images to generate.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Output: .png for a grid, .pt for the tensor [n, C, H, W] in [-1, 1].")
@seed_option(0, "Seed of the sampling generator.")
@click.option("--batch-size", type=count(1), default=256, show_default=True, help="Images per model call.")
@click.option("--nrow", type=count(1), default=8, show_default=True, help="Images per grid row (.png).")
@prior_option
@device_option
@force_option
@reports_value_errors
def sample_cmd(checkpoint, n, out, pretrained=None, **kwargs):
    """Generate n images from the prior of a trained model (learned, or an ESVAE's GMM rate prior)."""
    from ..inference import sample_to_file
    res = sample_to_file(checkpoint, n, out, progress=True, **kwargs)
    click.echo(f"wrote {res['out']} ({res['n']} images of shape {res['shape'][1:]}, seed {kwargs['seed']}, "
               f"{res['prior']} prior)")
    if pretrained:
        from ..pretrained import get_entry
        e = get_entry(pretrained)
        if e.status == "preview":
            click.echo(f"{pretrained} is a preview: {e.epochs_reached} of the paper's {e.epochs_total} epochs "
                       "(`sjvae pretrained --json` says how it was trained and measured)")


@main.command("reconstruct")
@checkpoint_or_pretrained()
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="PNG: rows of originals, each above its row of reconstructions.")
@click.option("-n", "--num", "n", type=count(1), default=32, show_default=True,
              help="Use the first n images of the split.")
@dataset_option("Dataset (default: the one in the checkpoint).", choice=False)
@click.option("--split", default="test", show_default=True, help="train or test (CelebA also valid, all).")
@data_options("Cache folder (else env SJVAE_CACHE).")
@download_option
@seed_option(0, "Seed of the posterior sampling.")
@click.option("--nrow", type=count(1), default=8, show_default=True, help="Images per row.")
@device_option
@force_option
@reports_value_errors
def reconstruct_cmd(checkpoint, out, download, **kwargs):
    """Grid of dataset images and their reconstructions; prints their MSE."""
    download_if_asked(download, kwargs["dataset"], kwargs["data_root"], (checkpoint,))
    from ..inference import reconstruct_to_file
    res = reconstruct_to_file(checkpoint, out, **kwargs)
    click.echo(f"wrote {res['out']}: {res['n']} {res['dataset']} {res['split']} images, MSE {res['mse']:.5f}")


@main.command("info")
@checkpoint_option("Summarise the model of this checkpoint (else build one from --model/--dataset).", required=False)
@click.option("--model", default="esvae", show_default=True, help="Model to build when no --checkpoint: "
              "esvae, fsvae or ann-vae.")
@dataset_option("Dataset shapes and preset when no --checkpoint.", default="mnist", choice=False)
@click.option("--latent-dim", type=count(1, 65536), default=None, help="Latent size [preset].")
@click.option("--T", "T", type=count(1, 1024), default=None, help="Time steps [preset].")
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@reports_value_errors
def info_cmd(*, checkpoint, model, dataset, latent_dim, T, device, as_json):
    """Model summary: parameters, layers, latent size, T, device and kernel backend."""
    from ..checkpoint import load_model
    from ..inference import model_summary
    from ..runtime import resolve_device
    from ..train import TrainConfig, build_from_config
    dev = resolve_device(device)
    ckpt = None
    if checkpoint:
        net, ckpt = load_model(checkpoint, map_location=dev)
    else:
        _, net = build_from_config(TrainConfig(dataset=dataset, model=model, latent_dim=latent_dim, T=T).resolved())
    res = model_summary(net.to(dev), dev, ckpt)
    if as_json:
        click.echo(json.dumps(res, indent=2, default=str))
    else:
        _print_summary(res)


def _print_summary(res: dict) -> None:
    click.echo(f"model {res['model']} ({res['class']}): {res['parameters']:,} parameters "
               f"({res['trainable_parameters']:,} trainable)")
    click.echo(f"images {'x'.join(str(v) for v in res['image_shape'])}, latent {res['latent_dim']}, T {res['T']}")
    click.echo(f"device {res['device']}, kernel backend {res['kernel_backend']['on_this_device']} "
               f"(requested {res['kernel_backend']['requested']})")
    click.echo("blocks: " + ", ".join(f"{k} {v:,}" for k, v in res["blocks"].items()))
    click.echo("layers: " + ", ".join(f"{k} x{v}" for k, v in res["layers"].items()))
    if "checkpoint" in res:
        c = res["checkpoint"]
        click.echo(f"checkpoint: epoch {c['epoch']}, step {c['step']}, dataset {c['dataset']}, "
                   f"test MSE {(c['metrics'] or {}).get('test_mse', 'n/a')}")
