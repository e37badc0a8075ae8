"""The rollout buffer: variable-length sequences held raggedly in the Rust core (one flat array
per field plus offsets), advantages computed in place by its kernels, and the planners that
turn it into minibatches. The layout contract is stated in :mod:`rlhf_core.buffer`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from rlhf_core import _core
from rlhf_core import ops as _ops
from rlhf_core._arrays import to_numpy
from rlhf_core._options import (
    bool_option,
    int_option,
    positive_option,
    real_option,
    seed_option,
    size_option,
    str_option,
)
from rlhf_core.buffer.inputs import (
    ID_DTYPES,
    Padded,
    Ragged,
    field_to_numpy,
    index_array,
    sequence_input,
    token_input,
)
from rlhf_core.buffer.minibatch import Minibatch, MinibatchSampler, restore_core_sampler
from rlhf_core.errors import DtypeError, FieldError, InvalidOptionError, ShapeError, StateError

__all__ = ["ESTIMATORS", "STATE_FORMAT", "RolloutBuffer"]

#: Advantage estimators of :meth:`RolloutBuffer.compute_advantages`.
ESTIMATORS = ("gae", "grpo", "dr_grpo", "rloo", "reinforce++", "reinforce++_baseline")
#: Tag of :meth:`RolloutBuffer.state_dict` (bumped on incompatible changes).
STATE_FORMAT = "rlhf_core.RolloutBuffer/1"


class RolloutBuffer:
    """Variable-length rollouts stored raggedly (one flat array per field plus offsets).

    Args:
        float_dtype: dtype of the advantages and returns that :meth:`compute_advantages`
            stores, ``"float32"`` (default) or ``"float64"``.

    The first :meth:`add` fixes the schema (field names and dtypes); later adds must give the
    same fields with the same dtypes (cast first; nothing is converted silently except unusual
    integer types to int64). float16 / bfloat16 values and tensors on a GPU are refused unless
    the add passes ``cast=True`` (see :mod:`rlhf_core._arrays`). A rejected add raises a typed
    error naming the field and the sequence and leaves the buffer unchanged.

    Threads may share a buffer: reads (batches, statistics, copies) run together, writes
    (add, clear, :meth:`compute_advantages`, loads) one at a time, all with the GIL released.
    A size too large to allocate is an :class:`~rlhf_core.errors.AllocationError` (a
    ``MemoryError``) naming the argument.

    Example::

        buf = RolloutBuffer()
        buf.add(prompt_ids=[p0, p1], response_ids=[r0, r1], logprobs=[lp0, lp1],
                scores=np.array([1.0, 0.0]), group_ids=np.array([0, 0]))
        buf.compute_advantages("grpo")
        for mb in buf.minibatches(batch_size=2, epochs=2, seed=0):
            batch = mb.to_padded()          # dict of torch tensors, see rlhf_core.buffer
    """

    def __init__(self, *, float_dtype: str = "float32") -> None:
        self._core = _core._RolloutBuffer(str_option(float_dtype, "float_dtype"))

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
        cast: bool = False,
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
            cast: convert what the strict default refuses: float16 / bfloat16 values to
                float32 (numpy has no bfloat16; float32 holds both exactly) and tensors on
                another device to the CPU (a copy). Off by default, so a copy or a widening is
                never silent.
            **token_fields: more per-token fields (names are identifiers other than the keys
                of a materialised batch, such as ``input_ids`` or ``advantages``, which are
                reserved; ``cast`` is this option, not a field).

        Raises:
            ShapeError: lengths disagree (the message names the field and the sequence).
            DtypeError: unsupported dtype, or a dtype that differs from the buffer's schema;
                a float16 / bfloat16 or non-CPU input without ``cast=True``.
            FieldError: a field missing from / unknown to the schema, or a reserved name.
        """
        if isinstance(response_ids, (list, tuple)) and not isinstance(
            response_ids, (Ragged, Padded)
        ) and len(response_ids) == 0:
            return  # an empty batch adds nothing (and fixes no schema)
        token: list[tuple[str, tuple[str, Any, Any]]] = [
            ("response_ids", token_input("response_ids", response_ids, response_mask, cast=cast))
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
                spec = token_input(
                    name, v, response_mask, bool_field=name == "loss_mask", cast=cast
                )
                token.append((name, spec))
        seq: list[tuple[str, np.ndarray]] = []
        for name, v in (("scores", scores), ("group_ids", group_ids), ("truncated", truncated)):
            if v is not None:
                seq.append((name, sequence_input(name, v, cast=cast)))
        for name, v in (sequence_fields or {}).items():
            if name in token_fields or name in named:
                raise FieldError(f"field {name!r} is given both per token and per sequence")
            seq.append((name, sequence_input(name, v, cast=cast)))
        prompt = token_input("prompt_ids", prompt_ids, prompt_mask, cast=cast)
        pdt = prompt[1][0].dtype if prompt[0] == "pieces" and prompt[1] else None
        if prompt[0] != "pieces":
            pdt = prompt[1].dtype
        if pdt is not None and pdt not in ID_DTYPES:
            raise DtypeError(f"prompt_ids must be int32 or int64, got {pdt}")
        self._core.add(prompt, token, seq)

    def reserve(self, sequences: int, prompt_tokens: int, response_tokens: int) -> None:
        """Pre-allocate room for more sequences / tokens (avoids regrowth; the token columns
        need the schema of a first add). Each size is an integer in ``[0, 2**63)``; one that
        cannot be allocated raises ``AllocationError`` (a ``MemoryError``) naming it."""
        self._core.reserve(
            size_option(sequences, "sequences"),
            size_option(prompt_tokens, "prompt_tokens"),
            size_option(response_tokens, "response_tokens"),
        )

    def shrink_to_fit(self) -> None:
        """Release allocated but unused memory."""
        self._core.shrink_to_fit()

    def clear(self) -> None:
        """Drop every sequence; keep the schema and the allocated memory for the next adds."""
        self._core.clear()

    def reset(self) -> None:
        """Drop every sequence, the schema and the memory."""
        self._core.reset()

    # -- keeping a subset in place --------------------------------------------------------

    def retain(self, keep: Any) -> int:
        """Keep the sequences whose flag in ``keep`` (bool ``(N,)``, numpy or torch) is True,
        in their order, and drop the rest. Every field is compacted where it lies: no second
        buffer, no copy out, the allocated memory kept for the next add. Advantages computed
        before are dropped and :attr:`version` moves on (a sampler planned on the old rows
        refuses to continue). Returns the number of sequences kept.

        Raises:
            DtypeError: ``keep`` is not a bool array.
            ShapeError: ``keep`` is not 1-D with one flag per sequence.
        """
        return int(self._core.retain(field_to_numpy(keep, "keep")))

    def truncate(self, n: int) -> None:
        """Keep the first ``n`` sequences (all of them when ``n`` is larger), in place, as
        :meth:`retain` does."""
        self._core.truncate(size_option(n, "n"))

    def filter_groups(self, min_std: float = 0.0) -> tuple[np.ndarray, _ops.GroupFilterStats]:
        """DAPO's dynamic-sampling filter, in place: drop the groups (``group_ids``) whose
        ``scores`` are all equal or whose population std is at most ``min_std``; groups of one
        sequence stay (the rule of :func:`rlhf_core.ops.informative_groups`). The kept
        sequences are compacted as by :meth:`retain`.

        Returns:
            bool ``(N,)`` keep flag of each former sequence, and the counts.

        Raises:
            FieldError: the buffer holds no ``scores`` or no ``group_ids``.
            InvalidOptionError: ``min_std`` negative or not finite.
        """
        keep, counts = self._core.filter_groups(real_option(min_std, "min_std"))
        return keep, _ops.GroupFilterStats(*counts)

    # -- reading --------------------------------------------------------------------------

    def offsets(self, which: str = "response") -> np.ndarray:
        """int64 ``(N + 1,)`` offsets of the ``"response"`` (per-token fields) or ``"prompt"``
        tokens (a copy)."""
        return self._core.offsets(str_option(which, "which"))

    def lengths(self, which: str = "total") -> np.ndarray:
        """int64 ``(N,)`` lengths: ``"prompt"``, ``"response"`` or ``"total"`` (both)."""
        if which == "total":
            return self._core.total_lengths()
        if which in ("prompt", "response"):
            return np.diff(self._core.offsets(which))
        raise InvalidOptionError(f"which must be 'prompt', 'response' or 'total', got {which!r}")

    def valid_tokens(self) -> np.ndarray:
        """bool ``(num_response_tokens,)``: the tokens the estimators train on — inside the
        ``loss_mask`` (when the buffer holds one) of a sequence whose score is not NaN. The one
        rule of this, shared with the Rust estimators and :meth:`stats`."""
        return self._core.valid_tokens()

    def valid_counts(self) -> np.ndarray:
        """int64 ``(N,)``: the number of :meth:`valid_tokens` of each sequence."""
        return self._core.valid_counts()

    def field(self, name: str) -> np.ndarray:
        """A copy of a stored field, flat: per-token fields have ``num_response_tokens``
        values (split with :meth:`offsets`), ``prompt_ids`` ``num_prompt_tokens``, per-sequence
        fields ``N``; ``"advantages"`` / ``"returns"`` once computed."""
        return self._core.field(str_option(name, "name"))

    def sequence(self, i: int) -> dict[str, Any]:
        """Every field of sequence ``i`` (copies): 1-D arrays for per-token fields, scalars for
        per-sequence fields. For inspection: each call copies whole fields; read many sequences
        with :meth:`field` and :meth:`offsets` instead."""
        i = int_option(i, "i")
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

        Options are checked as :mod:`rlhf_core.ops` checks its own (:mod:`rlhf_core._options`):
        an integer option takes an integer (``group_size=1.9`` and ``ddof=True`` are refused,
        not rounded), a real option a number (not a string), a string option a string; each
        refusal is an ``InvalidOptionError`` naming the option.

        Returns:
            ``mean``, ``std``, ``min``, ``max`` of the advantages over what is trained on (valid
            tokens, or sequences with a valid token), and for group estimators ``num_groups``,
            ``num_nan``, ``num_singleton``, ``num_zero_std``, ``frac_zero_std``.
        """
        if estimator not in ESTIMATORS:
            raise InvalidOptionError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        if isinstance(whiten, (bool, np.bool_)):
            whiten = "token" if whiten else "none"
        stats = self._core.compute_advantages(
            estimator,
            gamma=real_option(gamma, "gamma"),
            lam=real_option(lam, "lam"),
            masked=str_option(masked, "masked"),
            kl_coef=real_option(kl_coef, "kl_coef"),
            kl_estimator=str_option(kl_estimator, "kl_estimator"),
            kl_clamp=real_option(kl_clamp, "kl_clamp", optional=True),
            ddof=int_option(ddof, "ddof"),
            eps=real_option(eps, "eps"),
            singleton=str_option(singleton, "singleton"),
            scale=str_option(scale, "scale", optional=True),
            whiten=str_option(whiten, "whiten", optional=True),
            whiten_eps=real_option(whiten_eps, "whiten_eps"),
            group_size=int_option(group_size, "group_size", optional=True),
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
        self,
        advantages: Any,
        *,
        returns: Any = None,
        estimator: str = "custom",
        cast: bool = False,
    ) -> None:
        """Store advantages computed elsewhere: ``(N,)`` per sequence, or per token (flat
        ``(num_response_tokens,)`` in the buffer's order, or a list of per-sequence 1-D
        arrays); ``returns`` per token likewise. Cleared by the next add. ``cast``: as in
        :meth:`add` (float16 / bfloat16 to float32, other devices to the CPU)."""

        def arr(x: Any, name: str) -> np.ndarray:
            return field_to_numpy(x, name, cast=cast)

        if isinstance(advantages, (list, tuple)):
            advantages = np.concatenate([arr(a, "advantages") for a in advantages])
        a = np.ascontiguousarray(arr(advantages, "advantages"))
        if isinstance(returns, (list, tuple)):
            returns = np.concatenate([arr(r, "returns") for r in returns])
        r = None if returns is None else np.ascontiguousarray(arr(returns, "returns"))
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
            positive_option("batch_size", batch_size),
            bool_option(drop_last, "drop_last"),
            positive_option("epochs", epochs),
            seed_option(seed),
            bool_option(shuffle, "shuffle"),
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
            positive_option("token_budget", token_budget),
            bool_option(packed, "packed"),
            bool_option(bucket, "bucket"),
            positive_option("pad_to_multiple_of", pad_to_multiple_of),
            positive_option("epochs", epochs),
            seed_option(seed),
            bool_option(shuffle, "shuffle"),
        )
        return MinibatchSampler(self, s)

    def resume_sampler(self, state: Mapping[str, Any]) -> MinibatchSampler:
        """A sampler restored from :meth:`MinibatchSampler.state_dict` (configuration and
        position); the buffer must hold the same sequences as when the state was saved."""
        return MinibatchSampler(self, restore_core_sampler(self, state))

    def batch(self, indices: Any) -> Minibatch:
        """A :class:`Minibatch` of the given buffer indices (in that row order)."""
        idx = index_array(indices, "indices")
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
            return None if x is None else np.ascontiguousarray(to_numpy(x, key))

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
