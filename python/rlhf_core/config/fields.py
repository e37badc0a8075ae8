"""What a config dataclass looks like from outside: its init fields, their resolved types,
defaults and help texts, and the words that stand for none / true / false.

Also home of :class:`ConfigError`, the one error of the package.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, Union

__all__ = [
    "ConfigError",
    "NONE_WORDS",
    "TRUE_WORDS",
    "FALSE_WORDS",
    "BOOL_WORDS",
    "require_dataclass",
    "type_hints",
    "init_fields",
    "is_dataclass_type",
    "strip_optional",
    "type_name",
    "default_of",
    "field_docs",
    "all_keys",
    "unknown_key_error",
]

#: strings read as ``None`` for an optional field (``"~"`` only when the field is not a string)
NONE_WORDS = frozenset({"none", "null", "~"})
#: strings read as ``True`` / ``False`` for a boolean field (case-insensitive)
TRUE_WORDS = frozenset({"true", "1", "yes", "on", "y", "t"})
FALSE_WORDS = frozenset({"false", "0", "no", "off", "n", "f"})
#: every string a boolean field accepts
BOOL_WORDS = TRUE_WORDS | FALSE_WORDS


class ConfigError(ValueError):
    """A config could not be built: unknown key, wrong type, unreadable file, or a field that
    failed its own validation. The message names the key (dotted for nested fields), what was
    expected and what came."""


def require_dataclass(cls: Any) -> None:
    """Raise ``TypeError`` unless ``cls`` is a dataclass type."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"expected a dataclass type, got {cls!r}")


def type_hints(cls: type) -> dict[str, Any]:
    """Resolved annotations of ``cls`` (handles ``from __future__ import annotations``)."""
    try:
        return typing.get_type_hints(cls)
    except Exception as exc:  # pragma: no cover - depends on user code
        raise TypeError(f"cannot resolve the type annotations of {cls.__name__}: {exc}") from exc


def init_fields(cls: type) -> list[dataclasses.Field[Any]]:
    """The fields of ``cls`` that its ``__init__`` takes, in order."""
    return [f for f in dataclasses.fields(cls) if f.init]


def is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def strip_optional(tp: Any) -> tuple[Any, bool]:
    """(inner type, whether None is allowed) of an annotation."""
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        allows_none = len(args) < len(typing.get_args(tp))
        if len(args) == 1:
            return args[0], allows_none
        return Union[tuple(args)], allows_none  # noqa: UP007
    return tp, False


def type_name(tp: Any) -> str:
    """The annotation as ``--help`` shows it: ``int | None``, ``{a,b}``, ``list[str]``."""
    inner, optional = strip_optional(tp)
    if optional:
        return f"{type_name(inner)} | None"
    origin = typing.get_origin(inner)
    args = typing.get_args(inner)
    if origin is Literal:
        return "{" + ",".join(str(a) for a in args) + "}"
    if origin is Union or origin is types.UnionType:
        return " | ".join(type_name(a) for a in args)
    if origin in (tuple, list, dict):
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return f"tuple[{type_name(args[0])}, ...]"
        return f"{origin.__name__}[{', '.join(type_name(a) for a in args)}]"
    if isinstance(inner, type):
        return inner.__name__
    return str(inner)


def default_of(f: dataclasses.Field[Any]) -> Any:
    """The field's default (its factory called), or ``dataclasses.MISSING``."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def field_docs(cls: type, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """Flattened ``(dotted name, type name, default, help)`` for every init field of ``cls``,
    nested dataclasses expanded. ``default`` is ``dataclasses.MISSING`` for required fields."""
    require_dataclass(cls)
    hints = type_hints(cls)
    out: list[tuple[str, str, Any, str]] = []
    for f in init_fields(cls):
        tp = hints.get(f.name, Any)
        name = prefix + f.name
        inner, _ = strip_optional(tp)
        if is_dataclass_type(inner):
            out.extend(field_docs(inner, prefix=name + "."))
            continue
        out.append((name, type_name(tp), default_of(f), str(f.metadata.get("help", ""))))
    return out


def all_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key ``cls`` accepts, nested dataclasses both as a table and expanded."""
    keys: list[str] = []
    hints = type_hints(cls)
    for f in init_fields(cls):
        inner, _ = strip_optional(hints.get(f.name, Any))
        keys.append(prefix + f.name)
        if is_dataclass_type(inner):
            keys.extend(all_keys(inner, prefix + f.name + "."))
    return keys


def unknown_key_error(key: str, cls: type, root: type, where: str) -> ConfigError:
    """The error for a key ``root`` does not have, with the closest key suggested."""
    candidates = all_keys(root)
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
    if not close:
        # also try matching only the last component (e.g. "lr" for "optim.lr")
        tail = key.rsplit(".", 1)[-1]
        close = [c for c in candidates if c.rsplit(".", 1)[-1] == tail][:1] or (
            difflib.get_close_matches(tail, candidates, n=1, cutoff=0.6)
        )
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"{where}unknown config key {key!r} for {cls.__name__}{hint}")
