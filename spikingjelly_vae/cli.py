"""The `sjvae` command line (click). Each command is a thin layer over the Python API."""
import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="spikingjelly-vae")
def main():
    """Spiking variational autoencoders (ESVAE, FSVAE, ANN VAE) on SpikingJelly."""


if __name__ == "__main__":
    main()
