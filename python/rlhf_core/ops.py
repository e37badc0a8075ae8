"""Advantage and statistics kernels: numpy arrays or torch CPU tensors in, the same kind out.

Every kernel runs in the Rust core (``rlhf_core._core``) with the GIL released, accumulates
statistics in float64, and accepts two layouts:

- **padded**: ``(B, T)`` right-padded arrays plus an optional ``mask`` of the same shape
  (bool, uint8, int8, int32, int64, float32 or float64; an entry is valid when it is ``True``,
  a nonzero integer, or a float ``> 0``). Without a mask every slot is valid.
- **ragged**: 1-D arrays holding all sequences back to back plus ``offsets`` (int64, ``N + 1``
  entries, ``offsets[0] == 0``, non-decreasing, ``offsets[-1] == len(values)``); sequence ``i``
  is ``values[offsets[i]:offsets[i + 1]]``. A 1-D mask of the same length is optional.

A 1-D array without ``offsets`` is one sequence. Float inputs must be float32 or float64 and
all float inputs of one call share a dtype; outputs have that dtype.

**Kind and copies.** The output kind follows the first array argument: a torch tensor in
gives a torch tensor out (``torch.from_numpy`` of the Rust-allocated result, no copy), a numpy
array gives numpy. Tensors must live on the CPU; tensors requiring grad are detached (outputs
carry no autograd history). Inputs are borrowed, not copied, except in two documented cases:
a non-contiguous input is first made contiguous (``np.ascontiguousarray`` /
``Tensor.contiguous``), and integer ``offsets`` / ``group_ids`` of another integer dtype are
cast to int64. Masked and padding slots of every per-token output are exactly 0, whatever the
inputs held there (NaN and inf included).

**Errors** are typed (:mod:`rlhf_core.errors`): ``ShapeError``, ``DtypeError``,
``OffsetsError``, ``InvalidOptionError``; each names the argument and what was expected.
Scalar options are checked by :mod:`rlhf_core._options` (the checks the buffer's options share:
no ``bool`` as an integer, no rounding, no string parsing, integers within int64); an output
too large to allocate is an ``AllocationError`` (a ``MemoryError``).

See ``docs/kernels.md`` for the exact semantics and which framework each default matches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rlhf_core import _core
from rlhf_core._arrays import is_tensor, tensor_to_numpy
from rlhf_core._options import bool_option as _bool_opt
from rlhf_core._options import int_option as _int_opt
from rlhf_core._options import real_option as _float_opt
from rlhf_core._options import size_option
from rlhf_core._options import str_option as _str_opt
from rlhf_core.errors import DtypeError

__all__ = [
    "gae",
    "discounted_returns",
    "group_advantages",
    "GroupStats",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "kl",
    "shaped_rewards",
    "broadcast_to_tokens",
    "reduce_tokens",
    "informative_groups",
    "GroupFilterStats",
    "quantile",
    "top_k_mask",
    "RunningMoments",
    "set_parallelism",
    "get_parallelism",
    "empty_cache",
]

ArrayLike = Any  # numpy.ndarray or torch.Tensor (kept loose so torch stays optional)

def set_parallelism(enabled: bool) -> None:
    """Let kernels use several threads (rayon; default on) or keep them on the calling thread.

    Results are bit-identical either way: work is split across sequences, groups or fixed
    blocks only, never in a way that depends on the thread count. The number of threads
    follows ``RAYON_NUM_THREADS`` (default: one per core). In a process created by
    ``os.fork`` kernels always run serially, since the parent's worker threads do not exist
    there.
    """
    _core.set_parallelism(bool(enabled))


def get_parallelism() -> bool:
    """Whether kernels may use several threads (see :func:`set_parallelism`)."""
    return _core.get_parallelism()


def empty_cache() -> int:
    """Free the cached output blocks; returns the number of bytes released.

    Outputs of 1 MiB and more live in blocks that go back to a small cache when their array
    is freed, so the next call of a similar size reuses memory that is already mapped
    (a fresh large allocation costs one page fault per 4 KiB, several times the kernel
    itself). The cache holds at most ``RLHF_CORE_OUTPUT_CACHE_MB`` MiB (environment variable
    read at first use; default 512, 0 disables caching).
    """
    return _core.empty_cache()


def _arr(x: Any, name: str) -> Any:
    """Borrow ``x`` as a C-contiguous numpy array (no copy unless non-contiguous) under the
    package's strict interop policy (:mod:`rlhf_core._arrays`)."""
    if type(x) is np.ndarray:
        return x if x.flags.c_contiguous else np.ascontiguousarray(x)
    if x is None:
        return None
    if is_tensor(x):
        return tensor_to_numpy(x, name)
    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(x)
    if isinstance(x, (list, tuple)):
        return np.ascontiguousarray(x)
    raise DtypeError(
        f"{name} must be a numpy array or a torch CPU tensor, got {type(x).__name__}"
    )


