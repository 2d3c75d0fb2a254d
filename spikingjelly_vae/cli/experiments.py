"""`sjvae robustness`, `classify`, `analyze` (logic in spikingjelly_vae.experiments)."""
from __future__ import annotations

import click

from .main import main
from .options import count, finite, SEED  # bounded option types
from .options import (data_root_option, dataset_option, device_option, download_if_asked, download_option,
                      options, reports_value_errors)
from .options import checkpoint_or_pretrained, prior_option  # --pretrained NAME, --prior learned|gmm:PATH

_experiment_common = options(
    dataset_option("Dataset the model(s) were trained on (default: read from the checkpoint)."),
    data_root_option(),
    click.option("--seed", default=0, show_default=True, type=SEED,
                 help="Seed of every random draw (posterior sampling, permutations, masks, probe init)."),
    device_option,
    click.option("--out-dir", default=None, type=click.Path(file_okay=False),
                 help="Folder for the CSV/JSON/PNG results (default: results/<command>)."),
)


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
@checkpoint_or_pretrained("Spiking model checkpoint (esvae, fsvae); repeat to compare models on identical "
                          "draws.", multiple=True)
@click.option("--kind", type=click.Choice(["shuffle", "flip", "gaussian"]), required=True,
              help="shuffle: permute each latent neuron's T spikes independently per image (Table II); "
                   "flip: flip each latent spike bit with probability a; gaussian: add N(0,1) to a fraction "
                   "a of the bits and re-binarise at 0.5 (Fig. 5).")
@click.option("--levels", default=None, callback=_levels,
              help="Comma-separated noise levels a for flip/gaussian [default: 0.05,0.1,0.15,0.2,0.25,0.3]; "
                   "not used by shuffle.")
@click.option("--num-images", default=None, type=count(1),
              help="Use the first N test images (default: the whole test set).")
@click.option("--batch-size", default=256, show_default=True, type=count(1),
              help="Test batch; the draws depend on (seed, batch index, shape), so keep it equal across runs "
                   "you compare.")
@click.option("--num-examples", default=8, show_default=True, type=count(1),
              help="Images shown in the example grid.")
@_experiment_common
@download_option
@reports_value_errors
def robustness_cmd(*, checkpoints, labels, kind, levels, out_dir, download, **kwargs):
    """Decode perturbed posterior latent spikes; MSE vs original and vs clean recon. (Table II, Fig. 5)."""
    from ..experiments.robustness import DEFAULT_LEVELS, run_robustness

    if kind == "shuffle" and levels is not None:
        raise click.UsageError("--levels applies to --kind flip/gaussian only; the time shuffle has no level")
    download_if_asked(download, kwargs["dataset"], kwargs["data_root"], checkpoints)
    out_dir = out_dir or "results/robustness"
    res = run_robustness(checkpoints, kind, levels or DEFAULT_LEVELS, out_dir=out_dir, labels=labels or None,
                         progress=True, **kwargs)
    for label, r in res["models"].items():
        for level, mo, mc in zip(r["levels"], r["mse_vs_original"], r["mse_vs_clean"]):
            name = "shuffle" if level is None else f"a={level:g}"
            click.echo(f"{label:>24s} {name:>8s}  MSE vs original {mo:.5f}  vs clean recon. {mc:.5f}")
    click.echo(f"wrote {out_dir}/robustness_{kind}.{{csv,json,png}}")


@main.command("classify")
@checkpoint_or_pretrained("Model checkpoint (esvae, fsvae; ann-vae uses mu); repeat to compare models.",
                          multiple=True)
@click.option("--epochs", default=200, show_default=True, type=count(1),
              help="Probe epochs (paper: 200).")
@click.option("--lr", default=0.01, show_default=True, type=finite(0, min_open=True),
              help="SGD learning rate (paper: 0.01).")
@click.option("--momentum", default=0.9, show_default=True, type=finite(0, 1, max_open=True),
              help="SGD momentum (our choice; the paper does not say).")
