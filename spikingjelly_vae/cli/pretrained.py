"""`sjvae pretrained`: the named weights that `--pretrained NAME` loads (spikingjelly_vae.pretrained)."""
from __future__ import annotations

import json

import click

from .main import main


@main.command("pretrained")
@click.option("--json", "as_json", is_flag=True, help="Print the registry as JSON.")
def pretrained_cmd(as_json):
    """List the pretrained names: status (available, preview, or still training), epochs and metrics."""
    from ..pretrained import status
    names = status()
    if as_json:
        click.echo(json.dumps(names, indent=2))
        return
    for name, e in sorted(names.items(), key=lambda kv: (kv[1]["status"] == "training", kv[0])):  # loadable first
        reached = "?" if e["epochs_reached"] is None else e["epochs_reached"]
        line = f"{name:20s} {e['status']:9s} {reached}/{e['epochs_total']} epochs"
        if e["status"] in ("available", "preview"):
            line += "  " + ", ".join(f"{k} {v:.4g}" for k, v in e["metrics"].items() if isinstance(v, float))
        else:
            line += f"  (train: {e['command']})"
        click.echo(line)
    click.echo("Use an available or preview name with --pretrained NAME on sample, reconstruct, evaluate, "
               "robustness, classify, analyze; `sjvae pretrained --json` says how each was trained and measured.")