def _index(x: Any, name: str) -> Any:
    """Integer index arrays (offsets, group ids) as int64; other integer dtypes are cast."""
    a = _arr(x, name)
    if a is None or a.dtype == np.int64:
        return a
    if a.dtype.kind in "iu":
        return a.astype(np.int64)
    raise DtypeError(f"{name} has dtype {a.dtype}; expected an integer dtype (int64)")


def _out(a: np.ndarray, torch_out: bool) -> Any:
    if torch_out:
        import torch

        return torch.from_numpy(a)
    return a


# ---------------------------------------------------------------------------------------------
# GAE and returns
# ---------------------------------------------------------------------------------------------


def gae(
    rewards: ArrayLike,
    values: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    offsets: ArrayLike | None = None,
    gamma: float = 1.0,
    lam: float = 1.0,
    masked: str = "skip",
    bootstrap: ArrayLike | None = None,
) -> tuple[Any, Any]:
    """Generalised advantage estimation: ``(advantages, returns)``.

    Args:
        rewards: float32/float64 ``(B, T)`` padded, or ``(N_tok,)`` ragged with ``offsets``.
            Per-token rewards (e.g. the score on the last token plus KL penalties).
        values: same shape and dtype as ``rewards``: the value model's ``V_t``.
        mask: optional, same shape as ``rewards``; which tokens are actions.
        offsets: int64 ``(N + 1,)`` for the ragged layout.
        gamma: discount in [0, 1].
        lam: GAE λ in [0, 1].
        masked: what masked tokens *inside* a sequence mean. ``"skip"`` (default, verl):
            ``V_next`` and ``A_next`` carry across them unchanged (multi-turn observation
            tokens). ``"zero"`` (OpenRLHF): zero-reward, zero-value steps.
        bootstrap: optional ``(B,)`` (one per sequence, same dtype): the value after the last
            valid token, for truncated sequences (0 for terminated ones). Default 0.

    Per sequence, in reverse from its last valid token: ``δ_t = r_t + γ·V_next − V_t``,
    ``A_t = δ_t + γλ·A_next``; ``returns = A + V``. Computed in float64.

    Returns:
        ``(advantages, returns)``, each the shape, dtype and kind of ``rewards``; masked and
        padding slots are 0. Not whitened: see :func:`masked_whiten`.
    """
    r = _arr(rewards, "rewards")
    adv, ret = _core.gae(
        r,
        _arr(values, "values"),
        _arr(mask, "mask"),
        _index(offsets, "offsets"),
        _arr(bootstrap, "bootstrap"),
        _float_opt(gamma, "gamma"),
        _float_opt(lam, "lam"),
        _str_opt(masked, "masked"),
    )
    t = is_tensor(rewards)
    return _out(adv, t), _out(ret, t)


