"""A resolved config back out: a plain nested dict, TOML text, a ``config.toml`` file."""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import re
from collections.abc import Mapping
from typing import Any

from rlhf_core._io import atomic_write_text
from rlhf_core.cli.dataclass_args.fields import ConfigError

__all__ = ["config_to_dict", "dumps_toml", "dump_config"]


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
    ``path``, creating parent folders (replaced atomically). The file reads back with
    :func:`~rlhf_core.cli.dataclass_args.load_config` into an equal object. Returns the path."""
    data = config_to_dict(obj) if not isinstance(obj, Mapping) else dict(obj)
    text = dumps_toml(data)
    if header:
        text = "".join(f"# {line}\n" for line in header.splitlines()) + text
    return atomic_write_text(path, text)
