"""`sjvae evaluate`, the `fad-ae` group and `compare` (logic in spikingjelly_vae.metrics)."""
from __future__ import annotations

from pathlib import Path

import click

from .main import main
from .options import count, finite, SEED  # bounded option types
from .options import (cache_dir_option, check_writable, data_root_option, dataset_option, device_option,
                      download_if_asked, download_option, options, reports_value_errors)
from .options import checkpoint_or_pretrained, prior_option  # --pretrained NAME, --prior learned|gmm:PATH

_allow_mismatch = click.option("--allow-dataset-mismatch", is_flag=True,
                               help="Allow a dataset other than the checkpoint's own; the result is marked.")
# the weights option that makes a metric explicitly requested
_METRIC_OPTIONS = {"fid": ("inception_weights",), "is": ("is_weights",), "fad": ("fad_dir", "fad_checkpoint")}

_PROTOCOL_HELP = ("reference: as the paper's numbers were computed (IS on unnormalised input, FAD with "
                  "train-mode BN); standard: normalised IS input, eval-mode FAD. See docs/metrics.md.")

_weights = options(
    click.option("--inception-weights", default=None,
                 help="FID Inception TorchScript file (or its folder); else env SJVAE_INCEPTION. Never downloaded."),
    click.option("--is-weights", default=None,
                 help="torchvision ImageNet inception_v3 weights (inception_v3_google-0cc3c7bd.pth) for IS; "
                      "else env SJVAE_IS_WEIGHTS. Without them IS is reported as unavailable."),
    click.option("--fad-dir", default=None,
                 help="Folder with the official FAD stat_checkpoints/ and stats/; else env SJVAE_FAD."),
    click.option("--fad-checkpoint", default=None, type=click.Path(exists=True, dir_okay=False),
                 help="A feature AE from `sjvae fad-ae train` to use instead (its FAD is not the paper's)."),
    cache_dir_option("Cache for reference statistics and our AEs (else env SJVAE_CACHE, else "
                     "~/.cache/spikingjelly_vae)."),
)

_counts = options(
    click.option("--num-samples", default=5000, show_default=True, type=count(2),
                 help="Generated images for FID (FAD takes all ceil(n/128)*128 drawn)."),
    click.option("--sample-batch", default=128, show_default=True, type=count(2),
                 help="Sampling batch for FID/FAD (the reference's 128; FAD's BN sees these batches)."),
    click.option("--is-batch", default=256, show_default=True, type=count(1), help="IS sampling batch."),
    click.option("--is-batches", default=10, show_default=True, type=count(1),
                 help="IS batches (reference protocol: one split per batch)."),
    click.option("--mse-batch", default=None, type=count(1),
                 help="Test batch for MSE (default: ESVAE's, 2 x training batch: 512, CelebA 128; FSVAE's "
                      "reference used its training batch, 250 / 64)."),
    click.option("--mse-num", default=None, type=count(1), help="Use only the first N test images for MSE."),
    click.option("--fid-ref-num", default=None, type=count(2),
                 help="FID reference statistics from the first N images of the split only (default: all)."),
)


@main.command("evaluate")
@checkpoint_or_pretrained()
@click.option("--metrics", default="mse,fid,is,fad", show_default=True,
              help="Comma-separated subset of mse, fid, is, fad.")
@dataset_option("Dataset the model was trained on (default: read from the checkpoint).")
@data_root_option()
@download_option
@click.option("--protocol", type=click.Choice(["reference", "standard"]), default="reference", show_default=True,
              help=_PROTOCOL_HELP)
@click.option("--fid-mode", type=click.Choice(["clean", "fast"]), default="clean", show_default=True,
              help="Resize to 299: clean = PIL bicubic per channel on the CPU (clean-fid, the reference); "
                   "fast = bilinear on the tensor's device.")
@_weights
@_counts
@prior_option
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seed of the sampling generators.")
@device_option
@click.option("--output", default=None, type=click.Path(dir_okay=False),
              help="JSON file for all numbers (default: <checkpoint>.eval-<protocol>.json beside it, "
                   ".eval-<protocol>.<prior>.json for a GMM prior; results/pretrained/<name>... for "
                   "--pretrained).")
@_allow_mismatch
@click.option("--force", is_flag=True, help="Replace an existing --output (never a file of another kind, such as "
                                            "a checkpoint).")
@reports_value_errors
def evaluate_cmd(*, checkpoint, pretrained, metrics, dataset, device, output, download, allow_dataset_mismatch,
                 force, **kwargs):
    """Compute MSE, FID, IS and FAD of a checkpoint; print a table and write JSON.

    Exits 1 (after writing the JSON) when a metric whose weights were given (--inception-weights,
    --is-weights, --fad-dir, --fad-checkpoint) could not be computed; a metric without weights is reported
    as unavailable."""
    download_if_asked(download, dataset, kwargs.get("data_root"), (checkpoint,))
    from ..atomic import write_json
    from ..metrics.evaluate import evaluate_checkpoint, format_table, requested_failures, split_eval_kwargs
    names = tuple(m.strip().lower() for m in metrics.split(",") if m.strip())
    claim = _claim_result(output, force)
    check_writable(claim(Path(output) if output else _default_output(  # before the long work
        checkpoint, pretrained, {"protocol": kwargs["protocol"], "prior": "learned"})))
    options_, sources, _ = split_eval_kwargs(metrics=names, **kwargs)
    res = evaluate_checkpoint(checkpoint, options_, sources, dataset=dataset, device=device, progress=True,
                              log=lambda msg: click.echo(msg, err=True),
                              allow_dataset_mismatch=allow_dataset_mismatch)
    if pretrained:
        res["pretrained"] = pretrained
    out = claim(Path(output) if output else _default_output(checkpoint, pretrained, res))
    click.echo(format_table(res))
    if res.get("dataset_mismatch"):
        click.echo(f"NOTE: a {res['checkpoint_dataset']} model measured on {res['dataset']} (marked in the JSON)")
    click.echo(f"wrote {write_json(out, res)}")
    requested = [m for m in names if any(kwargs.get(k) for k in _METRIC_OPTIONS.get(m, ()))]
    failed = requested_failures(res, requested)
    if failed:
        raise click.ClickException("requested metrics not computed: "
                                   + "; ".join(f"{k}: {v}" for k, v in failed.items()))


