"""The `sjvae` command group; the commands register themselves on it (training, metrics, experiments)."""
import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="spikingjelly-vae")
def main():
    """Spiking variational autoencoders (ESVAE, FSVAE, ANN VAE) on SpikingJelly."""
