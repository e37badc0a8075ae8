"""Values to the types of a dataclass's fields, and mappings to instances.

:func:`coerce` converts one value to one annotation: strings (typed on a command line) are
parsed, typed values (from TOML) are checked. :func:`from_mapping` does it for every key of a
mapping and builds the dataclass; the two call each other for nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar, Union

from rlhf_core.config.fields import (
    FALSE_WORDS,
    NONE_WORDS,
    TRUE_WORDS,
    ConfigError,
    default_of,
    init_fields,
    is_dataclass_type,
    strip_optional,
    type_hints,
    type_name,
    unknown_key_error,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = ["coerce", "from_mapping", "parse_scalar_list"]

T = TypeVar("T")


def parse_scalar_list(text: str) -> list[Any]:
    """Parse "[1, 2]" / "1,2" / "a b" style list text into raw items (strings or JSON values)."""
    s = text.strip()
    if s.startswith("[") or s.startswith("("):
        body = s.replace("(", "[").replace(")", "]") if s.startswith("(") else s
        try:
            value = json.loads(body)
        except json.JSONDecodeError:
            try:
                value = tomllib.loads(f"v = {body}")["v"]
            except tomllib.TOMLDecodeError:
                inner = s[1:-1].strip()
                return [] if not inner else [p.strip().strip("'\"") for p in inner.split(",")]
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {text!r}")
        return value
    if s == "":
        return []
    return [p.strip() for p in s.split(",")] if "," in s else s.split()


def coerce(value: Any, tp: Any, key: str) -> Any:  # noqa: C901 - one dispatch on types
    """Convert ``value`` to the annotation ``tp``; raise ConfigError naming ``key`` otherwise."""

    def fail(expected: str, extra: str = "") -> ConfigError:
        return ConfigError(
            f"config key {key!r}: expected {expected}, got {value!r} "
            f"({type(value).__name__}){extra}"
        )

    if tp is Any:
        return value
    inner, allows_none = strip_optional(tp)
    if value is None:
        if allows_none:
            return None
        raise fail(type_name(tp))
    if allows_none and isinstance(value, str) and value.strip().lower() in NONE_WORDS:
        if inner is not str or value.strip().lower() in {"none", "null"}:
            return None
    tp = inner
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if origin is Literal:
        for choice in args:
            if value == choice and type(value) is type(choice):
                return choice
        if isinstance(value, str):
            for choice in args:
                if str(choice) == value.strip() or (
                    isinstance(choice, bool) and value.strip().lower() == str(choice).lower()
                ):
                    return choice
        raise fail("one of " + ", ".join(repr(a) for a in args))

    if origin is Union or origin is types.UnionType:
        for alt in args:
            try:
                return coerce(value, alt, key)
            except ConfigError:
                continue
        raise fail(type_name(tp))

    if is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return from_mapping(tp, value, root=tp, prefix=key + ".", where="")
        raise fail(f"a table of {tp.__name__} fields")

    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            word = value.strip().lower()
            if word in TRUE_WORDS:
                return True
            if word in FALSE_WORDS:
                return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise fail("a boolean (true/false)")

    if tp is int:
        if isinstance(value, bool):
            raise fail("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            s = value.strip().replace("_", "")
            try:
                return int(s)
            except ValueError:
                try:
                    f = float(s)
                except ValueError:
                    raise fail("an integer") from None
                if math.isfinite(f) and f.is_integer():
                    return int(f)
        raise fail("an integer")

    if tp is float:
        if isinstance(value, bool):
            raise fail("a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip().replace("_", ""))
            except ValueError:
                raise fail("a number") from None
        raise fail("a number")

    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (pathlib.PurePath,)):
            return str(value)
        raise fail("a string")

    if isinstance(tp, type) and issubclass(tp, pathlib.PurePath):
        if isinstance(value, (str, os.PathLike)):
            return tp(value)
        raise fail("a path")

    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        items = value
        if isinstance(value, str):
            try:
                items = parse_scalar_list(value)
            except ValueError:
                raise fail(type_name(tp)) from None
        if not isinstance(items, (list, tuple)):
            raise fail(type_name(tp))
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(items) != len(args):
                raise fail(type_name(tp), f"; expected {len(args)} items, got {len(items)}")
            return tuple(
                coerce(v, a, f"{key}[{i}]")
                for i, (v, a) in enumerate(zip(items, args, strict=True))
            )
        elem = args[0] if args else Any
        coerced = [coerce(v, elem, f"{key}[{i}]") for i, v in enumerate(items)]
        return tuple(coerced) if (origin is tuple or tp is tuple) else coerced

    if origin in (dict, Mapping) or tp is dict:
        mapping = value
        if isinstance(value, str):
            try:
                mapping = json.loads(value)
            except json.JSONDecodeError:
                try:
                    mapping = tomllib.loads(f"v = {value}")["v"]
                except tomllib.TOMLDecodeError:
                    raise fail("a table such as {a = 1.0}") from None
        if not isinstance(mapping, Mapping):
            raise fail("a table such as {a = 1.0}")
        kt, vt = args if len(args) == 2 else (Any, Any)
        return {
            coerce(k, kt, f"{key}.<key>"): coerce(v, vt, f"{key}.{k}") for k, v in mapping.items()
        }

    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise fail(tp.__name__)
    return value


def from_mapping(
    cls: type[T],
    data: Mapping[str, Any],
    *,
    root: type,
    prefix: str,
    where: str,
    construct: bool = True,
) -> Any:
    """Coerce ``data`` into ``cls``'s fields and build it. With ``construct=False`` only keys
    and value types are checked (nested dicts are returned instead of instances).

    ``root`` is the outermost class (for key suggestions), ``prefix`` the dotted path of
    ``cls`` inside it, ``where`` what error messages start with (e.g. the file name)."""
    hints = type_hints(cls)
    fields = {f.name: f for f in init_fields(cls)}
    kwargs: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key)
        name = key.replace("-", "_")
        if name not in fields:
            raise unknown_key_error(prefix + key, cls, root, where)
        tp = hints.get(name, Any)
        inner, _ = strip_optional(tp)
        if is_dataclass_type(inner) and isinstance(value, Mapping):
            kwargs[name] = from_mapping(
                inner,
                value,
                root=root,
                prefix=prefix + name + ".",
                where=where,
                construct=construct,
            )
        else:
            try:
                kwargs[name] = coerce(value, tp, prefix + name)
            except ConfigError as exc:
                raise ConfigError(f"{where}{exc}") from None
    if not construct:
        return kwargs
    missing = [
        n for n, f in fields.items() if n not in kwargs and default_of(f) is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(
            f"{where}missing required config key(s) for {cls.__name__}: "
            + ", ".join(repr(prefix + m) for m in missing)
        )
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        scope = f" (in {prefix.rstrip('.')!r})" if prefix else ""
        raise ConfigError(f"{where}invalid {cls.__name__}{scope}: {exc}") from exc