def _claim_result(output, force: bool):
    """The output rule (overwrite.claim_output) for evaluate results: an explicit --output needs --force to
    replace a result; the default file beside the checkpoint is that checkpoint's own result and is
    replaced. Neither ever replaces a file of another kind."""
    from ..overwrite import claim_output
    return lambda path: claim_output(path, "evaluate result", force=force or not output, option="--output")


def _default_output(checkpoint, pretrained, res) -> Path:
    """<checkpoint>.eval-<protocol>[.<prior>].json beside it; for a pretrained name under results/pretrained/
    (not inside the package). A GMM prior's result never replaces the learned prior's (the paper's)."""
    name = (pretrained or Path(checkpoint).name) + f".eval-{res['protocol']}"
    name += "" if res["prior"] == "learned" else f".{res['prior']}"
    folder = Path("results/pretrained") if pretrained else Path(checkpoint).parent
    return folder / f"{name}.json"


@main.group("fad-ae")
def fad_ae():
    """The FAD feature autoencoder (train one where the official one is missing)."""


@fad_ae.command("train")
@dataset_option("Dataset to train the AE on.", required=True)
@data_root_option()
@download_option
@cache_dir_option("Default output is <cache>/fad_ae/ (else env SJVAE_CACHE, else ~/.cache/spikingjelly_vae).")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Output folder instead of the cache.")
@click.option("--epochs", default=150, show_default=True, type=count(1), help="Epochs (official 150).")
@click.option("--batch-size", default=250, show_default=True, type=count(2), help="Batch (official 250).")
@click.option("--lr", default=1e-3, show_default=True, type=finite(), help="AdamW learning rate (official 1e-3).")
@click.option("--latent-dim", default=None, type=count(1),
              help="Latent size (default: official, 64 MNIST/Fashion-MNIST, 128 CIFAR-10/CelebA).")
@device_option
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seed for initialisation and shuffling.")
@click.option("--limit", default=None, type=count(2), help="Use only the first N train and test images.")
@click.option("--overwrite", is_flag=True, help="Replace files of an earlier run in the output folder.")
@reports_value_errors
def fad_ae_train(dataset, data_root, device, download, **kwargs):
    """Train a FAD feature AE by the official recipe and write its test statistics."""
    download_if_asked(download, dataset, data_root)
    from ..metrics.feature_ae import train_feature_ae
    from ..runtime import resolve_device
    meta = train_feature_ae(dataset, root=data_root, device=str(resolve_device(device)),
                            log=lambda msg: click.echo(msg, err=True), **kwargs)
    click.echo(f"checkpoint {meta['checkpoint']} (best epoch {meta['best_epoch'] + 1}, "
               f"test MSE {meta['best_test_loss']:.5f})")
    click.echo(f"test statistics {meta['stats']}")
    click.echo("NOTE: FAD measured with this autoencoder is ours, NOT comparable with the paper's Table I "
               "(the paper used its own AE; see docs/metrics.md).")


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
@click.option("--force", is_flag=True, help="Replace an existing --output table (never a file of another kind).")
@_allow_mismatch
@data_root_option("With --evaluate: folder holding the datasets.")
@click.option("--inception-weights", default=None, help="With --evaluate: FID Inception TorchScript file.")
@click.option("--is-weights", default=None, help="With --evaluate: torchvision inception_v3 weights for IS.")
@click.option("--fad-dir", default=None, help="With --evaluate: folder with the official FAD files.")
@device_option
@reports_value_errors
def compare_cmd(*, paths, protocol, which, run_evaluate, all_published, fmt, output, allow_dataset_mismatch, force,
                **evaluate_kwargs):
    """Table I: published numbers beside ours, from evaluate JSONs, checkpoints or run folders (PATHS).

    Every cell is marked P (published) or M (measured). Without PATHS, prints the paper's table.
    """
    from ..metrics.compare import compare
    if output:
        from ..overwrite import claim_output
        check_writable(claim_output(output, "compare table", force=force, option="--output"))
    kwargs = {**evaluate_kwargs, "log": lambda msg: click.echo(msg, err=True)} if run_evaluate else {}
    res = compare(paths, protocol, which, run_evaluate, all_published=all_published, fmt=fmt, output=output,
                  allow_dataset_mismatch=allow_dataset_mismatch, **kwargs)
    click.echo(res["table"], nl=False)
    if res["output"]:
        click.echo(f"wrote {res['output']}")
