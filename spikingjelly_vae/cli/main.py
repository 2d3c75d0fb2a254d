"""The `sjvae` command group; the commands register themselves on it (training, metrics, experiments)."""
import click


def summary(command: click.Command) -> str:
    """A command's one-line summary for `sjvae --help`: its short_help, else the first paragraph of its help,
    whole (click would cut it at 45 characters or at the first full stop, such as the one of "Fig. 4")."""
    if command.short_help:
        return command.short_help
    first = (command.help or "").strip().split("\n\n")[0]
    return " ".join(first.split())


class Group(click.Group):
    """A click group that lists every command with its whole summary, wrapped to the terminal."""

    group_class = type  # its subgroups (fad-ae, prior) list their commands the same way

    def format_commands(self, ctx, formatter):
        rows = [(name, summary(cmd)) for name in self.list_commands(ctx)
                if (cmd := self.get_command(ctx, name)) is not None and not cmd.hidden]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="spikingjelly-vae")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error instead of its one-line message.")
def main(debug):
    """Spiking variational autoencoders (ESVAE, FSVAE, ANN VAE) on SpikingJelly."""
