"""The command line shared by every command: argparse value types (a bad number is refused before any work
starts) and options built from a config dataclass, so each setting is written once."""

from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar


def _whole_number(text: str, lowest: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = lowest - 1
    if value < lowest:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {lowest}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """A whole number >= 1."""
    return _whole_number(text, 1)


def nonnegative_int(text: str) -> int:
    """A whole number >= 0."""
    return _whole_number(text, 0)


def finite_float(text: str) -> float:
    """Any finite number (guidance weights may be negative)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def expand_home(args: argparse.Namespace) -> None:
    """Expand a leading ``~`` or ``~user`` in every parsed value, in place: a path that starts with ``~`` means a home
    folder, never a folder literally named ``~``. A value whose ``~`` names no user is left as typed."""
    import os

    def expand(value: Any) -> Any:
        if isinstance(value, str) and value.startswith("~"):
            return os.path.expanduser(value)
        if isinstance(value, (list, tuple)):
            return type(value)(expand(v) for v in value)
        return value

    for name, value in vars(args).items():
        setattr(args, name, expand(value))


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


# ----------------------------------------------------------------------------------------------------
# A config dataclass is its own command line: each field carries its help (and, where needed, its flag and
# value type) in its metadata, `add_options` turns the fields into options and `from_args` reads them back.


def option(default: Any = dataclasses.MISSING, help: str = "", *, flag: str | None = None, type: Callable | None = None,
           choices: Sequence[str] | None = None, nargs: str | None = None, metavar: str | None = None,
           action: str | None = None, aliases: Sequence[str] | None = None, positional: bool = False) -> Any:
    """A dataclass field that is also a command-line option; no ``default`` makes the option required.

    ``flag`` replaces the default spelling ``--field-name`` (for a bool that defaults to True: ``--no-field-name``,
    which sets it False; ``positional``: an argument named by its place, no flag); ``aliases`` are further spellings
    the option accepts (an old name kept so scripts keep working); ``type`` validates the value (for a list, each
    item; default: the field's int/float/str); ``action="append"`` makes a list option repeatable (``--x A --x B``)
    instead of taking several values at once. A list default is copied for each instance.
    """
    meta = {"help": help, "flag": flag, "type": type, "choices": choices, "nargs": nargs, "metavar": metavar,
            "action": action, "aliases": tuple(aliases) if aliases else None, "positional": positional or None}
    meta = {k: v for k, v in meta.items() if v is not None}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass
class DryRun:
    """The ``--dry-run`` switch of a command that can print its resolved configuration instead of running."""

    dry_run: bool = option(False, "print the resolved configuration as JSON and exit")


def _value_type(hint: Any) -> tuple[Any, bool]:
    """(item type, is a sequence) of a field's type hint: ``int | None`` -> (int, False), ``list[float]`` -> (float, True)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        return _value_type(args[0])  # the first choice: str for ``str | os.PathLike | None``
    if typing.get_origin(hint) in (list, tuple, collections.abc.Sequence):
        return args[0], True
    return hint, False


def add_options(parser: Any, cls: type, names: Iterable[str] | None = None) -> dict[str, argparse.Action]:
    """Add an option to ``parser`` (or argument group) for each field of dataclass ``cls``, or for the fields ``names``.

    Each option stores into ``args.<field name>``; the help shows the default unless it already speaks of one or it
    is None.
    Returns the new actions by field name.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    actions = {}
    for name in names if names is not None else fields:
        f, meta = fields[name], fields[name].metadata
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        kind, is_sequence = _value_type(hints[name])
        kw: dict[str, Any] = {"dest": name, "help": meta["help"]}
        aliases = meta.get("aliases", ())
        if aliases:  # the usage line lists them too; the help says which spelling is the name
            kw["help"] += f" ({', '.join(aliases)}: {'aliases' if len(aliases) > 1 else 'an alias'} kept from before)"
        if kind is bool:  # a switch that turns the default around
            flag = meta.get("flag") or "--" + ("no-" if default else "") + name.replace("_", "-")
            actions[name] = parser.add_argument(flag, *aliases, action="store_false" if default else "store_true", **kw)
            continue
        kw["type"] = meta.get("type") or (kind if kind in (int, float) else None)
        for key in ("choices", "metavar"):
            if key in meta:
                kw[key] = meta[key]
        if "action" in meta:
            kw["action"] = meta["action"]
        elif is_sequence:
            kw["nargs"] = meta.get("nargs", "+")
        flag = meta.get("flag") or "--" + name.replace("_", "-")
        if meta.get("positional"):  # argparse takes a positional's dest from its name, and requires it
            flag = kw.pop("dest")
        elif default is dataclasses.MISSING:
            kw["required"] = True
        if default is not dataclasses.MISSING:
            kw["default"] = list(default) if is_sequence and default is not None else default
            if "default" not in kw["help"] and default is not None:  # None: not given, which says nothing
                kw["help"] += " (default: %(default)s)"
        actions[name] = parser.add_argument(flag, *aliases, **kw)
    return actions


T = TypeVar("T")


def from_args(cls: type[T], args: argparse.Namespace) -> T:
    """An instance of dataclass ``cls`` from the options `add_options` added; fields without one keep their default."""
    values = {}
    for f in dataclasses.fields(cls):
        if hasattr(args, f.name):
            value = getattr(args, f.name)
            values[f.name] = tuple(value) if isinstance(f.default, tuple) and value is not None else value
    return cls(**values)


def require_domain_for_weight(domain_guidance_scale: float, domain: object) -> None:
    """The flags' check, before any model loads: a nonzero ``--domain-guidance-scale`` needs a ``--domain`` model (the
    pipeline's own check, `InDomainPipeline.check_domain_weight`, covers Python callers)."""
    if domain_guidance_scale != 0 and domain is None:
        raise ValueError(f"--domain-guidance-scale is {domain_guidance_scale:g} but no --domain model was given "
                         "(pass --domain DIR or --domain-guidance-scale 0)")
