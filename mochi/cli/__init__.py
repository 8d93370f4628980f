"""The ``mochi`` command: one click group, one small module per subcommand, imported on first use.

Each subcommand parses options, calls one library function and prints or writes its result.
A :class:`~mochi.errors.MochiError` raised by the library becomes ``Error: <message>`` and exit 1.
``mochi --help`` lists the subcommands from :data:`COMMANDS` without importing them (nor torch).

OpenMP threads wait for work by sleeping (``OMP_WAIT_POLICY=PASSIVE``) unless the user set the variable: with
two intra-op threads on a busy two-core machine, spinning threads made a small pretraining run 3.45x slower
(wall time, and 4x the CPU time), while sleeping cost nothing measurable on a quiet machine (0.99x;
``benchmarks/bench_omp_wait.py``). It must be set before torch loads OpenMP, so it is set here, when the
command starts; library users set it themselves.
"""

from __future__ import annotations

import importlib
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import click

from mochi import __version__
from mochi.errors import MochiError

# name -> ("module:command", the first line of the command's help, listed by ``mochi --help``).
COMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": (
        "mochi.cli.pretrain:pretrain_cmd",
        "Pretrain a ResNet with MoCo-v2, or MoCHi when --mochi-n > 0.",
    ),
    "knn": (
        "mochi.cli.knn:knn_cmd",
        "kNN top-1 / top-5 of CHECKPOINT (or --random-init) with the InstDisc weighted vote.",
    ),
    "linear": (
        "mochi.cli.linear:linear_cmd",
        "Linear top-1 / top-5 of CHECKPOINT (or --random-init); the record names the protocol.",
    ),
    "detect": (
        "mochi.cli.detect:detect_cmd",
        "Fine-tune and evaluate a detector from CHECKPOINT once per seed (OVERRIDES: Detectron2 KEY VALUE).",
    ),
    "export": (
        "mochi.cli.export:export_cmd",
        "Write CHECKPOINT's ResNet backbone for torchvision or Detectron2, after a strict load check.",
    ),
    "inspect": (
        "mochi.cli.inspect:inspect_cmd",
        "Report CHECKPOINT's format, prefix, encoder, architecture and tensors (exit 1 if it does not load).",
    ),
    "suite": (
        "mochi.cli.suite:suite_cmd",
        "Run a named set of evaluations on each CHECKPOINT; re-running finishes what is missing.",
    ),
    "results": (
        "mochi.cli.results:results_cmd",
        "List the records in RESULTS_DIR (oldest first), one row each.",
    ),
    "table": (
        "mochi.cli.table:table_cmd",
        "Pivot the records of RESULTS_DIR... into a table: one row per backbone, mean ± std over seeds.",
    ),
    "analyze": (
        "mochi.cli.analyze:analyze_cmd",
        "Alignment and uniformity (Wang & Isola 2020) of each CHECKPOINT (or --random-init).",
    ),
    "plot": (
        "mochi.cli.plot:plot_cmd",
        "Draw training curves, kNN top-1 against k, table dot plots, or alignment against uniformity.",
    ),
}


class LazyGroup(click.Group):
    """Subcommands by name, imported when one runs (or shows its own help)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name][0].split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names))
        rows = [
            (name, click.Command(name, help=COMMANDS[name][1]).get_short_help_str(limit)) for name in names
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MochiError as err:
            raise click.ClickException(str(err)) from None


@click.group(cls=LazyGroup, context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mochi")
def main() -> None:
    """mochi: MoCo-v2 / MoCHi pretraining and downstream transfer evaluation."""
