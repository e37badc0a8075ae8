"""What goes wrong with data, and what loading did: :class:`DataError` (one row, or the whole
source), :class:`LoadReport` (rows read, kept, skipped by reason), and the row-level error the
checks raise before the loader knows the row's number.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DataError", "LoadReport", "RowError", "type_name"]


class DataError(ValueError):
    """A row (or the whole source) is unusable.

    Attributes: ``file`` (path, Hub id or ``"<list>"``), ``row`` (1-based, None for a
    whole-source problem), ``column`` (None for a whole-row problem such as invalid JSON),
    ``kind`` (a short reason key, e.g. ``"missing_column"``, used for the skip counts) and
    ``detail``.
    """

    def __init__(
        self,
        file: str,
        row: int | None,
        column: str | None,
        kind: str,
        detail: str,
        *,
        row_note: str = "",
    ) -> None:
        self.file = file
        self.row = row
        self.column = column
        self.kind = kind
        self.detail = detail
        where = file
        if row is not None:
            where += f": row {row}{row_note}"
        where += (
            f", column {column!r}"
            if column is not None
            else (" (whole row)" if row is not None else "")
        )
        super().__init__(f"{where}: {detail}")


class RowError(Exception):
    """A problem in one row, raised by the checks; the loader turns it into a
    :class:`DataError` once it knows the source and the row number."""

    def __init__(self, column: str | None, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.column = column
        self.kind = kind
        self.detail = detail


@dataclass
class LoadReport:
    """What loading did: rows read, rows kept, skipped rows counted by reason, and the first
    few skip messages (for the user to look at)."""

    source: str
    total: int = 0
    kept: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def __str__(self) -> str:
        if not self.skipped:
            return f"{self.source}: {self.kept} rows"
        reasons = ", ".join(f"{n} {k}" for k, n in self.skipped.most_common())
        return f"{self.source}: kept {self.kept} of {self.total} rows; skipped {reasons}"


def type_name(v: Any) -> str:
    """How an error message names the type of a value read from data."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return f"a number ({v!r})"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, (list, tuple)):
        return "a list"
    if isinstance(v, Mapping):
        return "an object"
    return type(v).__name__
