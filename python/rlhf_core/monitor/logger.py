"""The run's metrics file and timings: :class:`MetricsLogger` appends one JSON object per step
to ``run_dir/metrics.jsonl`` (through :mod:`rlhf_core._io`, so the file follows the package's
JSONL rules) and, when ``tensorboard`` is importable, writes the numeric metrics as TensorBoard
scalars; :func:`read_metrics` reads a metrics file back; :class:`PhaseTimer` accumulates
wall-clock time per named phase.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pathlib
import time
from collections.abc import Iterator, Mapping
from typing import Any

from rlhf_core._io import append_jsonl, atomic_write_text, json_safe, read_jsonl

__all__ = ["MetricsLogger", "PhaseTimer", "read_metrics"]

logger = logging.getLogger("rlhf_core.monitor")
_TB_NOTE_SHOWN = False


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a ``metrics.jsonl`` file (or the one inside a run folder) into a list of dicts.

    ``null`` values (non-finite numbers at write time) come back as ``float("nan")``. A torn
    last line (the process died mid-write) is ignored; a malformed line elsewhere is an error
    naming the file and line; a missing file is a ``FileNotFoundError``
    (:func:`rlhf_core._io.read_jsonl` with ``null_as_nan``).
    """
    p = pathlib.Path(path)
    if p.is_dir():
        p = p / MetricsLogger.FILENAME
    if not p.is_file():
        raise FileNotFoundError(f"no metrics file at {p}")
    return read_jsonl(p, null_as_nan=True)


class MetricsLogger:
    """Append per-step metrics to ``run_dir/metrics.jsonl`` (+ TensorBoard scalars).

    Each line is ``{"step": int, "wall_time": unix seconds, **metrics}``; numpy/torch scalars
    become plain numbers and non-finite values become ``null``. With ``tensorboard=True`` and
    the ``tensorboard`` package importable, numeric metrics also go to a
    ``torch.utils.tensorboard.SummaryWriter`` in ``run_dir/tensorboard``; when it is not
    importable that part is skipped (a note is logged once per process).

    ``resume_step``: when continuing a run from a checkpoint at that step, lines with a larger
    step (written after the checkpoint by the interrupted process) are dropped first, so the
    file reads as if the run had never stopped.
    """

    FILENAME = "metrics.jsonl"

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        tensorboard: bool = True,
        resume_step: int | None = None,
        filename: str = FILENAME,
    ) -> None:
        self.run_dir = pathlib.Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / filename
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        self.path.touch()
        self._closed = False
        self._tb: Any = None
        if tensorboard:
            self._tb = self._open_tensorboard()

    def _open_tensorboard(self) -> Any:
        global _TB_NOTE_SHOWN
        try:
            import tensorboard  # noqa: F401
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            if not _TB_NOTE_SHOWN:
                logger.info(
                    "tensorboard is not installed; metrics go to %s only "
                    "(pip install tensorboard to get event files)",
                    self.FILENAME,
                )
                _TB_NOTE_SHOWN = True
            return None
        return SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    @property
    def tensorboard_enabled(self) -> bool:
        return self._tb is not None

    def _truncate_after(self, step: int) -> None:
        kept: list[str] = []
        for line in self.path.read_text(encoding="utf-8").split("\n"):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # torn line from a crash
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] > step:
                continue
            kept.append(line)
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Append one record. ``metrics`` maps names (``"reward/mean"``) to numbers or strings;
        a name ``step`` or ``wall_time`` inside ``metrics`` is an error."""
        if self._closed:
            raise ValueError("MetricsLogger.log called after close()")
        step = int(step)
        for reserved in ("step", "wall_time"):
            if reserved in metrics:
                raise ValueError(f"metric name {reserved!r} is reserved by MetricsLogger.log")
        row: dict[str, Any] = {"step": step, "wall_time": round(time.time(), 3)}
        for k, v in metrics.items():
            row[str(k)] = json_safe(v)
        append_jsonl(self.path, [row])
        if self._tb is not None:
            for k, v in row.items():
                if k in ("step", "wall_time"):
                    continue
                value = v
                if isinstance(value, bool):
                    value = float(value)
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(k, value, global_step=step)
                elif value is None:
                    self._tb.add_scalar(k, math.nan, global_step=step)

    def flush(self) -> None:
        """Flush the TensorBoard writer (each JSONL record is flushed when written)."""
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self._closed = True
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def read(self) -> list[dict[str, Any]]:
        """The records of this logger's file (see :func:`read_metrics`)."""
        self.flush()
        return read_metrics(self.path)

    @staticmethod
    def read_run(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
        """The records of ``run_dir/metrics.jsonl``."""
        return read_metrics(run_dir)

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PhaseTimer:
    """Wall-clock time per named phase, accumulated until :meth:`summary` resets it.

    >>> timer = PhaseTimer()
    >>> with timer.phase("generation"):
    ...     pass
    >>> sorted(timer.summary())
    ['time/generation']

    ``cuda_sync=True`` calls ``torch.cuda.synchronize()`` at phase boundaries so that
    asynchronous GPU work is charged to the phase that launched it (costs a little speed).
    Phases may nest; each is timed on its own.
    """

    def __init__(self, *, prefix: str = "time/", cuda_sync: bool = False) -> None:
        self.prefix = prefix
        self.cuda_sync = cuda_sync
        self._totals: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def _sync(self) -> None:
        if self.cuda_sync:
            import torch

            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.synchronize()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            elapsed = time.perf_counter() - start
            self._totals[name] = self._totals.get(name, 0.0) + elapsed
            self._counts[name] = self._counts.get(name, 0) + 1

    def add(self, name: str, seconds: float) -> None:
        """Charge ``seconds`` to ``name`` (time measured elsewhere)."""
        self._totals[name] = self._totals.get(name, 0.0) + float(seconds)
        self._counts[name] = self._counts.get(name, 0) + 1

    def summary(self, *, reset: bool = True) -> dict[str, float]:
        """``{"time/<phase>": seconds}`` since the last reset."""
        out = {f"{self.prefix}{k}": v for k, v in self._totals.items()}
        if reset:
            self.reset()
        return out

    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    def reset(self) -> None:
        self._totals.clear()
        self._counts.clear()
