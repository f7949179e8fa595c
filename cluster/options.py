"""Options declared once: a dataclass field per option, its flag built from the field.

`option()` makes a field whose metadata holds what its command-line flag needs (help,
group, choices, metavar, older names); `add_option_flags` turns a dataclass's option
fields into argparse flags, `options_from_args` reads them back.  Unset flags parse to
None, so the dataclass's own default decides and `--help` shows it.  Every job's options
(train/config.py, infer/options.py) are declared this way, so a default or a help text
lives in exactly one place.

Imports nothing heavy: the command line reads it at parse time.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from dataclasses import field

_TYPES = {int: int, float: float, str: str}


def option(default, help: str, group: str = "", *, choices=None, metavar: str | None = None,
           **extra):
    """A dataclass field that is also a command-line flag (`--field-name`).

    `extra` goes into the metadata as it is (e.g. training's `on_resume` rule).
    """
    return field(default=default, metadata={
        "help": help, "group": group, "choices": choices, "metavar": metavar, **extra})


def option_fields(cls) -> tuple[dataclasses.Field, ...]:
    """The fields of `cls` declared with `option()`, in field order."""
    return tuple(f for f in dataclasses.fields(cls) if "help" in f.metadata)


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def add_option_flags(parser, cls, *, groups: dict | None = None, old_names: dict | None = None,
                     exclude=()) -> None:
    """One flag per option field of `cls` (but those named in `exclude`, e.g. already added from
    another option set); `groups` maps a field's group to an argparse group (default: the parser);
    `old_names` maps a field to the value flags it replaced, kept hidden for one release with a
    deprecation note on use."""
    types_ = typing.get_type_hints(cls)
    for f in option_fields(cls):
        if f.name in exclude:
            continue
        target = (groups or {}).get(f.metadata["group"], parser)
        target.add_argument(flag_name(f.name), **_flag_kwargs(f, types_[f.name]))
        for old in (old_names or {}).get(f.name, ()):
            add_old_flag(parser, old, flag_name(f.name), dest=f.name, **_value_kwargs(f, types_[f.name]))


def add_old_flag(parser, old: str, new: str, **kwargs) -> None:
    """`old`, a value flag renamed `new`: still parsed into `new`'s dest for one release, hidden
    from --help, with a deprecation note on stderr when used."""
    parser.add_argument(old, help=argparse.SUPPRESS, default=argparse.SUPPRESS, action=_deprecated(new),
                        **kwargs)


def options_from_args(cls, args: argparse.Namespace) -> dict:
    """{field: value} of the option flags of `cls` that were given (unset ones are left out)."""
    values = {f.name: getattr(args, f.name, None) for f in option_fields(cls)}
    return {name: value for name, value in values.items() if value is not None}


def options_of(cls, config) -> dict:
    """The values of `cls`'s option fields on `config` (a dataclass that has them): how one job's
    configuration hands a shared option set to another without copying fields by hand."""
    return {f.name: getattr(config, f.name) for f in option_fields(cls)}


def _flag_kwargs(f: dataclasses.Field, hint) -> dict:
    help_text = f.metadata["help"]
    if "default:" not in help_text:
        shown = "unset" if f.default is None else f.default
        help_text += f" (default: {shown})"
    kwargs = {"default": None, "help": help_text, "dest": f.name}
    if _base_type(hint) is bool:
        return kwargs | {"action": argparse.BooleanOptionalAction}
    if _base_type(hint) is list:
        kwargs["action"] = "append"
    return kwargs | _value_kwargs(f, hint)


def _value_kwargs(f: dataclasses.Field, hint) -> dict:
    base = _base_type(hint)
    kwargs = {"type": str if base is list else _TYPES[base]}
    if f.metadata["choices"]:
        kwargs["choices"] = f.metadata["choices"]
    if f.metadata["metavar"]:
        kwargs["metavar"] = f.metadata["metavar"]
    return kwargs


def _base_type(hint):
    """int for `int` and `int | None`; list for `list[str] | None`."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] \
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else [hint]
    base = args[0]
    return typing.get_origin(base) or base


def _deprecated(new_flag: str):
    class DeprecatedFlag(argparse.Action):
        """An older name of a flag: works, and says once on stderr what replaced it."""

        def __call__(self, parser, namespace, values, option_string=None):
            print(f"cycledrums: {option_string} is deprecated and goes in the next release; use "
                  f"{new_flag}", file=sys.stderr)
            setattr(namespace, self.dest, values)

    return DeprecatedFlag
