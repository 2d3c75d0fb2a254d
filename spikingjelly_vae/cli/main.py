"""The `sjvae` command group; the commands register themselves on it (training, metrics, experiments)."""
import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="spikingjelly-vae")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error instead of its one-line message.")
def main(debug):
    """Spiking variational autoencoders (ESVAE, FSVAE, ANN VAE) on SpikingJelly."""
