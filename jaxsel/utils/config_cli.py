"""One argparse pattern for scripts: a frozen config dataclass turned into ``--flags``.

Every field ``some_name`` becomes ``--some-name`` with the field's default. The flag's type comes
from the annotation: ``bool`` (``--flag`` sets True; a True default also gets ``--no-flag``),
``int``, ``float``, ``str``, ``pathlib.Path``, ``X | None`` (the flag parses as ``X``) and
``tuple[X, ...]`` (``nargs="+"``). Help text and choices come from the field's metadata (:func:`flag`)::

    @dataclasses.dataclass(frozen=True)
    class Config:
        steps: int = 100
        pool: str = flag("max", choices=("max", "avg", "soft"))
        seeds: tuple[int, ...] = (0, 1)
        out: str = flag("results/x", "output folder")

    cfg = parse_config(Config, description=__doc__)

The config's own ``__post_init__`` validates the values; a ``ValueError`` it raises is reported as an
argparse error naming the flag's field. A flag that keeps a comma-separated string (``--lengths
2048,4096``) is a ``str`` field read with :func:`comma_list` there.

``flag(..., positional=True)`` makes a field a positional argument instead (a tuple field takes
any number of values, ``nargs="*"``, when it has a default). ``parse_config(..., presets=...)``
turns bool fields into presets: ``--quick`` replaces the defaults with the preset's values, and the
flags given on the command line still win over them.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C")
T = TypeVar("T")

_SCALARS = (bool, int, float, str, Path)


def flag(
    default: Any,
    help: str | None = None,
    *,
    choices: Sequence[Any] | None = None,
    positional: bool = False,
) -> Any:
    """A dataclass field with ``default`` whose ``--flag`` gets ``help`` text and ``choices``.

    Choices are only offered on the command line; validate them in the config's ``__post_init__``.
    ``default=dataclasses.MISSING`` makes the flag required. ``positional=True`` makes the field a
    positional argument (optional when it has a default: ``nargs="?"``, or ``"*"`` for a tuple).
    """
    metadata: dict[str, Any] = {}
    if help is not None:
        metadata["help"] = help
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if positional:
        metadata["positional"] = True
    return dataclasses.field(default=default, metadata=metadata)


def comma_list(text: str, field: str, item: Callable[[str], T] = str) -> tuple[T, ...]:  # type: ignore[assignment]
    """The items of a comma-separated flag value, each read by ``item`` (empty items are skipped).

    For flags that keep a string such as ``--lengths 2048,4096``: call it in the config's
    ``__post_init__``, so a bad value is an argparse error; the ``ValueError`` names ``field``.
    """
    try:
        return tuple(item(s.strip()) for s in text.split(",") if s.strip())
    except (ValueError, KeyError) as e:
        raise ValueError(f"{field}: bad item in {text!r}: {e}") from None


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def add_config_flags(
    parser: argparse.ArgumentParser, config_cls: type, *, only_given: bool = False
) -> None:
    """Adds one ``--flag`` per field of the dataclass ``config_cls`` to ``parser``.

    With ``only_given=True`` the parsed namespace holds only the flags given on the command line
    (defaults are left to the config or to a preset, see :func:`config_from_args`'s ``base``).
    """
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"config_cls must be a dataclass, got {config_cls!r}")
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        if not f.init:
            continue
        tp = _unwrap_optional(hints[f.name])
        default = f.default
        if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        kw: dict[str, Any] = {"help": f.metadata.get("help")}
        if only_given:
            kw["default"] = argparse.SUPPRESS
        elif default is dataclasses.MISSING:
            kw["required"] = True
        else:
            kw["default"] = default
        if "choices" in f.metadata:
            kw["choices"] = list(f.metadata["choices"])
        positional = f.metadata.get("positional", False)
        if tp is bool:
            if positional:
                raise TypeError(f"field {f.name!r}: a bool cannot be a positional argument")
            kw.pop("choices", None)
            kw["action"] = argparse.BooleanOptionalAction if default is True else "store_true"
        elif typing.get_origin(tp) is tuple:
            args = typing.get_args(tp)
            if len(args) != 2 or args[1] is not Ellipsis or args[0] not in _SCALARS:
                raise TypeError(f"field {f.name!r}: unsupported tuple type {tp}")
            kw.update(type=args[0], nargs="+")
        elif tp in _SCALARS:
            kw["type"] = tp
        else:
            raise TypeError(f"field {f.name!r}: unsupported type {tp} for a command-line flag")
        if positional:
            if default is not dataclasses.MISSING:
                kw["nargs"] = "*" if kw.get("nargs") == "+" else "?"
            kw.pop("required", None)  # argparse: required-ness of a positional comes from nargs
            parser.add_argument(f.name, **kw)
        else:
            parser.add_argument(_flag(f.name), **kw)


def config_from_args(
    config_cls: type[C],
    args: argparse.Namespace,
    *,
    base: dict[str, Any] | None = None,
    **overrides: Any,
) -> C:
    """The ``config_cls`` instance of parsed ``args`` (fields only; other attributes are ignored).

    Precedence: ``overrides`` over the parsed flags over ``base`` (a preset) over the defaults.
    """
    values = dict(base or {})
    for f in dataclasses.fields(config_cls):  # type: ignore[arg-type]
        if f.init and hasattr(args, f.name):
            v = getattr(args, f.name)
            values[f.name] = tuple(v) if isinstance(v, list) else v
    return config_cls(**(values | overrides))


def parse_config(
    config_cls: type[C],
    argv: Sequence[str] | None = None,
    *,
    description: str | None = None,
    parser: argparse.ArgumentParser | None = None,
    presets: Mapping[str, Mapping[str, Any]] | None = None,
) -> C:
    """Parses ``argv`` (default: ``sys.argv[1:]``) into a ``config_cls`` instance.

    Pass ``parser`` to add flags of your own first; they are parsed and then ignored here (use
    :func:`add_config_flags` and :func:`config_from_args` to get them back).

    ``presets`` maps the name of a bool field (say ``quick``) to field values: when ``--quick`` is
    given, those values replace the defaults (a later preset over an earlier one), and the flags
    given on the command line still win over them. The bool field itself records the choice.
    """
    presets = presets or {}
    hints = typing.get_type_hints(config_cls) if presets else {}
    names = {f.name for f in dataclasses.fields(config_cls) if f.init}  # type: ignore[arg-type]
    for name, values in presets.items():
        if name not in names or hints[name] is not bool:
            raise TypeError(f"preset {name!r} must name a bool field of {config_cls.__name__}")
        unknown = sorted(set(values) - names)
        if unknown:
            raise TypeError(f"preset {name!r}: no field {unknown} in {config_cls.__name__}")
    p = parser or argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_flags(p, config_cls, only_given=bool(presets))
    args = p.parse_args(argv)
    base: dict[str, Any] = {}
    for name, values in presets.items():
        if getattr(args, name, False):
            base.update(values)
    try:
        return config_from_args(config_cls, args, base=base)
    except ValueError as e:
        p.error(str(e))
        raise  # unreachable: p.error exits
