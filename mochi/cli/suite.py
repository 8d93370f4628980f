"""``mochi suite``: a named set of evaluations on each checkpoint, resumable, ending with the table."""

from __future__ import annotations

import click

from mochi.cli.options import Command, comma_ints, errors_as
from mochi.constants import ARCHS
from mochi.eval.config import DEVICES


@click.command("suite", cls=Command)
@click.argument("checkpoints", nargs=-1)
@click.option("--suite", default=None, help="Suite name (mochi suite --list).")
@click.option("--list", "list_suites", is_flag=True, help="List the suites, their steps and seeds, and exit.")
@click.option("-o", "--output", default=None, help="Suite folder: results/ (records), table and plots.")
@click.option("--baseline", "baselines", multiple=True, type=click.Choice([*ARCHS, "pixels"]),
              help="Also evaluate this architecture at random init, or pixels: the raw pixels "
              "(repeatable).")  # fmt: skip
@click.option(
    "--seeds", default=None, callback=comma_ints, help="Comma-separated seeds [default: the suite's]."
)
@click.option(
    "--init-seeds", default="0", callback=comma_ints,
    help="Initialisation seeds of each random-init --baseline: one backbone per seed, pooled in one "
    "table row (mean ± std).",
)  # fmt: skip
@click.option("--variant", default=None, help="Another step set of the suite (coco: 2x, fpn).")
@click.option("--option", "options", multiple=True,
              help="STEP.FIELD=VALUE: change one protocol setting (e.g. linear-lbfgs.patience=5); "
              "repeatable. The record says so, and the table keeps such results apart.")  # fmt: skip
@click.option("--data", default=None, help="Dataset instead of the suite's (name or image folder).")
@click.option("--data-root", default=None, help="Folder holding the data (image-folder suites: its root).")
@click.option("--limit-train", type=int, default=None, help="Random N train images (seed 0).")
@click.option("--limit-test", type=int, default=None, help="Random N test images (seed 0).")
@click.option("--image-size", type=int, default=None, help="Center-crop size [default: the suite's].")
@click.option("-b", "--batch-size", type=int, default=256, help="Images per batch of the feature pass.")
@click.option("-j", "--workers", type=int, default=0, help="Data-loading workers.")
@click.option("--device", type=click.Choice(DEVICES), default="auto")
@click.option("--cache-dir", default=None, help="Feature cache folder [default: $MOCHI_CACHE/features].")
@click.option("--encoder", default=None, help="Which encoder of the checkpoints [default: query].")
@click.option("--trust-checkpoint", is_flag=True, help="Allow arbitrary unpickling of trusted checkpoints.")
@click.option("--num-gpus", type=int, default=None, help="Detection: GPUs per machine.")
@click.option("--dry-run", is_flag=True, help="Print the evaluations to run and to skip; run nothing.")
@click.pass_context
def suite_cmd(ctx: click.Context, list_suites: bool, dry_run: bool, **options) -> None:
    """Run a named set of evaluations on each CHECKPOINT; re-running finishes what is missing.

    \b
    Examples:
      mochi suite --list
      mochi suite runs/main/pretrain/moco-v2/checkpoint_0029.pth.tar \\
          runs/main/pretrain/mochi-512-512-128/checkpoint_0029.pth.tar \\
          --suite fashion-mnist --baseline resnet18 --seeds 0,1 -o runs/main/suite
      mochi suite moco.pth.tar mochi.pth.tar --suite in100 --data-root /data/imagenet -o runs/in100
    """
    from mochi.eval.suite import SuiteConfig, plan_suite, run_suite
    from mochi.eval.suites import describe

    if list_suites:
        click.echo(describe())
        return
    for name in ("suite", "output"):
        if options[name] is None:
            raise click.UsageError(f"missing --{name} (see mochi suite --help)")
    options["checkpoints"] = list(options["checkpoints"])
    cfg = SuiteConfig(**options)
    with errors_as(ctx, {}):
        if dry_run:
            plan = plan_suite(cfg)
            from mochi.eval.suite import done_requests

            done = done_requests(plan.results_dir)
            for p in plan.evaluations:
                state = "done" if p.key in done else "todo"
                seed = "" if p.seed is None else f" seed {p.seed}"
                click.echo(f"{state}  {plan.labels[p.backbone]}: {p.step.name}{seed}")
            return
        result = run_suite(cfg, on_event=click.echo)
    click.echo(result["table"], nl=False)
    click.echo(f"ran {len(result['ran'])}, skipped {len(result['skipped'])} (already done)")
    for path in result.get("outputs", []):
        click.echo(f"wrote {path}")
