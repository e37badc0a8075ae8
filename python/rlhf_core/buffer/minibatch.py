"""Planned batches of a rollout buffer: :class:`Minibatch` (a set of sequences to split,
pack or materialise as padded or packed tensors) and :class:`MinibatchSampler` (the batches of
several epochs, resumable from two integers). The layout of every materialised array is the
contract stated in :mod:`rlhf_core.buffer`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from rlhf_core import _core
from rlhf_core._options import bool_option, int_option, positive_option, uint64_option
from rlhf_core.buffer.planning import balanced_partition, pack_sequences
from rlhf_core.errors import InvalidOptionError, StateError

if TYPE_CHECKING:
    from rlhf_core.buffer.rollout_buffer import RolloutBuffer

__all__ = ["SAMPLER_FORMAT", "Minibatch", "MinibatchSampler"]

#: Tag of :meth:`MinibatchSampler.state_dict` (bumped on incompatible changes).
SAMPLER_FORMAT = "rlhf_core.MinibatchSampler/1"


class Minibatch:
    """A planned set of buffer sequences (``indices``, in row order) with ways to split it and
    to materialise it. ``epoch`` / ``step`` tell where a sampler produced it (None otherwise).
    """

    def __init__(
        self,
        buffer: RolloutBuffer,
        indices: np.ndarray,
        *,
        epoch: int | None = None,
        step: int | None = None,
    ) -> None:
        self.buffer = buffer
        self.indices = indices
        self.epoch = epoch
        self.step = step
        self._version = buffer.version

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __repr__(self) -> str:
        where = "" if self.epoch is None else f", epoch {self.epoch}, step {self.step}"
        return f"Minibatch({len(self)} sequences, {self.num_tokens} tokens{where})"

    def _check(self) -> None:
        if self.buffer.version != self._version:
            raise StateError(
                "the buffer changed (add / clear / reset / load_state_dict) after this "
                "minibatch was planned; plan again"
            )

    @property
    def lengths(self) -> np.ndarray:
        """int64 ``(b,)`` prompt + response length of each row."""
        return self.buffer.lengths("total")[self.indices]

    @property
    def num_tokens(self) -> int:
        """Prompt + response tokens of the rows (no padding)."""
        return int(self.lengths.sum())

    @property
    def num_response_tokens(self) -> int:
        return int(self.buffer.lengths("response")[self.indices].sum())

    def to_padded(
        self,
        *,
        pad_token_id: int = 0,
        pad_to_multiple_of: int = 1,
        return_tensors: str = "pt",
        device: Any = None,
    ) -> dict[str, Any]:
        """Right-padded arrays of the rows; :mod:`rlhf_core.buffer` states every key and its
        shape.

        ``return_tensors="pt"`` (default) gives torch tensors that share memory with the
        freshly built numpy arrays (``torch.from_numpy``: no copy), moved to ``device`` if
        given; ``"np"`` gives the numpy arrays.
        """
        self._check()
        arrays, _ = self.buffer._core.padded(
            self.indices,
            int_option(pad_token_id, "pad_token_id"),
            positive_option("pad_to_multiple_of", pad_to_multiple_of),
        )
        return _wrap(arrays, return_tensors, device)

    def to_packed(
        self, *, pad_token_id: int = 0, return_tensors: str = "pt", device: Any = None
    ) -> dict[str, Any]:
        """The rows back to back in one ``(1, total)`` row: ``input_ids``, ``position_ids``
        (restarting at 0 per sequence), ``seq_ids``, ``cu_seqlens`` int32 ``(b + 1,)``,
        ``max_seqlen`` (int), next-token arrays ``(1, total - 1)`` and the ``(b,)`` arrays.
        There is no ``attention_mask``: use ``cu_seqlens`` / ``position_ids`` (variable-length
        attention) or ``seq_ids`` (``seq_ids[..., :, None] == seq_ids[..., None, :]`` is the
        block-diagonal mask)."""
        self._check()
        arrays, max_seqlen = self.buffer._core.packed(
            self.indices, int_option(pad_token_id, "pad_token_id")
        )
        out = _wrap(arrays, return_tensors, device)
        out["max_seqlen"] = int(max_seqlen)
        return out

    def micro_batches(
        self,
        token_budget: int,
        *,
        packed: bool = False,
        bucket: bool = True,
        pad_to_multiple_of: int = 1,
    ) -> list[Minibatch]:
        """Split into micro-batches of at most ``token_budget`` tokens (padded or packed cost,
        see :meth:`RolloutBuffer.micro_batches`), longest first when ``bucket``; every row lands
        in exactly one. Deterministic (no randomness)."""
        self._check()
        parts = _core.token_budget_batches(
            self.indices,
            self.buffer._core.total_lengths(),
            positive_option("token_budget", token_budget),
            bool_option(packed, "packed"),
            bool_option(bucket, "bucket"),
            positive_option("pad_to_multiple_of", pad_to_multiple_of),
        )
        return [Minibatch(self.buffer, p, epoch=self.epoch, step=self.step) for p in parts]

    def split(self, k: int, *, equal_size: bool = False, method: str = "best") -> list[Minibatch]:
        """Split into ``k`` parts of balanced token count (for data-parallel ranks or a fixed
        number of gradient-accumulation steps); rows keep their order within a part. See
        :func:`balanced_partition`."""
        p = balanced_partition(self.lengths, k, equal_size=equal_size, method=method)
        return [
            Minibatch(self.buffer, self.indices[part], epoch=self.epoch, step=self.step)
            for part in p.parts
        ]

    def pack(self, capacity: int) -> list[Minibatch]:
        """First-fit-decreasing rows of at most ``capacity`` tokens; each becomes a
        :class:`Minibatch` to materialise with :meth:`to_packed`."""
        plan = pack_sequences(self.lengths, capacity)
        return [
            Minibatch(self.buffer, self.indices[row], epoch=self.epoch, step=self.step)
            for row in plan.rows
        ]


def _wrap(arrays: dict[str, np.ndarray], return_tensors: str, device: Any) -> dict[str, Any]:
    if return_tensors == "np":
        if device is not None:
            raise InvalidOptionError("device applies to return_tensors='pt' only")
        return arrays
    if return_tensors != "pt":
        raise InvalidOptionError(f"return_tensors must be 'pt' or 'np', got {return_tensors!r}")
    import torch

    out: dict[str, Any] = {k: torch.from_numpy(v) for k, v in arrays.items()}
    if device is None:
        return out  # zero-copy views of the numpy arrays
    dev = torch.device(device)
    if dev.type == "cuda":
        # a non_blocking copy from pageable memory is staged synchronously by the driver;
        # from pinned memory it is a true asynchronous DMA (PyTorch's caching host allocator
        # keeps the pinned block alive until the copy is done)
        return {k: v.pin_memory().to(dev, non_blocking=True) for k, v in out.items()}
    return {k: v.to(dev) for k, v in out.items()}  # CPU: a no-op, still zero-copy


class MinibatchSampler:
    """Iterator over the planned batches of several epochs, yielding :class:`Minibatch`.

    The position (``epoch``, ``step`` of the next batch) is saved by :meth:`state_dict` with
    the whole configuration; :meth:`RolloutBuffer.resume_sampler` (or :meth:`load_state_dict`)
    continues exactly there, including at an epoch boundary, so a resumed run sees the same
    batches as an uninterrupted one.
    """

    def __init__(self, buffer: RolloutBuffer, core: Any) -> None:
        self.buffer = buffer
        self._core = core
        self._version = buffer.version

    def __iter__(self) -> Iterator[Minibatch]:
        return self

    def __next__(self) -> Minibatch:
        if self.buffer.version != self._version:
            raise StateError(
                "the buffer changed (add / clear / reset / load_state_dict) after this sampler "
                "was made; make a new sampler (or resume_sampler(state))"
            )
        nxt = self._core.next_batch()
        if nxt is None:
            raise StopIteration
        epoch, step, idx = nxt
        return Minibatch(self.buffer, idx, epoch=int(epoch), step=int(step))

    @property
    def epochs(self) -> int:
        return int(self._core.epochs)

    @property
    def position(self) -> tuple[int, int]:
        """``(epoch, step)`` of the next batch; ``(epochs, 0)`` once exhausted."""
        e, s = self._core.position
        return int(e), int(s)

    def batches_in_epoch(self, epoch: int) -> int:
        """Number of batches of ``epoch`` (fixed for minibatches; for token-budget plans it
        may vary between epochs when ``bucket=False``)."""
        return int(self._core.batches_in_epoch(uint64_option(epoch, "epoch")))

    def __len__(self) -> int:
        """Total number of batches over all epochs."""
        return sum(self.batches_in_epoch(e) for e in range(self.epochs))

    def remaining(self) -> int:
        """Batches still to come."""
        e, s = self.position
        return sum(self.batches_in_epoch(x) for x in range(e, self.epochs)) - s

    def state_dict(self) -> dict[str, Any]:
        """Configuration and position as plain ints / bools / strings (JSON-friendly)."""
        return {"format": SAMPLER_FORMAT, **self._core.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state`` (configuration included) against this sampler's buffer."""
        self._core = restore_core_sampler(self.buffer, state)
        self._version = self.buffer.version


def restore_core_sampler(buffer: RolloutBuffer, state: Mapping[str, Any]) -> Any:
    if not isinstance(state, Mapping):
        raise StateError(f"sampler state must be a mapping, got {type(state).__name__}")
    if state.get("format") != SAMPLER_FORMAT:
        raise StateError(
            f"sampler state format is {state.get('format')!r}; this version reads "
            f"{SAMPLER_FORMAT!r}"
        )
    core_state = {k: v for k, v in state.items() if k != "format"}
    return _core._Sampler.restore(core_state, buffer._core.total_lengths())
