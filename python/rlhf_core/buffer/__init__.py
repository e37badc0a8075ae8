"""Ragged rollout buffer, seeded minibatch planning and zero-copy batch materialisation.

The data lives in the Rust core (``rlhf_core._core._RolloutBuffer``): one flat array per field
plus offsets, no padding stored. This package converts inputs (numpy arrays, torch tensors,
lists), names every field and option, and hands planned batches to torch without a copy:
:mod:`~rlhf_core.buffer.rollout_buffer` (:class:`RolloutBuffer`),
:mod:`~rlhf_core.buffer.minibatch` (:class:`Minibatch`, :class:`MinibatchSampler`),
:mod:`~rlhf_core.buffer.planning` (:func:`balanced_partition`, :func:`pack_sequences`,
:func:`permutation`), :mod:`~rlhf_core.buffer.refill` (:class:`GroupRefill`, dynamic sampling's
refill bookkeeping) and :mod:`~rlhf_core.buffer.inputs` (:class:`Ragged`, :class:`Padded` and
the checks of every input). Every public name is importable from ``rlhf_core.buffer``.

Layout and alignment (the contract trainers rely on; ``docs/buffer.md`` has a picture)
--------------------------------------------------------------------------------------
Every sequence ``s`` is ``prompt_ids(s)`` (``P >= 1`` tokens) followed by ``response_ids(s)``
(``R >= 0`` tokens). **Per-token fields** (``logprobs``, ``ref_logprobs``, ``values``,
``rewards``, ``loss_mask`` and any user-named field) hold one value per **response token**:
value ``k`` belongs to response token ``k``. **Per-sequence fields** (``scores``,
``group_ids``, ``truncated`` and user-named ones passed in ``sequence_fields``) hold one value
per sequence.

A causal LM's ``logits[:, j]`` predict ``input_ids[:, j + 1]``. A materialised batch therefore
puts response token ``k`` of a sequence at ``input_ids[:, P + k]`` and every per-token value
``k`` at column ``P + k - 1`` of arrays that have **one column fewer** than ``input_ids``; they
line up with ``logits[:, :-1]`` and with the log-probabilities of ``input_ids[:, 1:]`` (what
``rlhf_core.models.token_logprobs`` returns). Concretely, for a right-padded batch of shape
``(b, t)``:

- ``input_ids`` int64 ``(b, t)``, ``attention_mask`` int64 ``(b, t)``, ``position_ids`` int64
  ``(b, t)`` (``0 .. L - 1``; 0 on padding);
- ``response_mask`` bool ``(b, t - 1)``: ``response_mask[:, j]`` is true iff
  ``input_ids[:, j + 1]`` is a response token (and its ``loss_mask``, if the buffer holds one,
  is true). It masks ``logits[:, j]`` / ``token_logprobs(...)[:, j]`` in the loss;
- ``old_logprobs`` (the ``logprobs`` field), ``ref_logprobs``, ``values``, ``rewards``, user
  per-token fields: ``(b, t - 1)``, same dtype as stored, 0 off the response;
- ``advantages`` ``(b, t - 1)`` (a per-sequence advantage is broadcast over ``response_mask``
  here, and only here), ``returns`` ``(b, t - 1)`` when computed per token, ``seq_advantages``
  ``(b,)`` for the outcome estimators;
- ``seq_index`` int64 ``(b,)`` (buffer index of each row), ``prompt_lengths``,
  ``response_lengths`` int64 ``(b,)`` and every per-sequence field ``(b,)``.

``values`` follow the same convention: ``values[:, j]`` is the value of the state after
``input_ids[:, : j + 1]``, the state in which ``input_ids[:, j + 1]`` is chosen, so a value
model's output ``(b, t)`` is compared through ``value_out[:, :-1]``.

Packed batches (:meth:`Minibatch.to_packed`) put the sequences back to back in one row:
``input_ids``, ``position_ids`` (restarting at 0 per sequence) and ``seq_ids`` ``(1, total)``,
``cu_seqlens`` int32 ``(b + 1,)``, ``max_seqlen`` int, next-token arrays ``(1, total - 1)``.

Determinism
-----------
Shuffles use SplitMix64 with Lemire's unbiased bounded integers, seeded from ``(seed, epoch)``:
the same seed gives the same batches on every machine and for any thread count, and a
sampler's position is two integers, saved by :meth:`MinibatchSampler.state_dict`.
"""

from rlhf_core.buffer.inputs import Padded, Ragged
from rlhf_core.buffer.minibatch import SAMPLER_FORMAT, Minibatch, MinibatchSampler
from rlhf_core.buffer.planning import (
    PackPlan,
    Partition,
    balanced_partition,
    pack_sequences,
    permutation,
)
from rlhf_core.buffer.refill import GroupRefill, RefillSelection
from rlhf_core.buffer.rollout_buffer import ESTIMATORS, STATE_FORMAT, RolloutBuffer

__all__ = [
    "RolloutBuffer",
    "Ragged",
    "Padded",
    "Minibatch",
    "MinibatchSampler",
    "Partition",
    "PackPlan",
    "balanced_partition",
    "pack_sequences",
    "permutation",
    "GroupRefill",
    "RefillSelection",
    "ESTIMATORS",
    "SAMPLER_FORMAT",
    "STATE_FORMAT",
]
