"""Configs as validated dataclasses: TOML files, ``key=value`` overrides and argparse options.

Every config in rlhf_core is a plain :func:`dataclasses.dataclass` whose fields carry
``metadata={"help": "..."}`` and whose ``__post_init__`` raises ``ValueError`` naming the field,
its value and the fix. This module is generic over such classes:

- :func:`load_config` builds an instance from defaults, an optional TOML file and overrides.
- :func:`add_dataclass_arguments` adds one ``--field`` option per field (dotted names for
  nested dataclasses, e.g. ``--optim.lr``) whose help documents the field, its type and default;
  :func:`overrides_from_namespace` turns the parsed options back into overrides.
- :func:`dump_config` writes the resolved config as TOML that :func:`load_config` reads back.

Type coercion follows the field annotations: ``int``, ``float``, ``bool``, ``str``,
``pathlib.Path``, ``Optional[X]`` / ``X | None``, ``Literal[...]``, ``tuple[X, ...]``,
``tuple[X, Y]``, ``list[X]``, ``dict[str, X]`` and nested dataclasses. Strings (from the command
line) are parsed; typed TOML values are checked. Unknown keys are errors naming the key and the
closest field. All errors here are :class:`ConfigError` (a ``ValueError``).

Precedence, lowest first: field defaults < TOML file < overrides.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import os
import pathlib
import re
import sys
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, TypeVar, Union

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "ConfigError",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "parse_overrides",
    "add_dataclass_arguments",
    "overrides_from_namespace",
    "dump_config",
    "dumps_toml",
    "field_docs",
]

T = TypeVar("T")

_NONE_WORDS = {"none", "null", "~"}
_TRUE_WORDS = {"true", "1", "yes", "on", "y", "t"}
_FALSE_WORDS = {"false", "0", "no", "off", "n", "f"}


class ConfigError(ValueError):
    """A config could not be built: unknown key, wrong type, unreadable file, or a field that
    failed its own validation. The message names the key (dotted for nested fields), what was
    expected and what came."""


# --------------------------------------------------------------------------------------------
# introspection


def _require_dataclass(cls: Any) -> None:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"expected a dataclass type, got {cls!r}")


def _hints(cls: type) -> dict[str, Any]:
    """Resolved annotations of ``cls`` (handles ``from __future__ import annotations``)."""
    try:
        return typing.get_type_hints(cls)
    except Exception as exc:  # pragma: no cover - depends on user code
        raise TypeError(f"cannot resolve the type annotations of {cls.__name__}: {exc}") from exc


def _init_fields(cls: type) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if f.init]


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    """(inner type, whether None is allowed)."""
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        allows_none = len(args) < len(typing.get_args(tp))
        if len(args) == 1:
            return args[0], allows_none
        return Union[tuple(args)], allows_none  # noqa: UP007
    return tp, False


def _type_name(tp: Any) -> str:
    inner, optional = _strip_optional(tp)
    if optional:
        return f"{_type_name(inner)} | None"
    origin = typing.get_origin(inner)
    args = typing.get_args(inner)
    if origin is Literal:
        return "{" + ",".join(str(a) for a in args) + "}"
    if origin is Union or origin is types.UnionType:
        return " | ".join(_type_name(a) for a in args)
    if origin in (tuple, list, dict):
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return f"tuple[{_type_name(args[0])}, ...]"
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if isinstance(inner, type):
        return inner.__name__
    return str(inner)


def _default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def field_docs(cls: type, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """Flattened ``(dotted name, type name, default, help)`` for every init field of ``cls``,
    nested dataclasses expanded. ``default`` is ``dataclasses.MISSING`` for required fields."""
    _require_dataclass(cls)
    hints = _hints(cls)
    out: list[tuple[str, str, Any, str]] = []
    for f in _init_fields(cls):
        tp = hints.get(f.name, Any)
        name = prefix + f.name
        inner, _ = _strip_optional(tp)
        if _is_dataclass_type(inner):
            out.extend(field_docs(inner, prefix=name + "."))
            continue
        out.append((name, _type_name(tp), _default_of(f), str(f.metadata.get("help", ""))))
    return out


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys: list[str] = []
    hints = _hints(cls)
    for f in _init_fields(cls):
        inner, _ = _strip_optional(hints.get(f.name, Any))
        keys.append(prefix + f.name)
        if _is_dataclass_type(inner):
            keys.extend(_all_keys(inner, prefix + f.name + "."))
    return keys


def _unknown_key_error(key: str, cls: type, root: type, where: str) -> ConfigError:
    candidates = _all_keys(root)
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
    if not close:
        # also try matching only the last component (e.g. "lr" for "optim.lr")
        tail = key.rsplit(".", 1)[-1]
        close = [c for c in candidates if c.rsplit(".", 1)[-1] == tail][:1] or (
            difflib.get_close_matches(tail, candidates, n=1, cutoff=0.6)
        )
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"{where}unknown config key {key!r} for {cls.__name__}{hint}")


# --------------------------------------------------------------------------------------------
# coercion


def _parse_scalar_list(text: str) -> list[Any]:
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


def _coerce(value: Any, tp: Any, key: str) -> Any:  # noqa: C901 - one dispatch on types
    """Convert ``value`` to the annotation ``tp``; raise ConfigError naming ``key`` otherwise."""

    def fail(expected: str, extra: str = "") -> ConfigError:
        return ConfigError(
            f"config key {key!r}: expected {expected}, got {value!r} "
            f"({type(value).__name__}){extra}"
        )

    if tp is Any:
        return value
    inner, allows_none = _strip_optional(tp)
    if value is None:
        if allows_none:
            return None
        raise fail(_type_name(tp))
    if allows_none and isinstance(value, str) and value.strip().lower() in _NONE_WORDS:
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
        errors = []
        for alt in args:
            try:
                return _coerce(value, alt, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise fail(_type_name(tp))

    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return _from_mapping(tp, value, root=tp, prefix=key + ".", where="")
        raise fail(f"a table of {tp.__name__} fields")

    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            word = value.strip().lower()
            if word in _TRUE_WORDS:
                return True
            if word in _FALSE_WORDS:
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
                items = _parse_scalar_list(value)
            except ValueError:
                raise fail(_type_name(tp)) from None
        if not isinstance(items, (list, tuple)):
            raise fail(_type_name(tp))
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(items) != len(args):
                raise fail(_type_name(tp), f"; expected {len(args)} items, got {len(items)}")
            return tuple(
                _coerce(v, a, f"{key}[{i}]")
                for i, (v, a) in enumerate(zip(items, args, strict=True))
            )
        elem = args[0] if args else Any
        coerced = [_coerce(v, elem, f"{key}[{i}]") for i, v in enumerate(items)]
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
            _coerce(k, kt, f"{key}.<key>"): _coerce(v, vt, f"{key}.{k}") for k, v in mapping.items()
        }

    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise fail(tp.__name__)
    return value


# --------------------------------------------------------------------------------------------
# building


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{"a.b": 1, "c": 2} -> {"a": {"b": 1}, "c": 2} (later keys win)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        parts = str(key).split(".")
        node = out
        for p in parts[:-1]:
            child = node.get(p)
            if not isinstance(child, dict):
                child = {}
                node[p] = child
            node = child
        node[parts[-1]] = value
    return out


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def _from_mapping(
    cls: type[T],
    data: Mapping[str, Any],
    *,
    root: type,
    prefix: str,
    where: str,
    construct: bool = True,
) -> Any:
    """Coerce ``data`` into ``cls``'s fields and build it. With ``construct=False`` only keys
    and value types are checked (nested dicts are returned instead of instances)."""
    hints = _hints(cls)
    fields = {f.name: f for f in _init_fields(cls)}
    kwargs: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key)
        name = key.replace("-", "_")
        if name not in fields:
            raise _unknown_key_error(prefix + key, cls, root, where)
        tp = hints.get(name, Any)
        inner, _ = _strip_optional(tp)
        if _is_dataclass_type(inner) and isinstance(value, Mapping):
            kwargs[name] = _from_mapping(
                inner,
                value,
                root=root,
                prefix=prefix + name + ".",
                where=where,
                construct=construct,
            )
        else:
            try:
                kwargs[name] = _coerce(value, tp, prefix + name)
            except ConfigError as exc:
                raise ConfigError(f"{where}{exc}") from None
    if not construct:
        return kwargs
    missing = [
        n for n, f in fields.items() if n not in kwargs and _default_of(f) is dataclasses.MISSING
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


def config_from_dict(cls: type[T], data: Mapping[str, Any], *, source: str = "") -> T:
    """Build ``cls`` from a (possibly nested, possibly dotted-key) mapping.

    Missing fields take their defaults; ``source`` (e.g. a file name) prefixes error messages.
    """
    _require_dataclass(cls)
    where = f"{source}: " if source else ""
    return _from_mapping(cls, _nest_any(data), root=cls, prefix="", where=where)


def _nest_any(data: Mapping[str, Any]) -> dict[str, Any]:
    """Expand the dotted keys of ``data`` (its top level only: values that are tables are kept
    as they are, so keys containing dots inside a ``dict`` field survive) and merge them with
    tables given under the same name."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        out = _deep_merge(out, _nest({str(k): v}))
    return out