def discounted_returns(
    rewards: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    offsets: ArrayLike | None = None,
    gamma: float = 1.0,
    masked: str = "skip",
) -> Any:
    """Discounted reward-to-go ``G_t = r_t + γ·G_{t+1}`` per sequence (REINFORCE++, ReMax).

    Args:
        rewards: float32/float64 ``(B, T)`` padded, or ``(N_tok,)`` ragged with ``offsets``.
        mask: optional, same shape as ``rewards``.
        offsets: int64 ``(N + 1,)`` for the ragged layout.
        gamma: discount in [0, 1].
        masked: ``"skip"`` (default): masked tokens inside a sequence are passed over without
            discounting; ``"zero"``: they are zero-reward steps (discounted by γ).

    The return resets at every sequence end. Returns an array of the shape, dtype and kind of
    ``rewards`` with masked and padding slots 0.
    """
    r = _arr(rewards, "rewards")
    out = _core.discounted_returns(
        r,
        _arr(mask, "mask"),
        _index(offsets, "offsets"),
        _float_opt(gamma, "gamma"),
        _str_opt(masked, "masked"),
    )
    return _out(out, is_tensor(rewards))


# ---------------------------------------------------------------------------------------------
# Group advantages
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupStats:
    """Counts from one :func:`group_advantages` call.

    Attributes:
        num_groups: distinct groups.
        num_nan: NaN (unscorable) scores; their advantage is 0.
        num_singleton: groups with exactly one scorable member (handled per ``singleton``).
        num_zero_std: groups with at least two scorable members, all equal (advantage 0).
    """

    num_groups: int
    num_nan: int
    num_singleton: int
    num_zero_std: int

    @property
    def frac_zero_std(self) -> float:
        """``num_zero_std / num_groups`` (0 for an empty batch); TRL logs it as
        ``frac_reward_zero_std``."""
        return self.num_zero_std / self.num_groups if self.num_groups else 0.0


def group_advantages(
    scores: ArrayLike,
    *,
    group_ids: ArrayLike | None = None,
    group_size: int | None = None,
    baseline: str = "mean",
    scale: str = "group",
    ddof: int = 1,
    eps: float = 1e-6,
    singleton: str = "zero",
    return_stats: bool = False,
) -> Any:
    """Group-relative advantages, one per sequence (GRPO, Dr.GRPO, RLOO).

    Args:
        scores: float32/float64 ``(B,)``, one score per sequence; NaN marks an unscorable
            sample (left out of its group's statistics, advantage 0). ±inf is an error.
        group_ids: integer ``(B,)``: the group (prompt) of each sequence, any order, any
            group sizes. Give this or ``group_size``.
        group_size: contiguous groups of this size (``B`` must be a multiple).
        baseline: ``"mean"`` (GRPO): ``r − mean_g``; ``"leave_one_out"`` (RLOO):
            ``r − mean of the other members``.
        scale: ``"group"`` (GRPO): divide by the group std + ``eps``; ``"batch"``: by the
            std of all scorable scores of the batch + ``eps``; ``"none"`` (Dr.GRPO, RLOO).
        ddof: 1 (unbiased std, every anchor's choice) or 0.
        eps: added to the std (verl 1e-6, TRL 1e-4, OpenRLHF 1e-9).
        singleton: what a group with one scorable member gets: ``"zero"`` or ``"raw"`` (its
            score, as verl's loop implementation).
        return_stats: also return a :class:`GroupStats`.

    A group whose scorable scores are all bit-identical gets exactly 0. Statistics are
    two-pass in float64.

    Returns:
        advantages ``(B,)`` (dtype and kind of ``scores``), or ``(advantages, GroupStats)``.
    """
    adv, counts = _core.group_advantages(
        _arr(scores, "scores"),
        _index(group_ids, "group_ids"),
        _int_opt(group_size, "group_size", optional=True),
        _str_opt(baseline, "baseline"),
        _str_opt(scale, "scale"),
        _int_opt(ddof, "ddof"),
        _float_opt(eps, "eps"),
        _str_opt(singleton, "singleton"),
    )
    out = _out(adv, is_tensor(scores))
    if return_stats:
        return out, GroupStats(*counts)
    return out


# ---------------------------------------------------------------------------------------------
# Masked statistics
# ---------------------------------------------------------------------------------------------


def _stat_out(a: np.ndarray, torch_out: bool) -> Any:
    """A 0-d result becomes a numpy scalar (numpy in) or a 0-d tensor (torch in)."""
    if torch_out:
        return _out(a, True)
    return a[()] if a.ndim == 0 else a


