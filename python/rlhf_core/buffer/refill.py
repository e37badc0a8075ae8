"""Dynamic sampling's refill bookkeeping (DAPO), in the Rust core: the group filter applied
round after round, the counters, whether this rank's batch is full, and which rows make the
batch. The rows themselves (token ids, texts) stay with the caller
(:class:`rlhf_core.rollout.dynamic.DynamicSampler` keeps them as a ``Rollout``)::

    add_round   keep = ops.informative_groups(scores, group_ids, min_std)
                rounds += 1; generated += N; groups_dropped += the round's dropped groups
    full        kept rows >= batch_rows
    exhausted   max_rounds > 0 and rounds >= max_rounds          (0: no limit)
    selection   the first min(kept, batch_rows) kept rows, in order; when short and some
                rows were dropped, then the rows of the first (batch_rows - taken) //
                group_size dropped groups (ids in order of first appearance among the
                dropped rows, every dropped row of such an id); exactly batch_rows rows

Row indices count the rows of every round added, in order (round 0's first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rlhf_core import _core
from rlhf_core import ops as _ops
from rlhf_core._options import positive_option, real_option, size_option

__all__ = ["GroupRefill", "RefillSelection"]


@dataclass(frozen=True)
class RefillSelection:
    """The batch's rows: ``rows`` int64 ``(batch_rows,)`` indices into the rows of all rounds
    (the ``kept_rows`` kept ones first, then the rows of ``groups_filled`` dropped groups)."""

    rows: np.ndarray
    kept_rows: int
    groups_filled: int


class GroupRefill:
    """The refill of one step (module docs).

    Args:
        batch_rows: rows of the batch (this rank's share), a positive multiple of
            ``group_size``.
        group_size: G, completions per prompt (≥ 1).
        max_rounds: rounds at most (``max_num_gen_batches``); 0 = no limit.
        min_std: groups whose population score std is at most this are dropped (finite, ≥ 0).

    Raises:
        InvalidOptionError: an argument out of range, named.
    """

    __slots__ = ("_inner",)

    def __init__(
        self, batch_rows: int, group_size: int, *, max_rounds: int = 0, min_std: float = 0.0
    ) -> None:
        self._inner = _core._GroupRefill(
            positive_option("batch_rows", batch_rows),
            positive_option("group_size", group_size),
            size_option(max_rounds, "max_rounds"),
            real_option(min_std, "min_std"),
        )

    def add_round(self, scores: Any, group_ids: Any) -> tuple[np.ndarray, _ops.GroupFilterStats]:
        """Filter one scored round and append it.

        Args:
            scores: float32/float64 ``(N,)`` (NaN = unscorable), numpy or torch.
            group_ids: integer ``(N,)``.

        Returns:
            bool ``(N,)`` keep flags of the round's rows, and its counts.

        Raises:
            ShapeError: lengths differ or an input is not 1-D (nothing is added).
        """
        keep, counts = self._inner.add_round(
            _ops._f64_vector(scores, "scores"), _ops._index(group_ids, "group_ids")
        )
        return keep, _ops.GroupFilterStats(*counts)

    def selection(self) -> RefillSelection:
        """The batch's rows. Raises ``ShapeError`` when the rows gathered cannot make exactly
        ``batch_rows`` of them (no round yet, or groups of other sizes than ``group_size``)."""
        rows, kept_rows, groups_filled = self._inner.selection()
        return RefillSelection(rows, kept_rows, groups_filled)

    def reset(self) -> None:
        """Empty, for the next step (the settings stay)."""
        self._inner.reset()

    @property
    def rounds(self) -> int:
        return self._inner.rounds

    @property
    def generated(self) -> int:
        """Rows added over all rounds."""
        return self._inner.generated

    @property
    def groups_dropped(self) -> int:
        """Dropped groups summed over the rounds."""
        return self._inner.groups_dropped

    @property
    def kept_rows(self) -> int:
        """Rows of kept groups over all rounds."""
        return self._inner.kept_rows

    @property
    def full(self) -> bool:
        """Whether the kept rows fill the batch."""
        return self._inner.full

    @property
    def exhausted(self) -> bool:
        """Whether ``max_rounds`` rounds have been added (never with ``max_rounds = 0``)."""
        return self._inner.exhausted

    @property
    def batch_rows(self) -> int:
        return self._inner.batch_rows

    @property
    def group_size(self) -> int:
        return self._inner.group_size

    @property
    def max_rounds(self) -> int:
        return self._inner.max_rounds

    @property
    def min_std(self) -> float:
        return self._inner.min_std

    def state_dict(self) -> dict[str, Any]:
        """``{"rounds": int, "groups_dropped": int, "keep": [bool], "group_ids": [int]}``
        (plain Python data, one list entry per row so far; the settings are not in it)."""
        return self._inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` output; ``StateError`` on a malformed state."""
        self._inner.load_state_dict(state)

    def __repr__(self) -> str:
        return (
            f"GroupRefill(batch_rows={self.batch_rows}, group_size={self.group_size}, "
            f"max_rounds={self.max_rounds}, min_std={self.min_std}, rounds={self.rounds}, "
            f"kept_rows={self.kept_rows}, generated={self.generated})"
        )
