"""Click options derived from the config dataclasses, and library errors named by the flag the user typed.

A command lists, per dataclass field, its flags and help (:func:`flag`); the default, the type, whether it
is a switch and its comma-separated form come from the dataclass, so they are written once. The library
names fields in its errors (:class:`~mochi.errors.ConfigError`); :class:`Command` records the arguments as
typed and reports ``Error: <the flag typed> <message>`` (``--moco-k must be positive, got 0``).

This module, and every subcommand module's top level, imports no torch: ``mochi SUB --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import click

from mochi.constants import ARCHS, ENCODERS, STEMS
from mochi.errors import ConfigError
from mochi.eval.config import DEVICES, FEATURE_DTYPES, BackboneSpec, EvalData

RAW_ARGS = "mochi.raw_args"  # ctx.meta key: the command's arguments as typed
REPLAYED = "mochi.replayed"  # ctx.meta key: (source label, fields whose value came from it)


@dataclass(frozen=True)
class Flag:
    """How a dataclass field appears on the command line.

    ``flags``: its spellings, the first is the one errors name when none was typed (``--a/--no-a`` for a
    switch that defaults to on); ``param``: the Python name when it is not the field's (two dataclasses of
    one command share a field name); ``default_text``: shown instead of a computed default (None).
    """

    flags: tuple[str, ...]
    help: str = ""
    choices: Sequence[str] | None = None
    default_text: str | None = None
    param: str | None = None
    empty_ok: bool = False  # a list field may be given as "" (no values)


def flag(*flags: str, **kw: Any) -> Flag:
    return Flag(flags, **kw)


class CommaList(click.ParamType):
    """``"10,20,100"`` -> ``(10, 20, 100)``; a list or tuple (a default, a replayed config) passes through."""

    def __init__(self, kind: type, empty_ok: bool = False) -> None:
        self.kind, self.empty_ok = kind, empty_ok
        self.name = f"{kind.__name__.upper()},..."

    def convert(self, value: Any, param, ctx) -> tuple:
        items = value if isinstance(value, list | tuple) else [x for x in str(value).split(",") if x.strip()]
        try:
            values = tuple(self.kind(x) for x in items)
        except (TypeError, ValueError):
            self.fail(
                f"expected a comma-separated list of {self.kind.__name__} values, got {value!r}", param, ctx
            )
        if not values and not self.empty_ok:
            self.fail("give at least one value", param, ctx)
        return values


def comma_ints(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    """Click callback: ``"0,1,2"`` -> ``[0, 1, 2]`` (``None`` stays ``None``: the library's default)."""
    if value is None:
        return None
    try:
        return [int(s) for s in value.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: comma-separated integers, e.g. 0,1,2") from None


def format_default(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple | list) else str(value)


def field_types(cls: type) -> dict[str, Any]:
    """Field name -> click type: ``int``, ``float``, ``str``, ``bool`` or :class:`CommaList`."""
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        if typing.get_origin(hint) in (types.UnionType, typing.Union):
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        if typing.get_origin(hint) is tuple:
            hint = CommaList(typing.get_args(hint)[0])
        out[name] = hint
    return out


def field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def make_option(field: str, spec: Flag, kind: Any, default: Any, **kw: Any) -> Callable:
    """One click option for ``field`` (its Python name is ``spec.param`` or the field)."""
    decls = [*spec.flags, spec.param or field]
    kw = {"help": spec.help, **kw}
    if spec.default_text is not None:
        kw["show_default"] = spec.default_text
    if kind is bool:
        if not any("/" in f for f in spec.flags):
            kw["is_flag"] = True
        return click.option(*decls, default=default, **kw)
    if isinstance(kind, CommaList):
        kind = CommaList(kind.kind, spec.empty_ok)
        default = None if default is None else format_default(default)
    if spec.choices is not None:
        kind = click.Choice(list(spec.choices))
    return click.option(*decls, type=kind, default=default, **kw)


def field_options(cls: type, table: dict[str, Flag]) -> Callable:
    """Decorator: the options of ``table``'s fields of dataclass ``cls``, defaults and types from ``cls``."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kinds = field_types(cls)
    options = [
        make_option(name, spec, kinds[name], field_default(fields[name])) for name, spec in table.items()
    ]

    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


def take(cls: type, options: dict[str, Any]) -> Any:
    """Pop ``cls``'s fields out of the command's keyword arguments and build it."""
    names = [f.name for f in dataclasses.fields(cls)]
    return cls(**{name: options.pop(name) for name in names if name in options})


# ---------------------------------------------------------------------------------------------------------
# Errors: fields -> the flags typed


class Command(click.Command):
    """Keeps the arguments as typed (``ctx.meta``) and reports a :class:`ConfigError` by its flag."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[RAW_ARGS] = list(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as err:
            raise click.ClickException(describe(ctx, err)) from None


def typed_flag(raw: Sequence[str], param: click.Parameter) -> str | None:
    """The spelling of ``param`` last typed in ``raw`` (``--moco-k``, ``--moco-k=5``, ``-b32``), if any."""
    spellings = [*param.opts, *getattr(param, "secondary_opts", [])]
    found = None
    for arg in raw:
        if arg == "--":
            break
        for s in spellings:
            long_eq = s.startswith("--") and arg.startswith(s + "=")
            short_joined = len(s) == 2 and not arg.startswith("--") and arg.startswith(s)
            if arg == s or long_eq or short_joined:
                found = s
    return found


def flag_name(ctx: click.Context, field: str, params: dict[str, str] | None = None) -> str:
    """How to name ``field`` to the user: the flag typed, else where its value came from, else its flag."""
    name = (params or {}).get(field, field)
    param = next((p for p in ctx.command.params if p.name == name), None)
    if param is None:
        return field
    if isinstance(param, click.Argument):
        return param.human_readable_name
    typed = typed_flag(ctx.meta.get(RAW_ARGS, []), param)
    if typed:
        return typed
    label, replayed = ctx.meta.get(REPLAYED, ("", ()))
    if field in replayed:
        return f"{label} field {field}"
    return next((o for o in param.opts if o.startswith("--")), param.opts[0])


def describe(ctx: click.Context, err: ConfigError, params: dict[str, str] | None = None) -> str:
    """``<flag> <message>``, with every ```field``` the message mentions named by its flag too."""
    message = re.sub(r"`(\w+)`", lambda m: flag_name(ctx, m.group(1), params), err.message)
    return f"{flag_name(ctx, err.field, params)} {message}"


@contextlib.contextmanager
def errors_as(ctx: click.Context, params: dict[str, str]) -> Iterator[None]:
    """Report a :class:`ConfigError` of the body with ``params`` (field -> the command's Python name)."""
    try:
        yield
    except ConfigError as err:
        raise click.ClickException(describe(ctx, err, params)) from None


# ---------------------------------------------------------------------------------------------------------
# The options every command reading a backbone shares (mochi.eval.config.BackboneSpec's fields)

BACKBONE_FLAGS = {
    "random_init": flag("--random-init", help="Evaluate a random-init --arch (baseline)."),
    "pixels": flag(
        "--pixels", help="Evaluate the raw pixels (baseline): the evaluation transform's output, flattened."
    ),
    "arch": flag(
        "-a", "--arch", choices=list(ARCHS), default_text="inferred",
        help="Architecture: built by --random-init, or asserted against the checkpoint's.",
    ),
    "small_stem": flag("--small-stem", help="--random-init: 3x3 stride-1 conv1, no max-pool."),
    "init_seed": flag("--init-seed", help="--random-init: seed of the initialisation."),
    "encoder": flag(
        "--encoder", choices=ENCODERS, default_text="query (MoCo), teacher (DINO)",
        help="Which network of a two-encoder checkpoint: query/key (MoCo) or teacher/student (DINO).",
    ),
    "prefix": flag("--prefix", help="Backbone key prefix (e.g. module.encoder_q.), overriding detection."),
    "stem": flag(
        "--stem", choices=list(STEMS), default_text="from the checkpoint's settings",
        help="A 3x3 conv1's stem: small (padding 1) or small-pad2 (solo-learn CIFAR).",
    ),
    "trust_checkpoint": flag(
        "--trust-checkpoint",
        help="Allow arbitrary unpickling (can run code from the file): only for files from a trusted source.",
    ),
}  # fmt: skip
# What export / inspect take: the fields that say where the backbone is in a checkpoint.
CHECKPOINT_FIELDS = ("encoder", "prefix", "arch", "stem", "trust_checkpoint")


def backbone_options(fields: Sequence[str] = tuple(BACKBONE_FLAGS)) -> Callable:
    return field_options(BackboneSpec, {name: BACKBONE_FLAGS[name] for name in fields})


DATA_FLAGS = {
    "data": flag(
        "--data",
        help="fashion-mnist | fashion-mnist-embedded | cifar10 | cifar100 | stl10 | PATH (image folder).",
    ),
    "data_root": flag("--data-root", help="Folder holding the dataset files."),
    "subset": flag("--subset", help="Image folders: imagenet100, or a file of class names."),
    "train_split": flag("--train-split", help="Split the classifier learns from."),
    "test_split": flag("--test-split", help="Split reported (image folders: usually val)."),
    "limit_train": flag("--limit-train", help="Random N train images (seed 0)."),
    "limit_test": flag("--limit-test", help="Random N test images (seed 0)."),
    "image_size": flag(
        "--image-size",
        help="Center-crop size (the pretraining size or larger: suite fashion-mnist evaluates 32 px runs "
        "at 64).",
    ),
    "crop_fraction": flag(
        "--crop-fraction", default_text="0.875 (Resize 256, CenterCrop 224) from 128 px, else 1.0",
        help="Crop / resize ratio.",
    ),
    "batch_size": flag("-b", "--batch-size", help="Images per batch."),
    "workers": flag("-j", "--workers", help="Data-loading workers."),
    "device": flag("--device", choices=DEVICES),
    "amp": flag("--amp/--no-amp", help="Mixed precision on GPU (bf16 where supported)."),
    "cache_dir": flag(
        "--cache-dir",
        default_text="$MOCHI_CACHE/features or ~/.cache/mochi/features",
        help="Feature cache folder.",
    ),
    "no_cache": flag("--no-cache", help="Extract features in memory, without the cache."),
    "dtype": flag(
        "--feature-dtype", choices=FEATURE_DTYPES,
        help="Storage type of cached features (float16 halves disk and memory).",
    ),
    "verify_cache": flag(
        "--verify-cache", help="Hash cached features on every hit (default: only when size or time differ)."
    ),
}  # fmt: skip


def data_options(f: Callable) -> Callable:
    """EvalData's options (``progress`` is ``--quiet``'s opposite) plus ``-o/--results``."""
    f = click.option("-q", "--quiet", is_flag=True, help="No progress bar.")(f)
    f = click.option(
        "-o", "--results", default="results", help="Results folder: one JSON record per evaluation."
    )(f)
    return field_options(EvalData, DATA_FLAGS)(f)


def take_data(options: dict[str, Any]) -> Any:
    data = take(EvalData, options)
    data.progress = not options.pop("quiet")
    return data