def masked_mean(
    x: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    offsets: ArrayLike | None = None,
    axis: int | None = None,
) -> Any:
    """Mean of the valid entries of ``x`` (float64 accumulation).

    Args:
        x: float32/float64 ``(B, T)`` padded, or ``(N_tok,)`` ragged with ``offsets``.
        mask: optional, same shape as ``x``.
        offsets: int64 ``(N + 1,)`` for the ragged layout.
        axis: ``None``: over the whole batch (a scalar: numpy scalar, or 0-d tensor);
            ``-1`` / ``1``: per sequence, shape ``(B,)`` / ``(N,)`` (``(1,)`` for one 1-D
            sequence).

    A selection without valid entries has mean 0 (never NaN). Dtype and kind of ``x``.
    """
    out = _core.masked_mean(
        _arr(x, "x"),
        _arr(mask, "mask"),
        _index(offsets, "offsets"),
        _int_opt(axis, "axis", optional=True),
    )
    return _stat_out(out, is_tensor(x))


def masked_var(
    x: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    offsets: ArrayLike | None = None,
    axis: int | None = None,
    ddof: int = 1,
) -> Any:
    """Variance of the valid entries of ``x`` with ``ddof`` (1: unbiased, default; or 0).

    Two-pass in float64. Layouts and ``axis`` as :func:`masked_mean`; ``n <= ddof`` valid
    entries give 0.
    """
    out = _core.masked_var(
        _arr(x, "x"),
        _arr(mask, "mask"),
        _index(offsets, "offsets"),
        _int_opt(axis, "axis", optional=True),
        _int_opt(ddof, "ddof"),
    )
    return _stat_out(out, is_tensor(x))


def masked_whiten(
    x: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    offsets: ArrayLike | None = None,
    shift_mean: bool = True,
    ddof: int = 1,
    eps: float = 1e-8,
    axis: int | None = None,
) -> Any:
    """Whiten the valid entries: ``(x − μ) / sqrt(σ² + eps)``, plus ``μ`` back when
    ``shift_mean=False``.

    ``μ`` and ``σ²`` (``ddof``) are taken over the whole batch (``axis=None``, verl's and
    OpenRLHF's advantage whitening) or per sequence (``axis=-1``). Defaults match verl's
    ``masked_whiten`` (unbiased variance, ``eps=1e-8`` inside the square root). Returns the
    shape, dtype and kind of ``x``; masked and padding slots are 0.
    """
    out = _core.masked_whiten(
        _arr(x, "x"),
        _arr(mask, "mask"),
        _index(offsets, "offsets"),
        _int_opt(axis, "axis", optional=True),
        _bool_opt(shift_mean, "shift_mean"),
        _int_opt(ddof, "ddof"),
        _float_opt(eps, "eps"),
    )
    return _out(out, is_tensor(x))


# ---------------------------------------------------------------------------------------------
# KL
# ---------------------------------------------------------------------------------------------


def kl(
    logp: ArrayLike,
    ref_logp: ArrayLike,
    *,
    estimator: str = "k3",
    clamp: float | None = 10.0,
) -> Any:
    """Per-token KL estimate between policy and reference log-probabilities.

    With ``Δ = logp − ref_logp``: ``"k1"`` = Δ, ``"k2"`` = ½Δ², ``"k3"`` = exp(−Δ) + Δ − 1
    (default; low variance, ≥ 0), ``"abs"`` = |Δ|. verl's names ``"kl"``, ``"mse"``,
    ``"low_var_kl"`` are accepted too.

    Args:
        logp, ref_logp: float32/float64, any equal shapes and dtypes.
        estimator: see above.
        clamp: clamp the estimate to ``[−clamp, clamp]`` (default 10, as OpenRLHF for every
            estimator and verl for k3); ``None`` for the raw formula (verl's k1/k2/abs).

    Computed elementwise in the input precision (relative error below 1e-5 for float32);
    NaN propagates. Returns the shape, dtype and kind of ``logp``.
    """
    out = _core.kl(
        _arr(logp, "logp"),
        _arr(ref_logp, "ref_logp"),
        _str_opt(estimator, "estimator"),
        _float_opt(clamp, "clamp", optional=True),
    )
    return _out(out, is_tensor(logp))