def parse_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """Parse ``["--a.b", "1", "--flag", "c=2", "--d=x"]`` into ``{"a.b": "1", "flag": "true",
    "c": "2", "d": "x"}``. A ``--key`` followed by another ``--key`` (or nothing) means
    ``true``, so boolean switches can be written bare. Dashes in names become underscores."""
    items = list(overrides)
    out: dict[str, str] = {}
    i = 0
    while i < len(items):
        tok = str(items[i])
        if tok.startswith("--"):
            body = tok[2:]
            if not body:
                raise ConfigError("empty override '--'")
            if "=" in body:
                key, value = body.split("=", 1)
                i += 1
            elif i + 1 < len(items) and not str(items[i + 1]).startswith("--"):
                key, value = body, str(items[i + 1])
                i += 2
            else:
                key, value = body, "true"
                i += 1
        elif "=" in tok:
            key, value = tok.split("=", 1)
            i += 1
        else:
            raise ConfigError(f"cannot parse override {tok!r}: write 'key=value' or '--key value'")
        key = key.strip().replace("-", "_")
        if not key:
            raise ConfigError(f"override {tok!r} has an empty key")
        out[key] = value
    return out


def _read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = pathlib.Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}") from exc


def load_config(
    cls: type[T],
    toml_path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    *,
    section: str | None = None,
) -> T:
    """Build a validated ``cls`` from its defaults, a TOML file and overrides.

    Args:
        cls: a dataclass type whose fields carry ``metadata={"help": ...}``.
        toml_path: optional TOML file; its keys are field names (tables for nested dataclasses,
            or dotted keys).
        overrides: ``["--key", "value", "key=value", ...]`` strings, or a mapping of dotted
            names to values (strings are parsed, typed values checked).
        section: read only this top-level table of the TOML file (e.g. ``"ppo"`` in a file with
            several configs); a missing section is an error.

    Raises:
        ConfigError: unknown key (with the closest field suggested), a value of the wrong type,
            an unreadable file, or the dataclass's own validation failing.
    """
    _require_dataclass(cls)
    merged: dict[str, Any] = {}
    source = ""
    if toml_path is not None:
        data = _read_toml(toml_path)
        source = str(toml_path)
        if section is not None:
            if section not in data or not isinstance(data[section], dict):
                raise ConfigError(f"{source}: no [{section}] table")
            data = data[section]
        merged = _nest_any(data)
        # check keys and types of the file alone first so that its errors name the file
        _from_mapping(cls, merged, root=cls, prefix="", where=f"{source}: ", construct=False)
    if overrides:
        if isinstance(overrides, Mapping):
            flat: Mapping[str, Any] = {str(k).replace("-", "_"): v for k, v in overrides.items()}
        else:
            if isinstance(overrides, str):
                raise TypeError("overrides must be a list of strings or a mapping, not a str")
            flat = parse_overrides(overrides)
        merged = _deep_merge(merged, _nest_any(flat))
        source = f"{source} + overrides" if source else "overrides"
    return config_from_dict(cls, merged, source=source)


