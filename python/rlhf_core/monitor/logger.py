"""The run's metrics file and timings: :class:`MetricsLogger` appends one JSON object per step
to ``run_dir/metrics.jsonl`` (through :mod:`rlhf_core._io`, so the file follows the package's
JSONL rules) and hands the numbers to the experiment trackers of ``report_to``
(:mod:`rlhf_core.monitor.tracking`: TensorBoard, W&B, trackio, MLflow); :func:`read_metrics`
reads a metrics file back; :class:`PhaseTimer` accumulates wall-clock time per named phase.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pathlib
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from rlhf_core._io import append_jsonl, atomic_write_text, json_safe, read_jsonl
from rlhf_core.monitor.tracking import TensorBoardTracker, Tracker

__all__ = ["MetricsLogger", "PhaseTimer", "read_metrics", "truncate_jsonl_after"]

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


def truncate_jsonl_after(path: pathlib.Path, step: int) -> None:
    """Drop the lines of the JSONL file ``path`` whose ``"step"`` is larger than ``step`` (and
    a torn line left by a crash), so a run resumed from the checkpoint at ``step`` continues
    the file as if it had never stopped."""
    kept: list[str] = []
    for line in path.read_text(encoding="utf-8").split("\n"):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # torn line from a crash
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] > step:
            continue
        kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


class MetricsLogger:
    """Append per-step metrics to ``run_dir/metrics.jsonl`` and hand them to the trackers.

    Each line is ``{"step": int, "wall_time": unix seconds, **metrics}``; numpy/torch scalars
    become plain numbers and non-finite values become ``null``. The file is always written (it
    is the source of truth); then the numeric metrics (booleans as 0/1, non-finite as NaN;
    strings stay in the file only) go to every tracker of ``trackers``
    (:mod:`rlhf_core.monitor.tracking`), and :meth:`log_table` sends tables to them.

    ``tensorboard=True`` (the old switch) adds TensorBoard scalars in ``run_dir/tensorboard``
    when the ``tensorboard`` package is importable and no TensorBoard tracker is among
    ``trackers``; when it is not importable that part is skipped (a note is logged once per
    process). Naming ``"tensorboard"`` in ``report_to`` instead makes it required.

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
        trackers: Sequence[Tracker] = (),
    ) -> None:
        self.run_dir = pathlib.Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / filename
        if resume_step is not None and self.path.exists():
            truncate_jsonl_after(self.path, resume_step)
        self.path.touch()
        self._closed = False
        #: where the numbers go besides the file
        self.trackers: list[Tracker] = list(trackers)
        if tensorboard and not self.tensorboard_enabled:
            tb = self._open_tensorboard()
            if tb is not None:
                self.trackers.append(tb)

    def _open_tensorboard(self) -> TensorBoardTracker | None:
        global _TB_NOTE_SHOWN
        try:
            import tensorboard  # noqa: F401
            import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            if not _TB_NOTE_SHOWN:
                logger.info(
                    "tensorboard is not installed; metrics go to %s only "
                    "(pip install tensorboard to get event files)",
                    self.FILENAME,
                )
                _TB_NOTE_SHOWN = True
            return None
        return TensorBoardTracker(self.run_dir / "tensorboard")

    @property
    def tensorboard_enabled(self) -> bool:
        return any(t.name == "tensorboard" for t in self.trackers)

    def log(self, step: int, metrics: Mapping[str, Any], *, track: bool = True) -> None:
        """Append one record and, with ``track``, send its numbers to the trackers.
        ``metrics`` maps names (``"reward/mean"``) to numbers or strings; a name ``step`` or
        ``wall_time`` inside ``metrics`` is an error."""
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
        if track and self.trackers:
            numbers: dict[str, float] = {}
            for k, v in row.items():
                if k in ("step", "wall_time"):
                    continue
                if v is None:
                    numbers[k] = math.nan
                elif isinstance(v, (bool, int, float)):
                    numbers[k] = float(v)
            for t in self.trackers:
                t.log(numbers, step)

    def log_table(self, name: str, rows: Sequence[Mapping[str, Any]], step: int) -> None:
        """Send a table (flat rows, the same keys in each) to every tracker at ``step``."""
        if self._closed:
            raise ValueError("MetricsLogger.log_table called after close()")
        for t in self.trackers:
            t.log_table(name, rows, int(step))

    def flush(self) -> None:
        """Flush the trackers that buffer (each JSONL record is flushed when written)."""
        for t in self.trackers:
            flush = getattr(t, "flush", None)
            if flush is not None:
                flush()

    def close(self) -> None:
        """Finish every tracker (once); the file needs no closing."""
        if self._closed:
            return
        self._closed = True
        trackers, self.trackers = self.trackers, []
        for t in trackers:
            t.finish()

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
