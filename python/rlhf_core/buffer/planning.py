"""Planning over sequence lengths, with no buffer needed: balanced partition across ranks or
accumulation steps, first-fit-decreasing packing, and the seeded permutation every shuffle of
the package uses (Rust core; deterministic for any machine and thread count).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rlhf_core import _core
from rlhf_core._options import (
    bool_option,
    positive_option,
    seed_option,
    size_option,
    str_option,
    uint64_option,
)
from rlhf_core.buffer.inputs import index_array

__all__ = [
    "PackPlan",
    "Partition",
    "balanced_partition",
    "pack_sequences",
    "permutation",
]


@dataclass(frozen=True)
class Partition:
    """``k`` parts (int64 index arrays, increasing) and their loads (sums of lengths)."""

    parts: list[np.ndarray]
    loads: np.ndarray

    @property
    def max_load(self) -> int:
        return int(self.loads.max()) if self.loads.size else 0

    @property
    def mean_load(self) -> float:
        return float(self.loads.mean()) if self.loads.size else 0.0

    @property
    def imbalance(self) -> float:
        """max / mean load (1.0 is perfect)."""
        mean = self.mean_load
        return self.max_load / mean if mean else 1.0


def balanced_partition(
    lengths: Any, k: int, *, equal_size: bool = False, method: str = "best"
) -> Partition:
    """Split sequences of the given token ``lengths`` into ``k`` parts with balanced sums.

    Args:
        lengths: int ``(n,)`` non-negative.
        k: number of parts (data-parallel ranks, gradient-accumulation steps).
        equal_size: every part gets ``n / k`` sequences (``n`` must be a multiple of ``k``).
        method: ``"best"`` (default; serpentine start + local search, then LPT and
            Karmarkar–Karp candidates when that is not optimal; never worse than ``"lpt"``),
            ``"kk"`` (Karmarkar–Karp largest differencing) or ``"lpt"`` (greedy longest
            first).

    Returns:
        :class:`Partition` with ``parts``, ``loads``, ``max_load``, ``mean_load`` and
        ``imbalance``. Deterministic; ties broken by index.
    """
    order, offsets, loads = _core.balanced_partition(
        index_array(lengths),
        positive_option("k", k),
        bool_option(equal_size, "equal_size"),
        str_option(method, "method"),
    )
    off = offsets.tolist()
    parts = [order[off[p] : off[p + 1]] for p in range(len(off) - 1)]
    return Partition(parts=parts, loads=loads)


@dataclass(frozen=True)
class PackPlan:
    """Rows of original indices (increasing within a row), their loads and the capacity.
    ``order`` concatenates the rows; ``inverse[i]`` is the position of sequence ``i`` in
    ``order`` (so ``packed[inverse]`` maps per-sequence results back to the input order)."""

    rows: list[np.ndarray]
    loads: np.ndarray
    capacity: int

    @property
    def order(self) -> np.ndarray:
        return np.concatenate(self.rows) if self.rows else np.zeros(0, dtype=np.int64)

    @property
    def inverse(self) -> np.ndarray:
        order = self.order
        inv = np.empty_like(order)
        inv[order] = np.arange(order.shape[0], dtype=np.int64)
        return inv

    @property
    def row_of(self) -> np.ndarray:
        """int64 ``(n,)``: the row holding each sequence."""
        out = np.empty(sum(r.shape[0] for r in self.rows), dtype=np.int64)
        for j, r in enumerate(self.rows):
            out[r] = j
        return out


def pack_sequences(lengths: Any, capacity: int) -> PackPlan:
    """First-fit-decreasing packing of sequences of the given ``lengths`` into rows of at most
    ``capacity`` tokens (ties by index; deterministic).

    Raises:
        CapacityError: a sequence is longer than ``capacity`` (named by index and length).
    """
    rows, loads = _core.pack_sequences(index_array(lengths), positive_option("capacity", capacity))
    return PackPlan(rows=list(rows), loads=loads, capacity=int(capacity))


def permutation(n: int, seed: int, epoch: int = 0) -> np.ndarray:
    """The permutation of ``0..n`` that epoch ``epoch`` of ``seed`` uses (int64)."""
    return _core.permutation(
        size_option(n, "n"), seed_option(seed), uint64_option(epoch, "epoch")
    )
