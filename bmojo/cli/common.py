"""Helpers shared by the subcommands: typed values from strings, ModelConfig overrides, dataclass flags."""
from __future__ import annotations

import argparse
import typing
from dataclasses import MISSING, fields

from bmojo.config import ConfigError, ModelConfig


def parse_value(text: str, typ):
    """Parse a command-line string into a dataclass field's type."""
    origin = typing.get_origin(typ)
    args = [a for a in typing.get_args(typ) if a is not type(None)]
    if text.lower() == "none" and (origin is typing.Union or "None" in str(typ)):
        return None
    base = args[0] if args else typ
    if isinstance(base, str):
        base = {"int": int, "float": float, "bool": bool, "str": str}.get(base.split(" ")[0], str)
    if base is bool or str(typ).startswith("bool"):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true/false, got {text!r}")
    if typing.get_origin(base) is tuple or str(typ).startswith("tuple"):
        elem = float if "float" in str(typ) else int
        return tuple(elem(x) for x in text.split(",") if x)
    for cast in (int, float):
        if base is cast or str(typ).startswith(cast.__name__):
            return cast(text)
    return text


def model_overrides(items: list[str]) -> dict:
    types = {f.name: f.type for f in fields(ModelConfig)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in types:
            raise ConfigError(f"--model-opt {item!r}: expected FIELD=VALUE with FIELD one of {sorted(types)}")
        try:
            out[key] = parse_value(value, types[key])
        except ValueError as e:
            raise ConfigError(f"--model-opt {key}: {e}") from None
    return out


def add_dataclass_args(parser, cls, skip=(), defaults: dict | None = None) -> None:
    """One --flag per field of the dataclass `cls` (help from the field's metadata), stored as strings under
    `cls.__name__ + "__" + field` and turned into typed values by `dataclass_from_args`."""
    g = parser.add_argument_group(f"{cls.__name__} options")
    for f in fields(cls):
        if f.name in skip:
            continue
        default = (defaults or {}).get(f.name, f.default if f.default is not MISSING else None)
        flag = {"nargs": "?", "const": "true"} if f.type in (bool, "bool") else {}  # `--compile` = `--compile true`
        g.add_argument(f"--{f.name.replace('_', '-')}", dest=f"{cls.__name__}__{f.name}", default=None, metavar="V",
                       help=f"{f.metadata.get('help', '')} (default: {default})", **flag)


def dataclass_from_args(cls, args: argparse.Namespace, defaults: dict | None = None, **fixed):
    types = {f.name: f.type for f in fields(cls)}
    kw = dict(defaults or {})
    for key, value in vars(args).items():
        if key.startswith(cls.__name__ + "__") and value is not None:
            name = key.split("__", 1)[1]
            try:
                kw[name] = parse_value(value, types[name])
            except ValueError as e:
                raise ConfigError(f"--{name.replace('_', '-')}: {e}") from None
    return cls(**{**kw, **fixed})


def number_list(text: str, cast, flag: str, ok=lambda v: True, what: str = "numbers") -> tuple:
    """'1,2,4' -> (1, 2, 4) with `cast`; '' -> ().  A value that does not parse or fails `ok` is a ConfigError naming
    the flag, the value and what is allowed."""
    out = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        try:
            value = cast(item)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise ConfigError(f"{flag}: {item!r} is not allowed; expected comma-separated {what}")
        out.append(value)
    return tuple(out)
