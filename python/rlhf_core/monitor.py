"""Watching a run: metrics files, phase timings, the NaN tripwire and failure-mode detectors.

- :class:`MetricsLogger` appends one JSON object per step to ``run_dir/metrics.jsonl`` and, when
  ``tensorboard`` is importable, writes the numeric metrics as TensorBoard scalars under
  ``run_dir/tensorboard/``. :meth:`MetricsLogger.read` reads a metrics file back.
- :class:`PhaseTimer` accumulates wall-clock time per named phase (generation, scoring, ...).
- :func:`check_finite` raises :class:`NonFiniteError` naming every non-finite metric or tensor
  after saving the offending batch to ``dump_dir/nonfinite_step{N}.pt``.
- :class:`OveroptimizationMonitor` tracks the optimised (proxy) reward against a gold or
  held-out reward, remembers the gold peak and says when to stop (Goodhart early stopping).
- :func:`distinct_n`, :func:`repetition_rate` and :class:`InstabilityDetector` turn mode
  collapse, degenerate repetition, KL spikes and entropy collapse into numbers and warnings.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pathlib
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "MetricsLogger",
    "read_metrics",
    "PhaseTimer",
    "NonFiniteError",
    "check_finite",
    "OveroptimizationMonitor",
    "EvalPoint",
    "distinct_n",
    "repetition_rate",
    "InstabilityDetector",
]

logger = logging.getLogger(__name__)
_TB_NOTE_SHOWN = False


def _to_python(value: Any) -> Any:
    """Scalars of numpy/torch to plain Python; non-finite floats to None (JSON has no NaN)."""
    if hasattr(value, "item") and callable(value.item):
        try:
            if getattr(value, "ndim", 0) == 0 or getattr(value, "numel", lambda: 2)() == 1:
                value = value.item()
        except (ValueError, RuntimeError):
            pass
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, str) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _to_python(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_python(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_to_python(v) for v in value.tolist()]
    if hasattr(value, "tolist"):
        return _to_python(value.tolist())
    return str(value)


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a ``metrics.jsonl`` file (or the one inside a run folder) into a list of dicts.

    ``null`` values (non-finite numbers at write time) come back as ``float("nan")``. A torn
    last line (the process died mid-write) is ignored; a malformed line elsewhere is an error
    naming the file and line.
    """
    p = pathlib.Path(path)
    if p.is_dir():
        p = p / MetricsLogger.FILENAME
    rows: list[dict[str, Any]] = []
    lines = p.read_text(encoding="utf-8").splitlines()
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
        rows.append({k: (math.nan if v is None else v) for k, v in row.items()})
    return rows


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
        self._fh = self.path.open("a", encoding="utf-8")
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
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # torn line from a crash
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] > step:
                continue
            kept.append(line)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Append one record. ``metrics`` maps names (``"reward/mean"``) to numbers or strings;
        a name ``step`` or ``wall_time`` inside ``metrics`` is an error."""
        if self._fh.closed:
            raise ValueError("MetricsLogger.log called after close()")
        step = int(step)
        for reserved in ("step", "wall_time"):
            if reserved in metrics:
                raise ValueError(f"metric name {reserved!r} is reserved by MetricsLogger.log")
        row: dict[str, Any] = {"step": step, "wall_time": round(time.time(), 3)}
        for k, v in metrics.items():
            row[str(k)] = _to_python(v)
        self._fh.write(json.dumps(row, allow_nan=False) + "\n")
        self._fh.flush()
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
        if not self._fh.closed:
            self._fh.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()
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


# --------------------------------------------------------------------------------------------
# NaN tripwire


class NonFiniteError(FloatingPointError):
    """A metric or tensor held NaN or inf. ``names`` lists the offenders, ``dump_path`` is the
    saved batch (or None), ``step`` the training step."""

    def __init__(
        self, message: str, *, names: list[str], dump_path: pathlib.Path | None, step: int | None
    ) -> None:
        super().__init__(message)
        self.names = names
        self.dump_path = dump_path
        self.step = step


def _nonfinite_report(name: str, value: Any) -> str | None:
    """A description of what is non-finite in ``value``, or None when all is finite."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None  # type: ignore[assignment]
    if torch is not None and isinstance(value, torch.Tensor):
        if not (value.is_floating_point() or value.is_complex()):
            return None
        t = value.detach()
        finite = torch.isfinite(t)
        if bool(finite.all()):
            return None
        if t.ndim == 0:
            return f"metric {name!r} = {t.item()}"
        n_nan = int(torch.isnan(t).sum())
        n_inf = int(torch.isinf(t).sum())
        idx = tuple(int(i) for i in torch.nonzero(~finite)[0].tolist())
        return (
            f"tensor {name!r} {tuple(t.shape)} has {n_nan} NaN and {n_inf} inf "
            f"of {t.numel()} elements, first at index {idx}"
        )
    if isinstance(value, np.ndarray) or isinstance(value, np.generic):
        arr = np.asarray(value)
        if not np.issubdtype(arr.dtype, np.inexact):
            return None
        fin = np.isfinite(arr)
        if fin.all():
            return None
        if arr.ndim == 0:
            return f"metric {name!r} = {arr.item()}"
        idx = tuple(int(i) for i in np.argwhere(~fin)[0])
        return (
            f"array {name!r} {arr.shape} has {int(np.isnan(arr).sum())} NaN and "
            f"{int(np.isinf(arr).sum())} inf of {arr.size} elements, first at index {idx}"
        )
    if isinstance(value, float) and not math.isfinite(value):
        return f"metric {name!r} = {value}"
    return None