def config_to_dict(obj: Any) -> dict[str, Any]:
    """Nested plain dict of a config instance (tuples as lists, paths as strings)."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"expected a dataclass instance, got {type(obj).__name__}")

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v) if f.init}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, Mapping):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, pathlib.PurePath):
            return str(v)
        return v

    result = plain(obj)
    assert isinstance(result, dict)
    return result


# --------------------------------------------------------------------------------------------
# argparse


def add_dataclass_arguments(
    parser: argparse.ArgumentParser | Any,
    cls: type,
    *,
    prefix: str = "",
    group_title: str | None = None,
) -> None:
    """Add one ``--name`` option per field of ``cls`` (``--nested.name`` for nested
    dataclasses; ``--some-name`` is accepted as well as ``--some_name``).

    Options are parsed as strings and default to "not given" (``argparse.SUPPRESS``), so only
    what the user typed ends up in the namespace; pass it through
    :func:`overrides_from_namespace` and :func:`load_config` to coerce and validate. Each help
    line states the field's help text, type and default. Boolean fields may be given bare
    (``--flag`` means true).
    """
    _require_dataclass(cls)
    title = group_title or f"{cls.__name__} options"
    group = parser.add_argument_group(title) if hasattr(parser, "add_argument_group") else parser
    hints = _hints(cls)
    for f in _init_fields(cls):
        tp = hints.get(f.name, Any)
        inner, _ = _strip_optional(tp)
        dotted = prefix + f.name
        if _is_dataclass_type(inner):
            add_dataclass_arguments(
                parser, inner, prefix=dotted + ".", group_title=f"{dotted} ({inner.__name__})"
            )
            continue
        default = _default_of(f)
        default_txt = "required" if default is dataclasses.MISSING else f"default: {_fmt(default)}"
        text = str(f.metadata.get("help", "")).strip()
        help_txt = f"{text} [{_type_name(tp)}; {default_txt}]".strip().replace("%", "%%")
        names = [f"--{dotted}"]
        if "_" in dotted:
            names.append("--" + dotted.replace("_", "-"))
        kwargs: dict[str, Any] = {
            "dest": dotted,
            "default": argparse.SUPPRESS,
            "help": help_txt,
            "metavar": _metavar(inner),
        }
        if inner is bool:
            kwargs.update(nargs="?", const="true")
        group.add_argument(*names, **kwargs)


def _metavar(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "{" + ",".join(str(a) for a in typing.get_args(tp)) + "}"
    if tp is bool:
        return "BOOL"
    if tp is int:
        return "INT"
    if tp is float:
        return "FLOAT"
    if origin in (list, tuple):
        return "LIST"
    if origin is dict:
        return "TABLE"
    return "VALUE"


def _fmt(v: Any) -> str:
    if isinstance(v, str):
        return repr(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return type(v).__name__ + "()"
    if isinstance(v, tuple):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def overrides_from_namespace(namespace: argparse.Namespace, cls: type) -> dict[str, str]:
    """The dotted-name overrides the user gave, from a namespace parsed by a parser that
    :func:`add_dataclass_arguments` filled for ``cls`` (other attributes are ignored)."""
    keys = set(_all_keys(cls))
    return {k: v for k, v in vars(namespace).items() if k in keys}


# --------------------------------------------------------------------------------------------
# TOML writing

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(k: str) -> str:
    return k if _BARE_KEY.match(k) else _toml_str(k)


def _toml_str(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_value(v: Any, key: str) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, pathlib.PurePath):
        return _toml_str(str(v))
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x, key) for x in v) + "]"
    if isinstance(v, Mapping):
        inner = ", ".join(
            f"{_toml_key(str(k))} = {_toml_value(x, key)}" for k, x in v.items() if x is not None
        )
        return "{ " + inner + " }" if inner else "{}"
    if v is None:
        raise ConfigError(f"cannot write None inside a list or table for key {key!r} in TOML")
    raise ConfigError(f"cannot write {type(v).__name__} value of key {key!r} as TOML")


def dumps_toml(data: Mapping[str, Any]) -> str:
    """Serialise a nested mapping to TOML text. Scalars and arrays come first, then one
    ``[table]`` per nested mapping. ``None`` values (TOML has no null) are written as comments
    ``# key = none``, so reading the file back leaves the field at its default."""

    lines: list[str] = []

    def emit(table: Mapping[str, Any], path: list[str]) -> None:
        scalars = [(k, v) for k, v in table.items() if not isinstance(v, Mapping)]
        tables = [(k, v) for k, v in table.items() if isinstance(v, Mapping)]
        if path and (scalars or not tables):
            if lines:
                lines.append("")
            lines.append("[" + ".".join(_toml_key(p) for p in path) + "]")
        for k, v in scalars:
            if v is None:
                lines.append(f"# {_toml_key(str(k))} = none")
            else:
                dotted = ".".join([*path, str(k)])
                lines.append(f"{_toml_key(str(k))} = {_toml_value(v, dotted)}")
        for k, v in tables:
            emit(v, [*path, str(k)])

    emit(data, [])
    return "\n".join(lines) + "\n"


def dump_config(
    obj: Any, path: str | os.PathLike[str], *, header: str | None = None
) -> pathlib.Path:
    """Write the resolved config ``obj`` (a dataclass instance, or a mapping) as TOML to
    ``path``, creating parent folders. The file reads back with :func:`load_config` into an
    equal object. Returns the path."""
    data = config_to_dict(obj) if not isinstance(obj, Mapping) else dict(obj)
    text = dumps_toml(data)
    if header:
        text = "".join(f"# {line}\n" for line in header.splitlines()) + text
    p = pathlib.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + f".tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, p)
    return p