@click.option("--batch-size", default=128, show_default=True, type=count(1),
              help="Probe mini-batch (our choice; the paper does not say).")
@click.option("--feature-batch-size", default=256, show_default=True, type=count(1),
              help="Batch for computing the encoder features.")
@click.option("--num-train", default=None, type=count(1),
              help="Use the first N training images (default: all).")
@click.option("--num-test", default=None, type=count(1),
              help="Use the first N test images (default: all).")
@click.option("--no-cache", is_flag=True,
              help="Recompute the encoder features even if out-dir has them cached.")
@_experiment_common
@download_option
@reports_value_errors
def classify_cmd(*, checkpoints, labels, epochs, lr, momentum, batch_size, no_cache, out_dir, download, **kwargs):
    """Encoder probe (Table III): an MLP L-512-256-128-10 on the frozen encoder's posterior firing rates."""
    from ..experiments.classify import ProbeOptions, run_classify
    download_if_asked(download, kwargs["dataset"], kwargs["data_root"], checkpoints)

    out_dir = out_dir or "results/classify"
    probe = ProbeOptions(epochs=epochs, lr=lr, momentum=momentum, batch_size=batch_size)
    res = run_classify(checkpoints, probe, out_dir=out_dir, labels=labels or None, use_cache=not no_cache,
                       progress=True, **kwargs)
    for label, r in res["models"].items():
        click.echo(f"{label:>24s}  test accuracy {100 * r['test_acc']:.2f}%  "
                   f"(train {100 * r['train_acc']:.2f}%, {r['num_train']} / {r['num_test']} images)")
    click.echo(f"wrote {out_dir}/classify.{{csv,json,png}}")


@main.command("analyze")
@checkpoint_or_pretrained("Spiking model checkpoint (esvae, fsvae).")
@click.option("--history", multiple=True, type=click.Path(exists=True),
              help="Checkpoints of the same run (files, or a folder of .pt files) for the rate distributions "
                   "over training (Fig. 7); repeatable.")
@click.option("--num-images", default=1000, show_default=True, type=count(1),
              help="Test images (and as many generated samples) to measure.")
@click.option("--batch-size", default=256, show_default=True, type=count(1), help="Batch size.")
@click.option("--num-raster", default=4, show_default=True, type=count(1),
              help="Images shown in the spike raster (Fig. 4).")
@click.option("--e-ac", default=0.9, show_default=True, type=finite(0),
              help="Energy of one accumulate in pJ (32-bit float add, 45 nm, Horowitz 2014).")
@click.option("--e-mac", default=4.6, show_default=True, type=finite(0),
              help="Energy of one multiply-accumulate in pJ (3.7 mult + 0.9 add, 45 nm, Horowitz 2014).")
@prior_option
@_experiment_common
@reports_value_errors
def analyze_cmd(checkpoint, out_dir, **kwargs):
    """Latent firing rates (Fig. 6, 7), spike rasters (Fig. 4), per-layer rates, SOPs and energy."""
    from ..experiments.analysis import run_analysis

    out_dir = out_dir or "results/analysis"
    res = run_analysis(checkpoint, out_dir=out_dir, progress=True, **kwargs)
    r, en = res["rates"], res["energy"]
    click.echo(f"latent rate: posterior {r['posterior']['mean_rate']:.3f}, "
               f"prior ({res['prior']}) {r['prior']['mean_rate']:.3f}; "
               f"histogram overlap {r['overlap']:.3f}; RBF-MMD^2 {r['rbf_mmd2']:.4f}")
    for stage in ("reconstruction", "generation"):
        s, a = en[stage], en["ann"][stage]
        click.echo(f"{stage}: {s['ac_per_image']:.4g} AC + {s['mac_per_image']:.4g} MAC = "
                   f"{s['energy_pj_per_image'] / 1e6:.3f} uJ/image; ANN {a['mac_per_image']:.4g} MAC = "
                   f"{a['energy_pj_per_image'] / 1e6:.3f} uJ/image")
    click.echo(f"wrote {out_dir}/analysis.json and figures")