def check_finite(
    metrics: Mapping[str, Any],
    batch: Mapping[str, Any] | None = None,
    dump_dir: str | os.PathLike[str] | None = None,
    *,
    step: int | None = None,
) -> None:
    """Raise :class:`NonFiniteError` if any metric or batch tensor is NaN or inf.

    Args:
        metrics: name -> float / 0-d tensor / array (e.g. the loss parts of one step).
        batch: name -> tensor or array (the inputs of the step); floating tensors are checked
            too, and all of it is saved when something is non-finite.
        dump_dir: folder for ``nonfinite_step{step}.pt`` (``torch.save`` of ``{"step",
            "metrics", "batch", "offenders"}`` with tensors detached and moved to CPU); no dump
            when None.
        step: the training step, used in the message and the file name.

    The message names every offending metric/tensor, counts NaN and inf, gives the first
    offending index and the dump path.
    """
    problems: list[tuple[str, str]] = []
    for name, value in metrics.items():
        rep = _nonfinite_report(str(name), value)
        if rep:
            problems.append((str(name), rep))
    for name, value in (batch or {}).items():
        rep = _nonfinite_report(str(name), value)
        if rep:
            problems.append((str(name), rep))
    if not problems:
        return
    dump_path: pathlib.Path | None = None
    if dump_dir is not None:
        import torch

        d = pathlib.Path(dump_dir)
        d.mkdir(parents=True, exist_ok=True)
        dump_path = d / f"nonfinite_step{step if step is not None else 'unknown'}.pt"

        def cpu(v: Any) -> Any:
            if isinstance(v, torch.Tensor):
                return v.detach().cpu()
            if isinstance(v, Mapping):
                return {k: cpu(x) for k, x in v.items()}
            return v

        torch.save(
            {
                "step": step,
                "metrics": cpu(dict(metrics)),
                "batch": cpu(dict(batch or {})),
                "offenders": [n for n, _ in problems],
            },
            dump_path,
        )
    where = f" at step {step}" if step is not None else ""
    lines = [f"non-finite values{where}:"] + [f"  - {rep}" for _, rep in problems]
    if dump_path is not None:
        lines.append(f"the batch was saved to {dump_path} (load with torch.load(path))")
    lines.append(
        "common causes: a learning rate too high, log of zero probabilities, division by a "
        "zero standard deviation, or fp16 overflow"
    )
    raise NonFiniteError(
        "\n".join(lines), names=[n for n, _ in problems], dump_path=dump_path, step=step
    )


# --------------------------------------------------------------------------------------------
# over-optimisation


