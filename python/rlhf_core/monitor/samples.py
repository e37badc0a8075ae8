"""Logged samples: the completions a trainer sampled at a step, as lines of
``run_dir/samples.jsonl``, as flat rows for the trackers' tables, and as a short table on the
console (with ``rich`` when it is installed, plain text otherwise).

A sample row (what the sampling trainers hand over; ``docs/trainers.md`` lists the fields)::

    {"step": 4, "group": 0, "prompt": "...", "completion": "...",
     "rewards": {"<source>": 0.5, ...}, "reward": 0.5, "advantage": 0.31,
     "length": 12, "truncated": false}

``step`` is the global step the completion was sampled in (the step of ``metrics.jsonl``
whose metrics it belongs to); a reward of ``null`` is unscorable.
"""

from __future__ import annotations

import os
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from rlhf_core._io import append_jsonl, read_jsonl
from rlhf_core.monitor.logger import truncate_jsonl_after

__all__ = ["SampleLogger", "table_rows", "format_samples", "print_samples", "read_samples"]


def read_samples(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a ``samples.jsonl`` file (or the one inside a run folder); ``[]`` when there
    is none."""
    p = pathlib.Path(path)
    if p.is_dir():
        p = p / SampleLogger.FILENAME
    return read_jsonl(p)


class SampleLogger:
    """Append sample rows to ``run_dir/samples.jsonl``, each with its ``step`` first.

    ``resume_step``: rows of later steps (written after the checkpoint the run resumes from)
    are dropped first, as :class:`~rlhf_core.monitor.MetricsLogger` does for its file.
    """

    FILENAME = "samples.jsonl"

    def __init__(
        self, run_dir: str | os.PathLike[str], *, resume_step: int | None = None
    ) -> None:
        self.path = pathlib.Path(run_dir) / self.FILENAME
        if resume_step is not None and self.path.exists():
            truncate_jsonl_after(self.path, resume_step)

    def log(self, step: int, rows: Sequence[Mapping[str, Any]]) -> None:
        """Append ``rows`` as sampled at ``step``."""
        append_jsonl(self.path, [{"step": int(step), **r} for r in rows])

    def read(self) -> list[dict[str, Any]]:
        return read_samples(self.path)


def table_rows(step: int, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Flat rows for a tracker table: ``step``, then every field of the sample row with the
    ``rewards`` mapping spread into ``reward/<source>`` columns (before ``reward``)."""
    out: list[dict[str, Any]] = []
    for r in rows:
        flat: dict[str, Any] = {"step": int(step)}
        for k, v in r.items():
            if k == "rewards" and isinstance(v, Mapping):
                flat.update({f"reward/{name}": s for name, s in v.items()})
            else:
                flat[k] = v
        out.append(flat)
    return out


def _number(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    sources: dict[str, None] = {}
    for r in rows:
        sources.update(dict.fromkeys(r.get("rewards") or {}))
    cols = ["prompt", "completion", *(f"reward/{s}" for s in sources), "reward"]
    if any(r.get("advantage") is not None for r in rows):
        cols.append("advantage")
    if any("selected" in r for r in rows):
        cols.append("selected")
    return cols


def _cell(row: Mapping[str, Any], col: str) -> str:
    if col.startswith("reward/"):
        return _number((row.get("rewards") or {}).get(col[len("reward/") :]))
    v = row.get(col)
    return str(v) if isinstance(v, str) else _number(v)


def format_samples(step: int, rows: Sequence[Mapping[str, Any]]) -> str:
    """The plain-text table of :func:`print_samples` (used when ``rich`` is missing)."""
    cols = _columns(rows)
    lines = [f"completions at step {step}:"]
    for r in rows:
        parts = [f"{c}={_cell(r, c)!r}" if c in ("prompt", "completion") else
                 f"{c}={_cell(r, c)}" for c in cols]  # fmt: skip
        lines.append("  " + "  ".join(parts))
    return "\n".join(lines)


def print_samples(
    step: int, rows: Sequence[Mapping[str, Any]], *, file: TextIO | None = None
) -> None:
    """Print ``rows`` as a table titled with the step: a ``rich`` table when ``rich`` is
    importable, :func:`format_samples` otherwise."""
    if not rows:
        return
    out = file if file is not None else sys.stdout
    try:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text
    except ImportError:
        print(format_samples(step, rows), file=out)
        return
    cols = _columns(rows)
    table = Table(title=f"completions at step {step}", show_lines=True)
    for c in cols:
        numeric = c not in ("prompt", "completion")
        table.add_column(c, justify="right" if numeric else "left", overflow="fold")
    for r in rows:
        table.add_row(*(Text(_cell(r, c)) for c in cols))  # Text: no markup in completions
    Console(file=out).print(table)