def shaped_rewards(
    scores: ArrayLike,
    logp: ArrayLike,
    ref_logp: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    offsets: ArrayLike | None = None,
    beta: float,
    estimator: str = "k1",
    clamp: float | None = 10.0,
) -> Any:
    """KL-penalised per-token rewards: ``−beta·KL_t`` on every valid token plus the
    sequence's score on its last valid token (KL in the reward, as PPO in verl, OpenRLHF,
    TRL).

    Args:
        scores: ``(B,)`` / ``(N,)`` one score per sequence, dtype of ``logp``.
        logp, ref_logp: float32/float64 ``(B, T)`` padded or ``(N_tok,)`` ragged.
        mask: optional, same shape as ``logp``.
        offsets: int64 ``(N + 1,)`` for the ragged layout.
        beta: KL coefficient.
        estimator, clamp: as :func:`kl` (default k1, clamped to ±10 as OpenRLHF; pass
            ``clamp=None`` for verl's unclamped k1).

    Returns the shape, dtype and kind of ``logp``; masked and padding slots are 0, and a
    sequence without valid tokens is all 0.
    """
    out = _core.shaped_rewards(
        _arr(scores, "scores"),
        _arr(logp, "logp"),
        _arr(ref_logp, "ref_logp"),
        _arr(mask, "mask"),
        _index(offsets, "offsets"),
        _float_opt(beta, "beta"),
        _str_opt(estimator, "estimator"),
        _float_opt(clamp, "clamp", optional=True),
    )
    return _out(out, is_tensor(logp))


# ---------------------------------------------------------------------------------------------
# Broadcast / reduce
# ---------------------------------------------------------------------------------------------


def broadcast_to_tokens(
    seq_values: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    offsets: ArrayLike | None = None,
) -> Any:
    """Write each sequence's value on its valid tokens (0 on masked and padding slots).

    Args:
        seq_values: float32/float64 ``(B,)`` / ``(N,)``.
        mask: ``(B, T)`` for the padded layout (its shape sets the output's), or an optional
            ``(N_tok,)`` mask with ``offsets``.
        offsets: int64 ``(N + 1,)`` for the ragged layout (output ``(offsets[-1],)``).

    One of ``mask`` / ``offsets`` is required. Dtype and kind of ``seq_values``.
    """
    out = _core.broadcast_to_tokens(
        _arr(seq_values, "seq_values"), _arr(mask, "mask"), _index(offsets, "offsets")
    )
    return _out(out, is_tensor(seq_values))


def reduce_tokens(
    x: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    offsets: ArrayLike | None = None,
    how: str = "sum",
) -> Any:
    """Per-sequence ``"sum"`` or ``"mean"`` of the valid tokens of ``x`` (float64
    accumulation; the mean of a sequence without valid tokens is 0).

    ``x``: float32/float64 ``(B, T)`` padded or ``(N_tok,)`` ragged with ``offsets``.
    Returns ``(B,)`` / ``(N,)`` with the dtype and kind of ``x``.
    """
    out = _core.reduce_tokens(
        _arr(x, "x"), _arr(mask, "mask"), _index(offsets, "offsets"), _str_opt(how, "how")
    )
    return _out(out, is_tensor(x))


# ---------------------------------------------------------------------------------------------
# Selections (dynamic sampling, entropy-aware updates)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupFilterStats:
    """Counts of one :func:`informative_groups` call."""

    num_groups: int
    kept_groups: int
    kept_rows: int

    @property
    def dropped_groups(self) -> int:
        return self.num_groups - self.kept_groups


def _f64_vector(x: Any, name: str) -> np.ndarray:
    a = _arr(x, name)
    if a.dtype.kind != "f":
        raise DtypeError(f"{name} has dtype {a.dtype}; expected float32 or float64")
    return a.astype(np.float64, copy=False)


