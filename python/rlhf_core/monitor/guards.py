"""The NaN tripwire: :func:`check_finite` raises :class:`NonFiniteError` naming every
non-finite metric or tensor, after saving the offending batch for a post-mortem.
"""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["NonFiniteError", "check_finite"]


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
