"""The ``mochi`` command: one click group, one small module per subcommand.

Each subcommand parses options, calls one library function and prints or writes its result.
A :class:`~mochi.errors.MochiError` raised by the library becomes ``Error: <message>`` and exit 1.
"""

from __future__ import annotations

import click

from mochi import __version__
from mochi.errors import MochiError


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MochiError as err:
            raise click.ClickException(str(err)) from None


@click.group(cls=_Group, context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mochi")
def main() -> None:
    """mochi: MoCo-v2 / MoCHi pretraining and downstream transfer evaluation."""


def _register() -> None:
    # Subcommands are added here, one module each under mochi/cli/.
    from mochi.cli.detect import detect_cmd
    from mochi.cli.export import export_cmd
    from mochi.cli.inspect import inspect_cmd
    from mochi.cli.knn import knn_cmd
    from mochi.cli.linear import linear_cmd
    from mochi.cli.pretrain import pretrain
    from mochi.cli.results import results_cmd

    main.add_command(pretrain)
    main.add_command(export_cmd)
    main.add_command(inspect_cmd)
    main.add_command(knn_cmd)
    main.add_command(linear_cmd)
    main.add_command(results_cmd)
    main.add_command(detect_cmd)


_register()
