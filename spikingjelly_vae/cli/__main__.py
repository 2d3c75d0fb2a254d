"""`python -m spikingjelly_vae.cli` (e.g. under torchrun) runs the `sjvae` command line."""
from . import main

if __name__ == "__main__":
    main()
