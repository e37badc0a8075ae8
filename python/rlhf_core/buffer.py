"""Ragged rollout buffer, seeded minibatch planning and zero-copy batch materialisation.

The data lives in the Rust core (``rlhf_core._core._RolloutBuffer``): one flat array per field
plus offsets, no padding stored. This module converts inputs (numpy arrays, torch tensors,
lists), names every field and option, and hands planned batches to torch without a copy.

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

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from rlhf_core import _core
from rlhf_core.errors import (
    DtypeError,
    FieldError,
    InvalidOptionError,
    OffsetsError,
    ShapeError,
    StateError,
)

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
    "ESTIMATORS",
    "STATE_FORMAT",
]

#: Advantage estimators of :meth:`RolloutBuffer.compute_advantages`.
ESTIMATORS = ("gae", "grpo", "dr_grpo", "rloo", "reinforce++", "reinforce++_baseline")
#: Tag of :meth:`RolloutBuffer.state_dict` (bumped on incompatible changes).
STATE_FORMAT = "rlhf_core.RolloutBuffer/1"
SAMPLER_FORMAT = "rlhf_core.MinibatchSampler/1"

_ID_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))
_STORABLE = {np.dtype(t) for t in (np.int32, np.int64, np.float32, np.float64, np.bool_)}
_MASK_OK = {np.dtype(t) for t in (np.int32, np.int64, np.float32, np.float64, np.bool_)}


# ---------------------------------------------------------------------------------------------
# Input conversion
# ---------------------------------------------------------------------------------------------


class Ragged(NamedTuple):
    """A per-token input in the native ragged layout: ``values`` 1-D (every sequence
    concatenated) and ``offsets`` int ``(B + 1,)`` with ``offsets[0] == 0``; sequence ``i`` is
    ``values[offsets[i]:offsets[i + 1]]``."""

    values: Any
    offsets: Any


class Padded(NamedTuple):
    """A per-token input padded to ``(B, T)`` with its own ``mask`` of the same shape (each row
    one contiguous run of ones: left or right padding)."""

    values: Any
    mask: Any


def _is_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """numpy view of a CPU tensor / array-like. bfloat16 and float16 become float32 (an explicit,
    documented conversion: numpy has no bfloat16); other devices are copied to the CPU."""
    if _is_tensor(x):
        import torch

        t = x.detach()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()
        if t.device.type != "cpu":
            t = t.cpu()
        return np.asarray(t.numpy())
    a = np.asarray(x)
    if a.dtype == np.float16:
        a = a.astype(np.float32)
    return a


def _storable(a: np.ndarray, name: str) -> np.ndarray:
    if a.dtype in _STORABLE:
        return a
    if a.dtype.kind in "iu":
        return a.astype(np.int64)
    raise DtypeError(
        f"{name} has dtype {a.dtype}; expected int32, int64, float32, float64 or bool"
    )


def _as_bool_mask(a: np.ndarray, name: str) -> np.ndarray:
    """A 0/1 array of any numeric dtype as bool; other values are an error."""
    if a.dtype == np.bool_:
        return a
    bad = (a != 0) & (a != 1)
    if bad.any():
        where = np.argwhere(bad)[0].tolist()
        raise DtypeError(f"{name} must hold only 0/1 (or be bool); position {where} holds {a[tuple(where)]}")
    return a.astype(np.bool_)


def _mask_dtype(m: np.ndarray) -> np.ndarray:
    if m.dtype in _MASK_OK:
        return m
    if m.dtype.kind in "iu":
        return m.astype(np.int64)
    if m.dtype.kind == "f":
        return m.astype(np.float64)
    raise DtypeError(f"masks must be bool, integer or float, got {m.dtype}")


def _token_spec(
    name: str, value: Any, shared_mask: Any, *, bool_field: bool = False
) -> tuple[str, Any, Any]:
    """One per-token input as ``("ragged", values, lengths)``, ``("pieces", [one 1-D array per
    sequence], None)`` or ``("padded", values, mask)``.

    Accepted forms: a list/tuple of 1-D arrays or tensors (one per sequence); :class:`Ragged`
    (flat values + offsets); :class:`Padded` (2-D values + mask); or a 2-D ``(B, T)`` array with
    ``shared_mask``.
    """
    fix = (lambda a: _as_bool_mask(a, name)) if bool_field else (lambda a: _storable(a, name))
    if isinstance(value, Ragged):
        values, offsets = _to_numpy(value.values, name), _to_numpy(value.offsets, name)
        if values.ndim != 1 or offsets.ndim != 1:
            raise ShapeError(
                f"{name}: Ragged needs 1-D values and offsets, got shapes {values.shape} and "
                f"{offsets.shape}"
            )
        if offsets.dtype.kind not in "iu":
            raise DtypeError(f"{name}: offsets must be integers, got {offsets.dtype}")
        offsets = offsets.astype(np.int64, copy=False)
        if offsets.size == 0 or offsets[0] != 0:
            raise OffsetsError(f"{name}: offsets must start at 0 and have B + 1 entries")
        lengths = np.diff(offsets)
        if (lengths < 0).any():
            i = int(np.argmax(lengths < 0))
            raise OffsetsError(f"{name}: offsets decrease at index {i + 1}")
        return ("ragged", np.ascontiguousarray(fix(values)), lengths)
    if isinstance(value, Padded):
        values, mask = _to_numpy(value.values, name), _to_numpy(value.mask, name)
        if values.ndim != 2 or mask.shape != values.shape:
            raise ShapeError(
                f"{name}: Padded needs 2-D values and a mask of the same shape, got "
                f"{values.shape} and {mask.shape}"
            )
        return ("padded", np.ascontiguousarray(fix(values)), np.ascontiguousarray(_mask_dtype(mask)))
    if isinstance(value, (list, tuple)):
        if not value:
            return ("pieces", [], None)
        if all(type(v) is np.ndarray for v in value):
            arrays = list(value)  # the common case: no per-element conversion
        else:
            arrays = [_to_numpy(v, name) for v in value]
            # An empty Python list has no dtype of its own (numpy says float64): it takes the
            # dtype of the other sequences (int64 when all are empty).
            loose = {
                i for i, (v, a) in enumerate(zip(value, arrays, strict=True))
                if a.size == 0 and not isinstance(v, np.ndarray) and not _is_tensor(v)
            }
            if loose:
                typed = [a.dtype for i, a in enumerate(arrays) if i not in loose]
                dt = typed[0] if typed else np.dtype(np.int64)
                for i in loose:
                    arrays[i] = np.zeros(0, dtype=dt)
        if any(a.ndim != 1 for a in arrays):
            i = next(i for i, a in enumerate(arrays) if a.ndim != 1)
            raise ShapeError(f"{name}: sequence {i} has shape {arrays[i].shape}; expected a 1-D array")
        first_dt = arrays[0].dtype
        if any(a.dtype != first_dt for a in arrays):
            i = next(i for i, a in enumerate(arrays) if a.dtype != first_dt)
            raise DtypeError(
                f"{name}: sequence {i} has dtype {arrays[i].dtype}, sequence 0 has "
                f"{first_dt}; every sequence of a field must have the same dtype"
            )
        if bool_field or first_dt not in _STORABLE:
            arrays = [fix(a) for a in arrays]
        if not all(a.flags.c_contiguous for a in arrays):
            arrays = [np.ascontiguousarray(a) for a in arrays]
        # One slice per sequence goes straight into the Rust column (no concatenation).
        return ("pieces", arrays, None)
    a = _to_numpy(value, name)
    if a.ndim == 2:
        if shared_mask is None:
            raise ShapeError(
                f"{name} is padded (B, T) = {a.shape}; pass a mask of the same shape (the "
                f"shared prompt_mask / response_mask, or Padded({name}, mask))"
            )
        m = _to_numpy(shared_mask, "mask")
        if m.shape != a.shape:
            raise ShapeError(f"{name} has shape {a.shape} but its mask has shape {m.shape}")
        return ("padded", np.ascontiguousarray(fix(a)), np.ascontiguousarray(_mask_dtype(m)))
    raise ShapeError(
        f"{name} has shape {a.shape}; give a list of 1-D arrays (one per sequence), "
        f"Ragged(values, offsets), or a padded (B, T) array with a mask"
    )


def _seq_array(name: str, value: Any) -> np.ndarray:
    if name == "scores" and isinstance(value, (list, tuple)):
        value = [np.nan if v is None else v for v in value]
    a = _to_numpy(value, name)
    if a.ndim != 1:
        raise ShapeError(f"{name} must be 1-D with one value per sequence, got shape {a.shape}")
    if name == "scores" and a.dtype.kind in "iub":
        a = a.astype(np.float64)
    if name == "truncated":
        a = _as_bool_mask(a, name)
    if name == "group_ids" and a.dtype.kind not in "iu":
        raise DtypeError(f"group_ids must be integers, got {a.dtype}; map other ids to ints first")
    return np.ascontiguousarray(_storable(a, name))


def _lengths_array(lengths: Any, name: str = "lengths") -> np.ndarray:
    a = _to_numpy(lengths, name)
    if a.size == 0 and isinstance(lengths, (list, tuple)):
        a = np.zeros(0, dtype=np.int64)  # an empty Python list has no dtype of its own
    if a.ndim != 1:
        raise ShapeError(f"{name} must be 1-D, got shape {a.shape}")
    if a.dtype.kind not in "iu":
        raise DtypeError(f"{name} must be integers, got {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.int64)


def _seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InvalidOptionError(f"seed must be an int, got {type(seed).__name__}")
    seed = int(seed)
    if not 0 <= seed < 2**64:
        raise InvalidOptionError(f"seed must be in [0, 2**64), got {seed}")
    return seed


def _positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidOptionError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------------------------
# The buffer
# ---------------------------------------------------------------------------------------------


class RolloutBuffer:
    """Variable-length rollouts stored raggedly (one flat array per field plus offsets).

    Args:
        float_dtype: dtype of the advantages and returns that :meth:`compute_advantages`
            stores, ``"float32"`` (default) or ``"float64"``.

    The first :meth:`add` fixes the schema (field names and dtypes); later adds must give the
    same fields with the same dtypes (cast first; nothing is converted silently except
    bfloat16/float16 to float32 and unusual integer types to int64). A rejected add raises a
    typed error naming the field and the sequence and leaves the buffer unchanged.

    Example::

        buf = RolloutBuffer()
        buf.add(prompt_ids=[p0, p1], response_ids=[r0, r1], logprobs=[lp0, lp1],
                scores=np.array([1.0, 0.0]), group_ids=np.array([0, 0]))
        buf.compute_advantages("grpo")
        for mb in buf.minibatches(batch_size=2, epochs=2, seed=0):
            batch = mb.to_padded()          # dict of torch tensors, see the module docs
    """

    def __init__(self, *, float_dtype: str = "float32") -> None:
        self._core = _core._RolloutBuffer(float_dtype)

    # -- size and schema ------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._core)

    def __repr__(self) -> str:
        return (
            f"RolloutBuffer({len(self)} sequences, {self.num_response_tokens} response tokens, "
            f"token fields {list(self.token_fields)}, sequence fields "
            f"{list(self.sequence_fields)})"
        )

    @property
    def num_response_tokens(self) -> int:
        """Total response tokens held."""
        return int(self._core.num_response_tokens)

    @property
    def num_prompt_tokens(self) -> int:
        """Total prompt tokens held."""
        return int(self._core.num_prompt_tokens)

    @property
    def float_dtype(self) -> str:
        return str(self._core.float_dtype)

    @property
    def token_fields(self) -> dict[str, str]:
        """``{name: dtype}`` of the per-token fields (``response_ids`` first)."""
        return dict(self._core.token_field_dtypes())

    @property
    def sequence_fields(self) -> dict[str, str]:
        """``{name: dtype}`` of the per-sequence fields."""
        return dict(self._core.seq_field_dtypes())

    @property
    def advantages_info(self) -> dict[str, Any] | None:
        """``{"estimator", "level" ("token" | "sequence"), "has_returns"}`` of the stored
        advantages, or None (none computed since the last add)."""
        info = self._core.computed_info()
        if info is None:
            return None
        return {"estimator": info[0], "level": info[1], "has_returns": info[2]}

    @property
    def nbytes(self) -> int:
        """Bytes of the values held (offsets included)."""
        return int(self._core.nbytes)

    @property
    def capacity_bytes(self) -> int:
        """Bytes allocated (at most 1/8 above what the adds needed; see :meth:`reserve`)."""
        return int(self._core.capacity_bytes)

    @property
    def version(self) -> int:
        """Changes whenever the sequences held change (add, clear, reset, load)."""
        return int(self._core.version)

    # -- adding ---------------------------------------------------------------------------

    def add(
        self,
        *,
        prompt_ids: Any,
        response_ids: Any,
        logprobs: Any = None,
        ref_logprobs: Any = None,
        values: Any = None,
        rewards: Any = None,
        loss_mask: Any = None,
        scores: Any = None,
        group_ids: Any = None,
        truncated: Any = None,
        prompt_mask: Any = None,
        response_mask: Any = None,
        sequence_fields: Mapping[str, Any] | None = None,
        **token_fields: Any,
    ) -> None:
        """Append a batch of ``B`` sequences.

        Per-token inputs (``prompt_ids``, ``response_ids`` and every per-token field) may each
        be given as:

        - a list of ``B`` 1-D arrays / tensors (one per sequence), or
        - :class:`Ragged` ``(values, offsets)``: flat 1-D values plus offsets (``B + 1``), or
        - a padded ``(B, T)`` array / tensor with a mask of the same shape: ``prompt_mask``
          for ``prompt_ids``, ``response_mask`` for the response-aligned fields, or
          :class:`Padded` ``(values, mask)``. Each mask row must be one contiguous run of ones
          (left or right padding); its ones select the tokens.

        Args:
            prompt_ids: int32/int64 token ids, at least one per sequence.
            response_ids: int32/int64 token ids (``R >= 0`` per sequence; EOS included when
                generation stopped).
            logprobs, ref_logprobs, values, rewards: float32/float64, one per response token
                (``logprobs`` are the sampling policy's, ``values`` the value model's of the
                state before each response token, ``rewards`` per-token rewards).
            loss_mask: bool (or 0/1), one per response token: false for response tokens that
                must not be trained on (e.g. tool output inside a multi-turn response).
            scores: float ``(B,)`` sequence rewards; NaN (or None in a list) marks an
                unscorable sequence (advantage 0).
            group_ids: int ``(B,)``: sequences with equal ids form a group (e.g. the samples
                of one prompt).
            truncated: bool ``(B,)``: the response hit the length limit.
            prompt_mask, response_mask: masks for padded ``prompt_ids`` / response fields.
            sequence_fields: more per-sequence fields ``{name: (B,) array}``.
            **token_fields: more per-token fields (names are identifiers; see the module docs
                for reserved names).

        Raises:
            ShapeError: lengths disagree (the message names the field and the sequence).
            DtypeError: unsupported dtype, or a dtype that differs from the buffer's schema.
            FieldError: a field missing from / unknown to the schema, or a reserved name.
        """
        if isinstance(response_ids, (list, tuple)) and not isinstance(
            response_ids, (Ragged, Padded)
        ) and len(response_ids) == 0:
            return  # an empty batch adds nothing (and fixes no schema)
        token: list[tuple[str, tuple[str, Any, Any]]] = [
            ("response_ids", _token_spec("response_ids", response_ids, response_mask))
        ]
        named = {
            "logprobs": logprobs,
            "ref_logprobs": ref_logprobs,
            "values": values,
            "rewards": rewards,
            "loss_mask": loss_mask,
        }
        for name, v in {**named, **token_fields}.items():
            if v is not None:
                token.append(
                    (name, _token_spec(name, v, response_mask, bool_field=name == "loss_mask"))
                )
        seq: list[tuple[str, np.ndarray]] = []
        for name, v in (("scores", scores), ("group_ids", group_ids), ("truncated", truncated)):
            if v is not None:
                seq.append((name, _seq_array(name, v)))
        for name, v in (sequence_fields or {}).items():
            if name in token_fields or name in named:
                raise FieldError(f"field {name!r} is given both per token and per sequence")
            seq.append((name, _seq_array(name, v)))
        prompt = _token_spec("prompt_ids", prompt_ids, prompt_mask)
        pdt = prompt[1][0].dtype if prompt[0] == "pieces" and prompt[1] else None
        if prompt[0] != "pieces":
            pdt = prompt[1].dtype
        if pdt is not None and pdt not in _ID_DTYPES:
            raise DtypeError(f"prompt_ids must be int32 or int64, got {pdt}")
        self._core.add(prompt, token, seq)

    def reserve(self, sequences: int, prompt_tokens: int, response_tokens: int) -> None:
        """Pre-allocate room for more sequences / tokens (avoids regrowth; schema needed)."""
        self._core.reserve(int(sequences), int(prompt_tokens), int(response_tokens))

    def shrink_to_fit(self) -> None:
        """Release allocated but unused memory."""
        self._core.shrink_to_fit()

    def clear(self) -> None:
        """Drop every sequence; keep the schema and the allocated memory for the next adds."""
        self._core.clear()

    def reset(self) -> None:
        """Drop every sequence, the schema and the memory."""
        self._core.reset()

    # -- reading --------------------------------------------------------------------------

    def offsets(self, which: str = "response") -> np.ndarray:
        """int64 ``(N + 1,)`` offsets of the ``"response"`` (per-token fields) or ``"prompt"``
        tokens (a copy)."""
        return self._core.offsets(which)

    def lengths(self, which: str = "total") -> np.ndarray:
        """int64 ``(N,)`` lengths: ``"prompt"``, ``"response"`` or ``"total"`` (both)."""
        if which == "total":
            return self._core.total_lengths()
        if which in ("prompt", "response"):
            return np.diff(self._core.offsets(which))
        raise InvalidOptionError(f"which must be 'prompt', 'response' or 'total', got {which!r}")

    def field(self, name: str) -> np.ndarray:
        """A copy of a stored field, flat: per-token fields have ``num_response_tokens``
        values (split with :meth:`offsets`), ``prompt_ids`` ``num_prompt_tokens``, per-sequence
        fields ``N``; ``"advantages"`` / ``"returns"`` once computed."""
        return self._core.field(name)

    def sequence(self, i: int) -> dict[str, Any]:
        """Every field of sequence ``i`` (copies): 1-D arrays for per-token fields, scalars for
        per-sequence fields. For inspection: each call copies whole fields; read many sequences
        with :meth:`field` and :meth:`offsets` instead."""
        n = len(self)
        if not -n <= i < n:
            raise ShapeError(f"sequence index {i} is out of range for {n} sequences")
        i %= n
        po, ro = self.offsets("prompt"), self.offsets("response")
        out: dict[str, Any] = {"prompt_ids": self.field("prompt_ids")[po[i] : po[i + 1]]}
        for name in self.token_fields:
            out[name] = self.field(name)[ro[i] : ro[i + 1]]
        for name in self.sequence_fields:
            out[name] = self.field(name)[i].item()
        return out

    def stats(self) -> dict[str, float]:
        """Counts and statistics for logging: ``num_sequences``, ``num_response_tokens``,
        ``response_length/{mean,std,min,max}``, ``prompt_length/...``, ``truncated/frac``,
        ``scores/{mean,std,min,max,num_nan}``, ``groups/{num_groups,num_singleton,
        frac_zero_std}``, ``advantages/{mean,std,min,max}``, ``returns/{mean,std}`` (each only
        when the data it needs is held; std with ddof 0)."""
        return dict(self._core.stats())

    # -- advantages -----------------------------------------------------------------------

    def compute_advantages(
        self,
        estimator: str = "grpo",
        *,
        gamma: float = 1.0,
        lam: float = 1.0,
        masked: str = "skip",
        kl_coef: float = 0.0,
        kl_estimator: str = "k1",
        kl_clamp: float | None = None,
        ddof: int = 1,
        eps: float = 1e-6,
        singleton: str = "zero",
        scale: str | None = None,
        whiten: str | bool | None = None,
        whiten_eps: float = 1e-8,
        group_size: int | None = None,
    ) -> dict[str, float]:
        """Run an advantage estimator in place over the stored fields (Rust kernels on the
        flat ragged arrays; no padding, no copy when dtypes match ``float_dtype``).

        Estimators (the anchor each matches in brackets):

        - ``"gae"`` (PPO): per-token rewards = the ``rewards`` field when the buffer holds one
          (it is the whole per-token reward: scores are not added again), else the score on
          each sequence's last valid token; minus ``kl_coef``·KL when ``kl_coef != 0``
          (``kl_estimator``, ``kl_clamp``; needs ``logprobs`` and ``ref_logprobs``). GAE over
          ``values`` with ``gamma``, ``lam``; ``masked`` = ``"skip"`` (verl) or ``"zero"``
          (OpenRLHF) for ``loss_mask``-ed tokens inside a response. Per-token advantages and
          returns.
        - ``"reinforce++"``: the same rewards; returns = discounted reward-to-go (``gamma``);
          advantages = whitened returns (OpenRLHF).
        - ``"grpo"``: (score − group mean) / (group std + ``eps``), ``ddof`` [verl, TRL].
        - ``"dr_grpo"``: score − group mean (no std) [Dr. GRPO].
        - ``"rloo"``: leave-one-out baseline, no scaling [verl, OpenRLHF].
        - ``"reinforce++_baseline"``: score − group mean on the last valid token (plus the
          ``rewards`` field when held), then as ``"reinforce++"`` [OpenRLHF]; kept per sequence
          when ``kl_coef == 0``, ``gamma == 1`` and no ``rewards`` field is held.

        The GRPO family keeps **one advantage per sequence**; it is broadcast to tokens only
        when a batch is materialised. Groups come from ``group_ids`` or contiguous
        ``group_size``; ``scale`` overrides the std scaling (``"group"``, ``"batch"``,
        ``"none"``); ``singleton`` = ``"zero"`` or ``"raw"`` for groups of one. NaN scores give
        advantage 0 and are left out of statistics.

        ``whiten``: ``"token"`` (every valid token weighs the same; default for gae and the
        reinforce++ family), ``"sequence"`` (every sequence weighs the same) or ``"none"``
        (default for the GRPO family); ``(x − μ)/sqrt(σ² + whiten_eps)``. ``True`` means the
        estimator's default mode if it whitens, else ``"token"``; ``False`` means ``"none"``.

        Returns:
            ``mean``, ``std``, ``min``, ``max`` of the advantages over what is trained on (valid
            tokens, or sequences with a valid token), and for group estimators ``num_groups``,
            ``num_nan``, ``num_singleton``, ``num_zero_std``, ``frac_zero_std``.
        """
        if estimator not in ESTIMATORS:
            raise InvalidOptionError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        if whiten is True:
            whiten = "token"
        elif whiten is False:
            whiten = "none"
        stats = self._core.compute_advantages(
            estimator,
            gamma=float(gamma),
            lam=float(lam),
            masked=masked,
            kl_coef=float(kl_coef),
            kl_estimator=kl_estimator,
            kl_clamp=None if kl_clamp is None else float(kl_clamp),
            ddof=int(ddof),
            eps=float(eps),
            singleton=singleton,
            scale=scale,
            whiten=whiten,
            whiten_eps=float(whiten_eps),
            group_size=None if group_size is None else int(group_size),
        )
        out: dict[str, float] = {}
        moments = self._core.advantage_moments()
        if moments is not None:
            out.update(zip(("mean", "std", "min", "max"), moments, strict=True))
        if stats is not None:
            groups, nan, single, zero = stats
            out.update(
                num_groups=float(groups),
                num_nan=float(nan),
                num_singleton=float(single),
                num_zero_std=float(zero),
                frac_zero_std=zero / groups if groups else 0.0,
            )
        return out

    def set_advantages(
        self, advantages: Any, *, returns: Any = None, estimator: str = "custom"
    ) -> None:
        """Store advantages computed elsewhere: ``(N,)`` per sequence, or per token (flat
        ``(num_response_tokens,)`` in the buffer's order, or a list of per-sequence 1-D
        arrays); ``returns`` per token likewise. Cleared by the next add."""
        if isinstance(advantages, (list, tuple)):
            advantages = np.concatenate([_to_numpy(a, "advantages") for a in advantages])
        a = np.ascontiguousarray(_to_numpy(advantages, "advantages"))
        if isinstance(returns, (list, tuple)):
            returns = np.concatenate([_to_numpy(r, "returns") for r in returns])
        r = None if returns is None else np.ascontiguousarray(_to_numpy(returns, "returns"))
        n, t = len(self), self.num_response_tokens
        if a.ndim != 1:
            raise ShapeError(f"advantages must be 1-D, got shape {a.shape}")
        if a.shape[0] == t and (a.shape[0] != n or r is not None):
            level = "token"
        elif a.shape[0] == n:
            level = "sequence"
        else:
            raise ShapeError(
                f"advantages has {a.shape[0]} values; expected {n} (one per sequence) or {t} "
                f"(one per response token)"
            )
        self._core.set_advantages(estimator, level, a, r)

    # -- planning -------------------------------------------------------------------------

    def minibatches(
        self,
        batch_size: int,
        *,
        epochs: int = 1,
        seed: int = 0,
        drop_last: bool = False,
        shuffle: bool = True,
    ) -> MinibatchSampler:
        """Minibatches of ``batch_size`` sequences, a fresh seeded permutation per epoch.

        ``drop_last=False`` keeps the last, smaller minibatch of each epoch; ``True`` drops it
        (an error if that would leave no minibatch at all). Iterating yields
        :class:`Minibatch` objects; the sampler's ``state_dict()`` resumes mid-epoch exactly.
        """
        s = _core._Sampler.minibatches(
            self._core.total_lengths(),
            _positive("batch_size", batch_size),
            bool(drop_last),
            _positive("epochs", epochs),
            _seed(seed),
            bool(shuffle),
        )
        return MinibatchSampler(self, s)

    def micro_batches(
        self,
        token_budget: int,
        *,
        epochs: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        packed: bool = False,
        bucket: bool = True,
        pad_to_multiple_of: int = 1,
    ) -> MinibatchSampler:
        """Micro-batches of at most ``token_budget`` tokens each, every sequence once per epoch.

        Padded cost (``packed=False``): rows × longest ``prompt + response`` (rounded up to
        ``pad_to_multiple_of``), i.e. the size of ``to_padded()``'s ``input_ids``. Packed cost:
        the sum of lengths (``to_packed()``). ``bucket=True`` sorts sequences by length before
        cutting (padded) or packs them first-fit-decreasing (packed), so padding stays small,
        then shuffles the micro-batch order; ``bucket=False`` cuts greedily in shuffled order.

        Raises:
            CapacityError: a sequence is longer than ``token_budget`` (named by index).
        """
        s = _core._Sampler.micro_batches(
            self._core.total_lengths(),
            _positive("token_budget", token_budget),
            bool(packed),
            bool(bucket),
            _positive("pad_to_multiple_of", pad_to_multiple_of),
            _positive("epochs", epochs),
            _seed(seed),
            bool(shuffle),
        )
        return MinibatchSampler(self, s)

    def resume_sampler(self, state: Mapping[str, Any]) -> MinibatchSampler:
        """A sampler restored from :meth:`MinibatchSampler.state_dict` (configuration and
        position); the buffer must hold the same sequences as when the state was saved."""
        return MinibatchSampler(self, _restore_core_sampler(self, state))

    def batch(self, indices: Any) -> Minibatch:
        """A :class:`Minibatch` of the given buffer indices (in that row order)."""
        idx = _lengths_array(indices, "indices")
        return Minibatch(self, idx)

    def all(self) -> Minibatch:
        """Every sequence, in buffer order."""
        return Minibatch(self, np.arange(len(self), dtype=np.int64))

    # -- state ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything held, as numpy copies and plain values (exact round trip through
        :meth:`load_state_dict`, floats bit for bit, NaN included)::

            {"format": STATE_FORMAT, "float_dtype": str,
             "prompt_offsets": int64 (N+1,), "response_offsets": int64 (N+1,),
             "prompt_ids": int (P,) | None,
             "token_fields": {name: (T,) array}, "sequence_fields": {name: (N,) array},
             "computed": None | {"estimator": str, "level": "token" | "sequence",
                                 "advantages": array, "returns": array | None}}
        """
        parts = self._core.state_parts()
        return {
            "format": STATE_FORMAT,
            "float_dtype": parts["float_dtype"],
            "prompt_offsets": parts["prompt_offsets"],
            "response_offsets": parts["response_offsets"],
            "prompt_ids": parts["prompt_ids"],
            "token_fields": dict(parts["token_fields"]),
            "sequence_fields": dict(parts["seq_fields"]),
            "computed": parts["computed"],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the contents with a :meth:`state_dict` (numpy arrays or torch tensors).
        Every invariant is checked first (``StateError``); on error nothing changes.
        Samplers made before the load stop with ``StateError``; resume them with
        :meth:`resume_sampler`."""
        if not isinstance(state, Mapping):
            raise StateError(f"state must be a mapping, got {type(state).__name__}")
        fmt = state.get("format")
        if fmt != STATE_FORMAT:
            raise StateError(f"state format is {fmt!r}; this version reads {STATE_FORMAT!r}")

        def arr(x: Any, key: str) -> Any:
            return None if x is None else np.ascontiguousarray(_to_numpy(x, key))

        try:
            computed = state["computed"]
            parts = {
                "float_dtype": state["float_dtype"],
                "prompt_offsets": arr(state["prompt_offsets"], "prompt_offsets"),
                "response_offsets": arr(state["response_offsets"], "response_offsets"),
                "prompt_ids": arr(state["prompt_ids"], "prompt_ids"),
                "token_fields": [(k, arr(v, k)) for k, v in state["token_fields"].items()],
                "seq_fields": [(k, arr(v, k)) for k, v in state["sequence_fields"].items()],
                "computed": None
                if computed is None
                else {
                    "estimator": computed["estimator"],
                    "level": computed["level"],
                    "advantages": arr(computed["advantages"], "advantages"),
                    "returns": arr(computed["returns"], "returns"),
                },
            }
        except KeyError as e:
            raise StateError(f"buffer state lacks the key {e.args[0]!r}") from None
        self._core.load_state_parts(parts)


def _restore_core_sampler(buffer: RolloutBuffer, state: Mapping[str, Any]) -> Any:
    if not isinstance(state, Mapping):
        raise StateError(f"sampler state must be a mapping, got {type(state).__name__}")
    if state.get("format") != SAMPLER_FORMAT:
        raise StateError(
            f"sampler state format is {state.get('format')!r}; this version reads "
            f"{SAMPLER_FORMAT!r}"
        )
    core_state = {k: v for k, v in state.items() if k != "format"}
    return _core._Sampler.restore(core_state, buffer._core.total_lengths())


# ---------------------------------------------------------------------------------------------
# Minibatches
# ---------------------------------------------------------------------------------------------


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
        """Right-padded arrays of the rows; see the module docs for every key and its shape.

        ``return_tensors="pt"`` (default) gives torch tensors that share memory with the
        freshly built numpy arrays (``torch.from_numpy``: no copy), moved to ``device`` if
        given; ``"np"`` gives the numpy arrays.
        """
        self._check()
        arrays, _ = self.buffer._core.padded(
            self.indices, int(pad_token_id), _positive("pad_to_multiple_of", pad_to_multiple_of)
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
        arrays, max_seqlen = self.buffer._core.packed(self.indices, int(pad_token_id))
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
            _positive("token_budget", token_budget),
            bool(packed),
            bool(bucket),
            _positive("pad_to_multiple_of", pad_to_multiple_of),
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
        return int(self._core.batches_in_epoch(int(epoch)))

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
        self._core = _restore_core_sampler(self.buffer, state)
        self._version = self.buffer.version


# ---------------------------------------------------------------------------------------------
# Partition and packing
# ---------------------------------------------------------------------------------------------


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
        _lengths_array(lengths), _positive("k", k), bool(equal_size), method
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
    rows, loads = _core.pack_sequences(_lengths_array(lengths), _positive("capacity", capacity))
    return PackPlan(rows=list(rows), loads=loads, capacity=int(capacity))


def permutation(n: int, seed: int, epoch: int = 0) -> np.ndarray:
    """The permutation of ``0..n`` that epoch ``epoch`` of ``seed`` uses (int64)."""
    if n < 0:
        raise InvalidOptionError(f"n must be >= 0, got {n}")
    if epoch < 0:
        raise InvalidOptionError(f"epoch must be >= 0, got {epoch}")
    return _core.permutation(int(n), _seed(seed), int(epoch))

