"""Small file helpers every part of the package writes with: JSON-safe values, JSONL files,
atomic writes. One home for each, so a run folder's files follow one set of rules:

- numbers are plain Python numbers; non-finite floats are written as ``null`` (JSON has no
  NaN) and :func:`read_jsonl` can read them back as NaN;
- a file is replaced atomically (written beside it, then renamed), so a killed process
  leaves the old file or the new one, never half of one;
- a torn **last** line of a JSONL file (the process died mid-append) is skipped with a
  warning; a malformed line elsewhere is an error naming the file and line.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pathlib
from collections.abc import Iterable, Mapping
from typing import Any

logger = logging.getLogger("rlhf_core")

__all__ = ["json_safe", "read_jsonl", "write_jsonl", "atomic_write_text", "append_jsonl"]


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