@dataclass
class EvalPoint:
    """One evaluation of a run: the optimised (proxy) reward, the gold reward (None when not
    known) and the KL from the reference (None when not measured)."""

    step: int
    proxy: float
    gold: float | None = None
    kl: float | None = None


@dataclass
class OveroptimizationMonitor:
    """Track proxy vs gold (or held-out) reward and stop at the gold peak.

    The gold reward is what we actually want; the proxy is what the optimiser sees. Pushed
    hard, the proxy keeps rising while the gold reward peaks and falls (Gao et al. 2022,
    "Scaling Laws for Reward Model Overoptimization"). Call :meth:`update` at every evaluation:

    - ``best_step`` / ``best_gold``: the evaluation with the highest gold reward so far.
    - ``should_stop``: True once ``patience`` evaluations in a row brought no gold improvement
      larger than ``min_delta`` over the best; it stays True and ``stop_step`` records where.
    - ``diverging``: the proxy went up while the gold went down over the last ``window``
      evaluations (least-squares slopes of opposite signs, each beyond ``min_delta`` per
      evaluation on average), the signature of reward hacking.

    NaN gold values count as "no improvement". Without gold values nothing stops.
    """

    patience: int = 3
    min_delta: float = 0.0
    window: int = 4
    history: list[EvalPoint] = field(default_factory=list)
    best_step: int | None = None
    best_gold: float | None = None
    evals_since_best: int = 0
    stop_step: int | None = None

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")
        if self.min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {self.min_delta}")
        if self.window < 2:
            raise ValueError(f"window must be >= 2, got {self.window}")

    def update(
        self, step: int, proxy: float, gold: float | None = None, kl: float | None = None
    ) -> bool:
        """Record one evaluation; returns :attr:`should_stop`."""
        g = None if gold is None else float(gold)
        self.history.append(
            EvalPoint(int(step), float(proxy), g, None if kl is None else float(kl))
        )
        if g is not None:
            if math.isfinite(g) and (self.best_gold is None or g > self.best_gold + self.min_delta):
                self.best_gold = g
                self.best_step = int(step)
                self.evals_since_best = 0
            else:
                self.evals_since_best += 1
            if self.stop_step is None and self.evals_since_best >= self.patience:
                self.stop_step = int(step)
        return self.should_stop

    @property
    def should_stop(self) -> bool:
        return self.stop_step is not None

    @property
    def diverging(self) -> bool:
        pts = [p for p in self.history if p.gold is not None and math.isfinite(p.gold)]
        pts = pts[-self.window :]
        if len(pts) < self.window:
            return False
        x = np.arange(len(pts), dtype=np.float64)
        proxy_slope = float(np.polyfit(x, [p.proxy for p in pts], 1)[0])
        gold_slope = float(np.polyfit(x, [float(p.gold) for p in pts], 1)[0])  # type: ignore[arg-type]
        return proxy_slope > self.min_delta and gold_slope < -self.min_delta

    def warnings(self) -> list[str]:
        """Human-readable notes on the current state (empty when all is well)."""
        out = []
        if self.diverging:
            out.append(
                f"over-optimisation: proxy reward rising while gold reward falls over the last "
                f"{self.window} evaluations (gold peak {self.best_gold:.4g} at step "
                f"{self.best_step})"
            )
        if self.should_stop:
            out.append(
                f"early stop: no gold improvement > {self.min_delta} for {self.patience} "
                f"evaluations (stopped at step {self.stop_step}, best step {self.best_step})"
            )
        return out

    def summary(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else None
        return {
            "best_step": self.best_step,
            "best_gold": self.best_gold,
            "stop_step": self.stop_step,
            "last_proxy": None if last is None else last.proxy,
            "last_gold": None if last is None else last.gold,
            "num_evals": len(self.history),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": [[p.step, p.proxy, p.gold, p.kl] for p in self.history],
            "best_step": self.best_step,
            "best_gold": self.best_gold,
            "evals_since_best": self.evals_since_best,
            "stop_step": self.stop_step,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = [EvalPoint(int(s), float(p), g, k) for s, p, g, k in state["history"]]
        self.best_step = state["best_step"]
        self.best_gold = state["best_gold"]
        self.evals_since_best = int(state["evals_since_best"])
        self.stop_step = state["stop_step"]


# --------------------------------------------------------------------------------------------
# failure-mode metrics


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(
    texts: Sequence[str], n: int = 2, *, tokenize: Callable[[str], Sequence[str]] = str.split
) -> float:
    """Distinct-n (Li et al. 2016): unique n-grams / total n-grams over all ``texts``.

    1.0 means no n-gram repeats across the batch; values falling during training signal mode
    collapse. ``tokenize`` splits a text into tokens (whitespace words by default; pass
    ``list`` for characters). Returns 0.0 when the texts hold no n-gram at all.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams: list[tuple[str, ...]] = []
    for t in texts:
        grams.extend(_ngrams(tokenize(t), n))
    if not grams:
        return 0.0
    return len(set(grams)) / len(grams)


def repetition_rate(
    texts: Sequence[str], n: int = 3, *, tokenize: Callable[[str], Sequence[str]] = str.split
) -> float:
    """Mean over texts of the fraction of n-grams that repeat an earlier n-gram of the same
    text (0.0 = no repetition; near 1.0 = the text loops). Texts shorter than ``n`` tokens are
    left out; 0.0 when none qualifies."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rates = []
    for t in texts:
        grams = _ngrams(tokenize(t), n)
        if grams:
            rates.append(1.0 - len(set(grams)) / len(grams))
    return float(np.mean(rates)) if rates else 0.0


@dataclass
class InstabilityDetector:
    """Warnings for the usual ways an RL run goes wrong.

    - KL spike: ``kl > spike_factor * median(last `window` KL values)`` and
      ``kl > min_kl`` (so noise around zero KL does not fire), once ``min_history`` values exist.
    - Entropy collapse: mean token entropy below ``entropy_floor`` nats, or below
      ``entropy_drop`` times the first entropy seen.

    :meth:`update` returns the warnings of that step as readable sentences (empty if none).
    """

    spike_factor: float = 5.0
    window: int = 20
    min_history: int = 5
    min_kl: float = 1e-3
    entropy_floor: float = 0.05
    entropy_drop: float = 0.1
    _kl: deque[float] = field(default_factory=deque, repr=False)
    _first_entropy: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.spike_factor <= 1:
            raise ValueError(f"spike_factor must be > 1, got {self.spike_factor}")
        if self.window < 1 or self.min_history < 1:
            raise ValueError("window and min_history must be >= 1")
        self._kl = deque(self._kl, maxlen=self.window)

    def update(
        self, step: int, *, kl: float | None = None, entropy: float | None = None
    ) -> list[str]:
        out: list[str] = []
        if kl is not None:
            k = float(kl)
            if not math.isfinite(k):
                out.append(f"step {step}: KL is {k}")
            else:
                if len(self._kl) >= self.min_history:
                    med = statistics.median(self._kl)
                    if k > self.min_kl and k > self.spike_factor * max(med, 0.0):
                        out.append(
                            f"step {step}: KL spike: {k:.4g} is more than {self.spike_factor:g}x "
                            f"the median {med:.4g} of the last {len(self._kl)} steps; consider a "
                            "lower learning rate, a larger KL coefficient or tighter clipping"
                        )
                self._kl.append(k)
        if entropy is not None:
            e = float(entropy)
            if self._first_entropy is None and math.isfinite(e):
                self._first_entropy = e
            if e < self.entropy_floor:
                out.append(
                    f"step {step}: entropy collapse: mean token entropy {e:.4g} nats is below "
                    f"{self.entropy_floor:g}; the policy is nearly deterministic "
                    "(mode collapse likely; check distinct-n)"
                )
            elif (
                self._first_entropy is not None
                and self._first_entropy > 0
                and e < self.entropy_drop * self._first_entropy
            ):
                out.append(
                    f"step {step}: entropy fell to {e:.4g} nats, under "
                    f"{self.entropy_drop:g}x its initial {self._first_entropy:.4g}"
                )
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"kl": list(self._kl), "first_entropy": self._first_entropy}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._kl = deque((float(x) for x in state["kl"]), maxlen=self.window)
        self._first_entropy = state["first_entropy"]
