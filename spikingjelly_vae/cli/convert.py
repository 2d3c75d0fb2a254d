"""`sjvae convert-official`: an official QgZhan/ESVAE checkpoint -> ours (spikingjelly_vae.convert)."""
from __future__ import annotations

import click

from .main import main
from .options import _debug, dataset_option, force_option, reports_value_errors

MODELS = ("esvae", "fsvae", "ann-vae")  # convert.OFFICIAL_CLASSES, not imported here to keep `sjvae -h` light


@main.command("convert-official")
@click.argument("src", type=click.Path(dir_okay=False))
@click.option("--model", required=True, type=click.Choice(MODELS),
              help="The official model: esvae (ESVAE, ESVAELarge), fsvae (FSVAE, FSVAELarge) or ann-vae "
                   "(VanillaVAE, VanillaVAELarge).")
@dataset_option("The dataset it was trained on (celeba: the 64x64 Large models).", required=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Checkpoint to write, for any --checkpoint option; an existing file is kept unless "
                   "--force.")
@force_option
@reports_value_errors
def convert_official_cmd(src, model, dataset, out, force):
    """Convert SRC, a checkpoint saved by the official ESVAE code (checkpoint.pth, best.pth, best_fid.pth,
    demo_checkpoint/*.pth), into a spikingjelly-vae checkpoint (docs/migrate.md).

    SRC is read with torch.load(weights_only=True): a file that would run code is refused."""
    from ..convert import ConversionError, convert_official
    try:
        res = convert_official(src, model, dataset, out, force=force)
    except ConversionError as err:  # a file problem, not a usage error: the one line, exit 1
        if _debug():
            raise
        raise click.ClickException(str(err)) from None
    cfg = res["config"]
    epoch = "" if res["official_epoch"] is None else f", epoch {res['official_epoch']}"
    click.echo(f"wrote {res['out']}: official {res['class']} ({res['layout']}{epoch}), {dataset}, "
               f"latent {cfg['latent_dim']}" + (f", T {cfg['T']}" if "T" in cfg else "")
               + f"; {res['used_keys']} tensors used, {res['dropped_keys']} dropped; "
               f"sha256 {res['source_sha256'][:16]}")