def informative_groups(
    scores: ArrayLike, group_ids: ArrayLike, *, min_std: float = 0.0
) -> tuple[np.ndarray, GroupFilterStats]:
    """Which rows belong to a group worth training on (DAPO's dynamic-sampling filter).

    A group (rows with equal ``group_ids``, any order, any sizes) is kept when it has one row
    (verl keeps those), or when it has at least two finite scores that are not all equal and
    whose population standard deviation (float64, two passes) is above ``min_std``. NaN scores
    (unscorable rows) are left out of the statistics. "All equal" is exact, so a group of
    equal scores is dropped even where rounding would give it a std a hair above 0.

    Args:
        scores: float32/float64 ``(N,)``.
        group_ids: integer ``(N,)``.
        min_std: finite threshold ``>= 0``.

    Returns:
        bool ``(N,)`` numpy keep flags and the :class:`GroupFilterStats`.
    """
    keep, counts = _core.informative_groups(
        _f64_vector(scores, "scores"),
        _index(group_ids, "group_ids"),
        _float_opt(min_std, "min_std"),
    )
    return keep, GroupFilterStats(*counts)


def quantile(values: ArrayLike, q: float) -> float:
    """The ``q`` quantile (``0 <= q <= 1``) of finite ``values`` (any shape, flattened) with
    linear interpolation, numpy's and torch's default (``np.quantile(values, q)``)."""
    v = _f64_vector(values, "values").reshape(-1)
    return float(_core.quantile(np.ascontiguousarray(v), _float_opt(q, "q")))


def top_k_mask(values: ArrayLike, k: int) -> np.ndarray:
    """bool ``(N,)``: the ``k`` largest of the finite 1-D ``values`` (ties: the earlier index,
    as ``np.argsort(-values, kind="stable")[:k]``)."""
    return _core.top_k_mask(_f64_vector(values, "values"), size_option(k, "k"))


# ---------------------------------------------------------------------------------------------
# Running moments
# ---------------------------------------------------------------------------------------------


class RunningMoments:
    """Mergeable running mean and variance (reward normalisation across steps and ranks).

    ``update(x, mask=None)`` folds in the valid entries of ``x`` (numpy or torch, float32 or
    float64, any shape) with a two-pass float64 batch reduction and Chan et al.'s pairwise
    update; ``merge(other)`` folds in another accumulator (e.g. gathered from another rank).
    ``mean``, ``var`` (with the ``ddof`` given at construction, default 1), ``std`` and
    ``count`` are Python numbers (0 before any data; var 0 while ``count <= ddof``).
    ``state_dict()`` / ``load_state_dict()`` round-trip through plain Python numbers, and
    instances pickle.
    """

    __slots__ = ("_inner",)

    def __init__(self, ddof: int = 1) -> None:
        self._inner = _core.RunningMoments(_int_opt(ddof, "ddof"))

    def update(self, x: ArrayLike, mask: ArrayLike | None = None) -> RunningMoments:
        """Fold in the valid entries of ``x``; returns ``self``."""
        self._inner.update(_arr(x, "x"), _arr(mask, "mask"))
        return self

    def merge(self, other: RunningMoments) -> RunningMoments:
        """Fold in ``other``'s data; returns ``self``."""
        self._inner.merge(other._inner)
        return self

    @property
    def count(self) -> int:
        return self._inner.count

    @property
    def mean(self) -> float:
        return self._inner.mean

    @property
    def var(self) -> float:
        return self._inner.var

    @property
    def std(self) -> float:
        return self._inner.std

    @property
    def ddof(self) -> int:
        return self._inner.ddof

    def state_dict(self) -> dict[str, Any]:
        """``{"count": int, "mean": float, "m2": float, "ddof": int}``."""
        return self._inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; ``StateError`` on a malformed state."""
        self._inner.load_state_dict(state)

    def __getstate__(self) -> dict[str, Any]:
        return self.state_dict()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._inner = _core.RunningMoments(int(state.get("ddof", 1)))
        self._inner.load_state_dict(state)

    def __repr__(self) -> str:
        return repr(self._inner)
