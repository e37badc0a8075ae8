"""Small file helpers every part of the package writes with: JSON-safe values, JSONL files,
atomic writes. One home for each, so a run folder's files follow one set of rules:

- numbers are plain Python numbers; non-finite floats are written as ``null`` (JSON has no
  NaN) and :func:`read_jsonl` can read them back as NaN;
- a file is replaced atomically (written beside it, then renamed), so a killed process
  leaves the old file or the new one, never half of one;
- a torn **last** line of a JSONL file (the process died mid-append) is skipped with a
  warning; a malformed line elsewhere is an error naming the file and line;
- a config (a dataclass instance) becomes a plain nested dict with :func:`dataclass_to_dict`,
  and TOML text with :func:`dumps_toml`, where an option set to ``None`` is written
  ``key = "none"`` (TOML has no null; the config readers take ``"none"`` as ``None``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pathlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

logger = logging.getLogger("rlhf_core")

__all__ = [
    "json_safe",
    "read_jsonl",
    "write_jsonl",
    "atomic_write_text",
    "append_jsonl",
    "dataclass_to_dict",
    "dumps_toml",
    "NONE_MARKER",
]

#: how TOML files written here spell an option set to ``None``
NONE_MARKER = "none"


def json_safe(value: Any) -> Any:
    """``value`` with numpy / torch scalars and arrays as plain Python, mappings with string
    keys, tuples as lists and non-finite floats as ``None``; anything else unknown as ``str``."""
    if hasattr(value, "item") and callable(value.item):
        try:
            if getattr(value, "ndim", 0) == 0 or getattr(value, "numel", lambda: 2)() == 1:
                value = value.item()
        except (ValueError, RuntimeError):
            pass
    # numpy / torch scalars became Python ones through .item() above (numpy is not imported
    # here: this module is on the path of `rlhf-core --help`)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, str) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist"):
        return json_safe(value.tolist())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> pathlib.Path:
    """Write ``text`` to ``path`` (UTF-8) through a temporary file in the same folder and a
    rename; creates the parent folder."""
    p = pathlib.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, p)
    return p


def _line(row: Mapping[str, Any]) -> str:
    return json.dumps(json_safe(row), ensure_ascii=False, allow_nan=False) + "\n"


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]]) -> pathlib.Path:
    """Replace ``path`` atomically with one JSON object per line (values made :func:`json_safe`)."""
    return atomic_write_text(path, "".join(_line(r) for r in rows))


def append_jsonl(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]]) -> None:
    """Append rows to ``path`` (created if missing), flushed to the OS before returning."""
    p = pathlib.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a", encoding="utf-8") as fh:
        fh.write("".join(_line(r) for r in rows))
        fh.flush()


def read_jsonl(path: str | os.PathLike[str], *, null_as_nan: bool = False) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file, in order; ``[]`` when the file does not exist.

    Lines are split on ``\\n`` only (JSON strings may hold U+2028 and friends). Blank lines are
    skipped; a torn last line is skipped with a warning; any other line that is not a JSON
    object is a ``ValueError`` naming the file and line. With ``null_as_nan``, top-level
    ``null`` values come back as ``float('nan')`` (how non-finite numbers were written).
    """
    p = pathlib.Path(path)
    if not p.is_file():
        return []
    lines = p.read_bytes().decode("utf-8", errors="strict").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    rows: list[dict[str, Any]] = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if i == len(lines):
                logger.warning("%s: ignoring torn last line %d", p, i)
                break
            raise ValueError(f"{p}: line {i} is not valid JSON: {exc}") from exc
        if not isinstance(row, dict):
            raise ValueError(f"{p}: line {i} is not a JSON object")
        if null_as_nan:
            row = {k: (math.nan if v is None else v) for k, v in row.items()}
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# configs: plain dicts and TOML


def dataclass_to_dict(obj: Any) -> dict[str, Any]:
    """Nested plain dict of a dataclass instance's init fields (nested dataclasses as dicts,
    tuples as lists, paths as strings); values are otherwise kept as they are."""
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
        raise ValueError(f"cannot write None inside a list or table for key {key!r} in TOML")
    raise ValueError(f"cannot write {type(v).__name__} value of key {key!r} as TOML")


def dumps_toml(data: Mapping[str, Any]) -> str:
    """Serialise a nested mapping to TOML text. Scalars and arrays come first, then one
    ``[table]`` per nested mapping. A ``None`` value (TOML has no null) is written as the
    string :data:`NONE_MARKER` (``key = "none"``), which the config readers take as ``None``
    for an optional field, so a config written here reads back equal. ``ValueError`` for a
    ``None`` inside a list or inline table, or a value TOML cannot hold."""
    lines: list[str] = []

    def emit(table: Mapping[str, Any], path: list[str]) -> None:
        scalars = [(k, v) for k, v in table.items() if not isinstance(v, Mapping)]
        tables = [(k, v) for k, v in table.items() if isinstance(v, Mapping)]
        if path and (scalars or not tables):
            if lines:
                lines.append("")
            lines.append("[" + ".".join(_toml_key(p) for p in path) + "]")
        for k, v in scalars:
            dotted = ".".join([*path, str(k)])
            value = _toml_str(NONE_MARKER) if v is None else _toml_value(v, dotted)
            lines.append(f"{_toml_key(str(k))} = {value}")
        for k, v in tables:
            emit(v, [*path, str(k)])

    emit(data, [])
    return "\n".join(lines) + "\n"
