"""`sjvae reproduce`: Table I in time-budgeted, resumable calls (logic in spikingjelly_vae.reproduce)."""
from __future__ import annotations

import click

from .main import main
from .options import count, finite, MAX_WORKERS  # bounded option types
from .options import data_options, device_option, reports_value_errors, seed_option

MODELS = ("esvae", "fsvae", "ann-vae")
# --quick: tiny models and counts that check the whole pipeline in about a minute on a CPU (not Table I)
QUICK_TRAIN = {"batch_size": 16, "latent_dim": 8, "train_subset": 32, "test_subset": 16, "grid_images": 8,
               "epochs": 2}
QUICK_EVAL = {"metrics": ("mse",), "mse_num": 32}
QUICK_ROBUSTNESS = {"num_images": 16, "batch_size": 16, "num_examples": 2}


def _models(ctx, param, value):
    models = [m.strip() for m in value.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad or not models or len(set(models)) != len(models):
        raise click.BadParameter(f"expected distinct names from {','.join(MODELS)}, comma-separated; "
                                 f"got {value!r}")
    return models


@main.command("reproduce")
@click.option("--dataset", type=click.Choice(["mnist", "fashion", "cifar10", "celeba"]), required=True,
              help="The Table I dataset to reproduce.")
@click.option("--models", default=",".join(MODELS), show_default=True, callback=_models,
              help="Comma-separated models, trained in this order within the budget.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Results folder; the runs go to OUT/<dataset>/<model>/, the table to "
                   "OUT/<dataset>/table1.md. Rerun the same command to continue.")
@click.option("--budget-minutes", type=finite(0, min_open=True), default=None,
              help="Training time of this call: it stops at the step (or test batch) whose measured duration "
                   "exceeds what is left, saving the exact state inside the epoch; the next call continues it "
                   "(the first step of a call always runs) [default: no limit].")
@click.option("--checkpoint-every", type=count(1), default=None, metavar="N",
              help="Also save the exact training state every N optimizer steps (a kill -9 loses at most N "
                   "steps); SIGTERM and Ctrl-C always save it before exiting.")
@click.option("--max-epochs-per-call", type=count(1), default=None,
              help="Also stop each call after this many epochs in total.")
@click.option("--reevaluate", is_flag=True, help="Evaluate complete schedules again.")
@data_options()
@click.option("--fad-dir", default=None,
              help="Folder with the official FAD stat_checkpoints/ and stats/; else env SJVAE_FAD.")
@click.option("--inception-weights", default=None,
              help="FID Inception TorchScript file (or its folder); else env SJVAE_INCEPTION (else FID "
                   "unavailable).")
@click.option("--is-weights", default=None,
              help="torchvision inception_v3 weights for IS; else env SJVAE_IS_WEIGHTS (else IS "
                   "unavailable).")
@device_option
@click.option("--num-workers", type=count(0, MAX_WORKERS), default=None,
              help="DataLoader worker processes [0 on CPU, 4 on CUDA].")
@seed_option(42, "Seed of training and evaluation (fixed at a folder's first call).")
@click.option("--quick", is_flag=True,
              help="Smoke run of the whole pipeline on tiny models (2 epochs on 32 images, T=4, MSE on 32 "
                   "test images): checks a setup in minutes on a CPU. Its numbers are not Table I; use its "
                   "own --out.")
@click.pass_context
@reports_value_errors
def reproduce_cmd(ctx, *, dataset, models, quick, **kwargs):
    """Train ESVAE, FSVAE and the ANN VAE with the reference presets in budgeted, resumable calls, evaluate
    each finished schedule with the paper's protocols and write Table I (docs/reproduce.md)."""
    from ..reproduce import reproduce
    from ..train import TrainingInterrupted
    if quick:
        kwargs.update(preset_overrides={m: {**QUICK_TRAIN, **({} if m == "ann-vae" else {"T": 4})}
                                        for m in models},
                      eval_options=QUICK_EVAL, robustness_options=QUICK_ROBUSTNESS)
    try:
        res = reproduce(dataset=dataset, models=models, quick=quick, log=click.echo, **kwargs)
    except TrainingInterrupted as stop:  # the state is saved: the same command continues it
        click.echo(f"{stop.args[0].split(';')[0]}; rerun the same sjvae reproduce command to continue", err=True)
        ctx.exit(128 + stop.signum)
    state = "all schedules complete and evaluated" if res["complete"] else "not complete: rerun to continue"
    click.echo(f"wrote {res['folder']}/table1.md and table1.json ({state})")
