"""The row loop every loader shares, and the checks of plain-text columns: a source read record
by record, ``handle(record)`` run on each, a :class:`~rlhf_core.data.errors.RowError` turned
into a :class:`~rlhf_core.data.errors.DataError` naming the source, row and column (raised, or
counted and skipped), and the columns no loader reads kept for the reward functions.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

from rlhf_core.data.errors import DataError, LoadReport, RowError, type_name
from rlhf_core.data.messages import (
    Message,
    check_messages,
    check_prompt_end,
    check_turns,
    drop_nulls,
    is_conversation,
)
from rlhf_core.data.render import ChatRenderer
from rlhf_core.data.sources import Record, iter_records

__all__ = [
    "Lengths",
    "OnError",
    "Opened",
    "Source",
    "check_on_error",
    "check_required",
    "check_response",
    "check_text",
    "missing",
    "open_source",
    "pair_part",
    "prompt_messages",
    "run_rows",
    "tools_of",
]

logger = logging.getLogger("rlhf_core.data")

OnError = Literal["raise", "skip"]
Source = str | os.PathLike[str] | Sequence[Mapping[str, Any]]
#: an opened source: (source name, records, row note)
Opened = tuple[str, Iterator[Record], str]

_WRONG = "expected a string or a list of {role, content} messages, got "


def check_text(v: Any, column: str) -> str:
    """A plain-text prompt: a non-blank string."""
    if not isinstance(v, str):
        raise RowError(column, "wrong_type", _WRONG + type_name(v))
    if not v.strip():
        raise RowError(column, "empty_text", "empty text")
    return v


def check_response(v: Any, column: str) -> str:
    """A plain-text completion: any string, the empty one included (an answer that stops at
    once)."""
    if not isinstance(v, str):
        raise RowError(column, "wrong_type", _WRONG + type_name(v))
    return v


class Lengths:
    def __init__(self, tokenizer: Any, unit: str | None) -> None:
        if unit is None:
            unit = "tokens" if tokenizer is not None else "chars"
        if unit not in ("chars", "tokens"):
            raise ValueError(f"length_unit must be 'chars' or 'tokens', got {unit!r}")
        if unit == "tokens" and tokenizer is None:
            raise ValueError("length_unit='tokens' needs a tokenizer")
        self.unit = unit
        self.tokenizer = tokenizer

    def __call__(self, text: str) -> int:
        if self.unit == "chars":
            return len(text)
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def check(self, text: str, limit: int | None, column: str, what: str) -> None:
        if limit is None:
            return
        n = self(text)
        if n > limit:
            raise RowError(
                column, "too_long", f"{what} is {n} {self.unit} long, over the limit of {limit}"
            )


# --------------------------------------------------------------------------------------------
# the row loop


def check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def open_source(path: Source, source_kw: Mapping[str, Any]) -> Opened:
    return iter_records(path, **source_kw)


def run_rows(
    opened: Opened,
    on_error: str,
    handle: Callable[[Mapping[str, Any]], Any],
    reserved: set[str],
    limit: int | None = None,
) -> tuple[str, LoadReport, list[int], list[Any], dict[str, list[Any]]]:
    """Run ``handle(rec) -> item`` on each record, collect the extra columns."""
    check_on_error(on_error)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    source, records, note = opened
    report = LoadReport(source=source)
    rows: list[int] = []
    items: list[Any] = []
    extras: list[dict[str, Any]] = []
    for row, rec, err in records:
        report.total += 1
        if err is None:
            try:
                items.append(handle(rec))
                rows.append(row)
                extras.append({k: v for k, v in rec.items() if k not in reserved})
                report.kept += 1
                if limit is not None and report.kept >= limit:
                    break
                continue
            except RowError as exc:
                err = DataError(
                    source,
                    row,
                    exc.column,
                    exc.kind,
                    exc.detail,
                    row_note=f" (index {row - 1})" if note else "",
                )
        if on_error == "raise":
            raise err
        report.skipped[err.kind] += 1
        if len(report.examples) < 5:
            report.examples.append(str(err))
    if report.skipped:
        logger.warning("%s", report)
    if report.kept == 0:
        detail = "no usable rows" + (f" ({report})" if report.total else " (empty)")
        raise DataError(source, None, None, "empty", detail)
    names: list[str] = []
    for e in extras:
        for k in e:
            if k not in names:
                names.append(k)
    columns = {k: [e.get(k) for e in extras] for k in names}
    return source, report, rows, items, columns


def missing(rec: Mapping[str, Any]) -> str:
    return f"missing column (the row has {sorted(map(str, rec))})"


def check_required(rec: Mapping[str, Any], required: Sequence[str]) -> None:
    for col in required:
        if col not in rec:
            raise RowError(col, "missing_column", missing(rec))


def tools_of(rec: Mapping[str, Any], column: str | None) -> Any:
    if column is None or rec.get(column) is None:
        return None
    tools = rec[column]
    if isinstance(tools, str):  # TRL's Json() feature, or a JSON string in a CSV/Parquet cell
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as exc:
            raise RowError(column, "wrong_type", f"not a JSON list of tools: {exc}") from None
    if not isinstance(tools, (list, tuple)):
        raise RowError(
            column, "wrong_type", f"expected a list of tool schemas, got {type_name(tools)}"
        )
    return drop_nulls(tools)


def prompt_messages(value: Any, column: str) -> list[Message]:
    msgs = check_messages(value, column)
    check_turns(msgs, column)
    check_prompt_end(msgs, column)
    return msgs


def pair_part(
    rec: Mapping[str, Any],
    column: str,
    prompt_msgs: list[Message] | None,
    prompt_text: str,
    render: ChatRenderer,
    tools: Any,
) -> str:
    value = rec[column]
    if prompt_msgs is not None:
        if not is_conversation(value):
            if isinstance(value, str):
                raise RowError(
                    column,
                    "mixed_format",
                    "the prompt is a conversation but this column is plain text; use the same "
                    "format for all columns of a row",
                )
            check_messages(value, column)  # raises wrong_type
        msgs = check_messages(value, column)
        check_turns(prompt_msgs + msgs, column, start_index=len(prompt_msgs))
        return render.completion(prompt_msgs, msgs, prompt_text, tools=tools, column=column)
    if is_conversation(value):
        raise RowError(
            column,
            "mixed_format",
            "this column is a conversation but the prompt is plain text; use the same format "
            "for all columns of a row",
        )
    return check_response(value, column)
