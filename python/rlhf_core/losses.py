"""Losses as pure PyTorch functions that return named parts and diagnostics.

Every function takes tensors and scalars and returns a :class:`LossOutput`: a differentiable
scalar ``loss`` and a dict of detached scalar ``metrics``. No function holds state, reads a
config or talks to a model; the trainers in :mod:`rlhf_core.trainers` wire them up.

Layout
------
Per-token inputs are padded ``(B, T)`` tensors with a ``mask`` of the same shape (bool or
0/1 float; True = a response token that counts). Values at masked positions are ignored,
even when they are NaN or infinite: they are replaced by zeros before any arithmetic, so
neither the loss nor its gradient can see them. Per-sequence inputs (advantages of outcome
estimators such as GRPO) may be ``(B,)`` and are broadcast over the tokens of their row.

Computation runs in float32, or float64 when the inputs are float64 (half-precision inputs,
as produced under CUDA bf16 autocast, are upcast to float32 first).

Global normalisers (micro-batch and rank invariance)
----------------------------------------------------
The aggregation modes divide by token or sequence counts. When a minibatch is split into
micro-batches (gradient accumulation) or across data-parallel ranks, pass the counts of the
**whole** minibatch as ``num_tokens`` / ``num_seqs`` (see :func:`count_tokens_and_seqs`) to
every micro-batch call: then the sum of the micro-batch losses, and of their gradients, equals
the loss and gradient of the whole minibatch in one call, for every mode. Without them, the
counts of the tensors passed in are used (the single-call case).

Diagnostics follow the same rule: token averages (clip fraction, approximate KL, ratio mean,
entropy, ...) are divided by ``num_tokens``, so with global counts they are this micro-batch's
share and **add up** across micro-batches. Keys ending in ``_min`` / ``_max`` are local
extremes and combine by min / max; :func:`merge_metrics` does both.

Sources of the formulas (read from each project's code, see DESIGN.md and the research notes):
clipped surrogate with asymmetric ε and dual clip (PPO, Schulman et al. 2017; DAPO
clip-higher; dual clip as in verl ``compute_policy_loss_vanilla`` and OpenRLHF
``--actor.dual_clip``); aggregation modes as verl ``agg_loss``; KL estimators k1/k2/k3/abs
(Schulman's "Approximating KL divergence" note, as verl ``kl_penalty``); Bradley–Terry with
margin and reward centring (TRL ``RewardTrainer``); DPO sigmoid with conservative label
smoothing (Rafailov et al. 2023; Mitchell's cDPO note) and IPO (Azar et al. 2023).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from rlhf_core.parallel.collectives import METRIC_REDUCTIONS, metric_reduction

__all__ = [
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "DPO_LOSS_TYPES",
    "LossOutput",
    "aggregate",
    "count_tokens_and_seqs",
    "METRIC_REDUCTIONS",
    "metric_reduction",
    "merge_metrics",
    "kl_estimate",
    "ppo_policy_loss",
    "value_loss",
    "entropy_bonus",
    "kl_penalty",
    "sft_loss",
    "bradley_terry_loss",
    "dpo_loss",
    "sequence_logprobs",
    "explained_variance",
]

Aggregation = Literal[
    "token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"
]
AGGREGATIONS: tuple[str, ...] = (
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
)
"""Loss aggregation modes (verl's ``agg_loss`` names), with ℓ the (B, T) per-token loss, m the
mask, N_tok / N_seq the global token / sequence counts and L the constant normaliser:

- ``token-mean``: Σ ℓ·m / N_tok (DAPO; TRL ``loss_type="dapo"``; verl default).
- ``seq-mean-token-mean``: Σ_i (Σ_t ℓ·m / |y_i|) / N_seq (the GRPO paper; TRL ``"grpo"``).
- ``seq-mean-token-sum``: Σ_i Σ_t ℓ·m / N_seq.
- ``seq-mean-token-sum-norm``: Σ ℓ·m / (N_seq · L) with L = the maximum response length from
  the config, a constant (Dr.GRPO; TRL ``"dr_grpo"``).
"""

KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3", "abs")
DPO_LOSS_TYPES: tuple[str, ...] = ("sigmoid", "ipo")

Number = int | float


@dataclass
class LossOutput:
    """What every loss returns.

    Attributes:
        loss: differentiable scalar tensor (0-d) to call ``backward()`` on.
        metrics: detached 0-d tensors named for logging. Token/sequence averages share the
            loss's normaliser (additive across micro-batches when global counts are passed);
            keys ending in ``_min`` / ``_max`` combine by min / max.
    """

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)

    def __add__(self, other: LossOutput) -> LossOutput:
        """Sum two losses (e.g. policy + KL + entropy); metric names must not collide."""
        clash = set(self.metrics) & set(other.metrics)
        if clash:
            raise ValueError(f"cannot add LossOutputs: both define metrics {sorted(clash)}")
        return LossOutput(self.loss + other.loss, {**self.metrics, **other.metrics})


# ----------------------------------------------------------------------------------------------
# helpers


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _as_float(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x if x.dtype == dtype else x.to(dtype)


def _bool_mask(mask: torch.Tensor | None, like: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """Return a bool mask with the shape of ``like`` (all True when ``mask`` is None)."""
    if mask is None:
        return torch.ones_like(like, dtype=torch.bool)
    if mask.shape != like.shape:
        raise ValueError(
            f"{name} has shape {tuple(mask.shape)}, expected {tuple(like.shape)} "
            "(the shape of the per-token values)"
        )
    return mask if mask.dtype == torch.bool else mask != 0


def _check_same_shape(ref_name: str, ref: torch.Tensor, **others: torch.Tensor) -> None:
    for name, t in others.items():
        if t.shape != ref.shape:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)}, expected {tuple(ref.shape)} "
                f"(the shape of {ref_name})"
            )


def _check_2d(name: str, t: torch.Tensor) -> None:
    if t.dim() != 2:
        raise ValueError(f"{name} must be a padded (B, T) tensor, got shape {tuple(t.shape)}")


def _zero_masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x with masked-out positions replaced by 0 (NaN/inf there cannot leak, not even into
    gradients, because the masked inputs never enter any arithmetic)."""
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _denominator(
    given: Number | torch.Tensor | None, local: torch.Tensor, name: str
) -> torch.Tensor:
    if given is None:
        return local.clamp(min=1)
    if isinstance(given, torch.Tensor):
        value = given.to(dtype=local.dtype, device=local.device)
        ok = value.numel() == 1 and bool(value > 0)  # a device tensor costs a sync here
    else:
        # a Python count (what the trainers pass) is checked on the host, before the copy
        ok = float(given) > 0
        value = torch.tensor(float(given)).to(dtype=local.dtype, device=local.device)
    if not ok:
        raise ValueError(
            f"{name}={given!r}: expected a positive count (the global number over the whole "
            "minibatch, from count_tokens_and_seqs)"
        )
    return value.reshape(())


def count_tokens_and_seqs(masks: torch.Tensor | Iterable[torch.Tensor]) -> tuple[int, int]:
    """Global normalisers for :func:`aggregate` over one or several (micro-batch) masks.

    Args:
        masks: a (B, T) mask or an iterable of them (the micro-batches of one minibatch, or
            the masks of all ranks after an all-gather of the counts).

    Returns:
        ``(num_tokens, num_seqs)``: valid tokens, and sequences with at least one valid token
        (sequences without any contribute nothing in any mode, as in verl's ``agg_loss``).
    """
    if isinstance(masks, torch.Tensor):
        masks = [masks]
    tokens = 0
    seqs = 0
    for m in masks:
        _check_2d("mask", m)
        mb = m if m.dtype == torch.bool else m != 0
        per_seq = mb.sum(dim=-1)
        tokens += int(per_seq.sum())
        seqs += int((per_seq > 0).sum())
    return tokens, seqs


def merge_metrics(
    total: dict[str, torch.Tensor], new: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Accumulate micro-batch metrics (0-d tensors) in place, each by its
    :func:`rlhf_core.parallel.metric_reduction` (the one table of the rule, shared with the
    cross-rank reduction): sum, or min / max for ``*_min`` / ``*_max``."""
    for key, value in new.items():
        value = value.detach()
        how = metric_reduction(key)
        if key not in total:
            total[key] = value.clone()
        elif how == "min":
            total[key] = torch.minimum(total[key], value)
        elif how == "max":
            total[key] = torch.maximum(total[key], value)
        else:
            total[key] = total[key] + value
    return total


def _token_mean(x: torch.Tensor, mask: torch.Tensor, num_tokens: torch.Tensor) -> torch.Tensor:
    return _zero_masked(x, mask).sum() / num_tokens


# ----------------------------------------------------------------------------------------------
# aggregation


def aggregate(
    values: torch.Tensor,
    mask: torch.Tensor | None = None,
    mode: str = "token-mean",
    *,
    num_tokens: Number | torch.Tensor | None = None,
    num_seqs: Number | torch.Tensor | None = None,
    max_len: Number | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss matrix to a scalar with one of :data:`AGGREGATIONS`.

    Args:
        values: float (B, T) per-token values ℓ, right- or left-padded.
        mask: (B, T) bool or 0/1; None = every position counts.
        mode: one of :data:`AGGREGATIONS`.
        num_tokens: global count of valid tokens (``token-mean``); default: ``mask.sum()``.
        num_seqs: global count of sequences with at least one valid token (the ``seq-mean-*``
            modes); default: the same count in this call.
        max_len: the constant L of ``seq-mean-token-sum-norm`` (maximum response length from
            the config, not the padded width of this batch). Required for that mode.

    Returns:
        0-d tensor of ``values``' float dtype (float32 for half inputs).

    Sequences with no valid token contribute 0 in every mode.
    """
    _check_2d("values", values)
    if mode not in AGGREGATIONS:
        raise ValueError(f"aggregation mode {mode!r} is unknown; expected one of {AGGREGATIONS}")
    dtype = _compute_dtype(values)
    x = _as_float(values, dtype)
    m = _bool_mask(mask, x)
    xm = _zero_masked(x, m)
    if mode == "token-mean":
        return xm.sum() / _denominator(num_tokens, m.sum().to(dtype), "num_tokens")
    seq_len = m.sum(dim=-1)  # (B,)
    n_seq = _denominator(num_seqs, (seq_len > 0).sum().to(dtype), "num_seqs")
    seq_sum = xm.sum(dim=-1)  # (B,)
    if mode == "seq-mean-token-mean":
        return (seq_sum / seq_len.clamp(min=1).to(dtype)).sum() / n_seq
    if mode == "seq-mean-token-sum":
        return seq_sum.sum() / n_seq
    if max_len is None or not max_len > 0:
        raise ValueError(
            f"max_len={max_len!r}: seq-mean-token-sum-norm needs the constant normaliser L > 0 "
            "(set it to the maximum response length of the config)"
        )
    return seq_sum.sum() / (n_seq * float(max_len))


# ----------------------------------------------------------------------------------------------
# KL


def kl_estimate(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    *,
    estimator: str = "k3",
    clamp: float | None = 10.0,
) -> torch.Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from samples of π (differentiable torch version of
    :func:`rlhf_core.ops.kl`, same definitions).

    With Δ = logprobs − ref_logprobs:

    - ``k1`` = Δ
    - ``k2`` = ½ Δ²
    - ``k3`` = exp(−Δ) + Δ − 1 (always ≥ 0; the "low-variance" estimator; TRL GRPO's
      exp(ref − logπ) − (ref − logπ) − 1 is the same)
    - ``abs`` = |Δ|

    Args:
        logprobs, ref_logprobs: float tensors of the same shape (any shape).
        estimator: one of :data:`KL_ESTIMATORS`.
        clamp: if given, every estimate is clamped to [−clamp, clamp] (OpenRLHF clamps all
            estimators to ±10, verl k3 to ±10), and for k3 Δ is first clamped to
            ±(clamp + 1) so the exponential cannot overflow (this never changes a value the
            output clamp keeps). None = the raw formula. Same rule as ``ops.kl``.

    Returns:
        a tensor of the input shape.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"KL estimator {estimator!r} is unknown; expected one of {KL_ESTIMATORS}")
    _check_same_shape("logprobs", logprobs, ref_logprobs=ref_logprobs)
    dtype = _compute_dtype(logprobs, ref_logprobs)
    delta = _as_float(logprobs, dtype) - _as_float(ref_logprobs, dtype)
    if estimator == "k1":
        out = delta
    elif estimator == "k2":
        out = 0.5 * delta.square()
    elif estimator == "abs":
        out = delta.abs()
    else:
        if clamp is not None:
            delta = delta.clamp(-(clamp + 1.0), clamp + 1.0)
        out = torch.exp(-delta) + delta - 1.0
    if clamp is not None:
        out = out.clamp(-clamp, clamp)
    return out


# ----------------------------------------------------------------------------------------------
# policy, value, entropy, KL-in-loss, SFT


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    dual_clip: float | None = None,
    log_ratio_clamp: float | None = 20.0,
    aggregation: str = "token-mean",
    num_tokens: Number | torch.Tensor | None = None,
    num_seqs: Number | torch.Tensor | None = None,
    max_len: Number | None = None,
) -> LossOutput:
    """PPO clipped surrogate with asymmetric clip range and optional dual clip.

    Per token, with ρ = exp(logπ − logπ_old) and advantage A::

        ℓ = max(−A·ρ, −A·clip(ρ, 1 − ε_low, 1 + ε_high))
        ℓ = min(ℓ, −c·A)   where A < 0, if dual_clip c is set (c > 1)

    then aggregated with ``aggregation`` (see :func:`aggregate`).

    Args:
        logprobs: float (B, T) log π(a_t) of the current policy (with grad).
        old_logprobs: float (B, T) log π_old(a_t) of the policy that sampled (no grad).
        advantages: float (B, T) per-token, or (B,) per-sequence (broadcast over tokens).
        mask: (B, T) response mask.
        clip_low: ε_low ≥ 0.
        clip_high: ε_high ≥ 0 (DAPO clip-higher, e.g. 0.28); None = ``clip_low``.
        dual_clip: c > 1 bounding the loss of negative-advantage tokens (verl uses 3.0);
            None = off.
        log_ratio_clamp: clamp logπ − logπ_old to ±this before the exponential (the anchors
            use 20); None = off.
        aggregation, num_tokens, num_seqs, max_len: see :func:`aggregate`.

    Returns:
        :class:`LossOutput` with metrics ``policy_loss``, ``clip_frac`` (tokens whose clipped
        branch is active), ``clip_frac_low`` / ``clip_frac_high`` (by side),
        ``dual_clip_frac``, ``approx_kl`` (k3 estimate of KL(π_old ‖ π): (ρ − 1) − log ρ),
        ``ratio_mean``, ``advantage_mean`` (token means), ``ratio_min`` / ``ratio_max``
        (extremes over valid tokens; +inf / -inf when no token is valid). Every metric is a
        0-d tensor computed without a device-to-host sync.
    """
    _check_2d("logprobs", logprobs)
    _check_same_shape("logprobs", logprobs, old_logprobs=old_logprobs)
    if clip_high is None:
        clip_high = clip_low
    if clip_low < 0 or clip_high < 0:
        raise ValueError(
            f"clip_low={clip_low}, clip_high={clip_high}: clip ranges must be >= 0 (e.g. 0.2)"
        )
    if dual_clip is not None and not dual_clip > 1.0:
        raise ValueError(f"dual_clip={dual_clip}: expected c > 1 (e.g. 3.0) or None to disable")
    dtype = _compute_dtype(logprobs, old_logprobs, advantages)
    m = _bool_mask(mask, logprobs)
    if advantages.dim() == 1:
        if advantages.shape[0] != logprobs.shape[0]:
            raise ValueError(
                f"advantages has shape {tuple(advantages.shape)}, expected ({logprobs.shape[0]},)"
                f" per sequence or {tuple(logprobs.shape)} per token"
            )
        adv = _as_float(advantages, dtype)[:, None].expand_as(logprobs)
    else:
        _check_same_shape("logprobs", logprobs, advantages=advantages)
        adv = _as_float(advantages, dtype)
    adv = _zero_masked(adv, m)
    log_ratio = _zero_masked(_as_float(logprobs, dtype) - _as_float(old_logprobs, dtype), m)
    if log_ratio_clamp is not None:
        log_ratio = log_ratio.clamp(-log_ratio_clamp, log_ratio_clamp)
    ratio = torch.exp(log_ratio)  # (B, T)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    dual_active = torch.zeros_like(m)
    if dual_clip is not None:
        bound = -adv * dual_clip
        dual_active = (adv < 0) & (bound < per_token)
        per_token = torch.where(dual_active, bound, per_token)
    loss = aggregate(
        per_token, m, aggregation, num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len
    )

    with torch.no_grad():
        n_tok = _denominator(num_tokens, m.sum().to(dtype), "num_tokens")
        clip_active = (clipped > unclipped) & m
        low = clip_active & (ratio < 1.0)
        metrics = {
            "policy_loss": loss.detach(),
            "clip_frac": clip_active.sum().to(dtype) / n_tok,
            "clip_frac_low": low.sum().to(dtype) / n_tok,
            "clip_frac_high": (clip_active & ~low).sum().to(dtype) / n_tok,
            "dual_clip_frac": (dual_active & m).sum().to(dtype) / n_tok,
            "approx_kl": _token_mean((ratio - 1.0) - log_ratio, m, n_tok),
            "ratio_mean": _token_mean(ratio, m, n_tok),
            "advantage_mean": _token_mean(adv, m, n_tok),
            # extremes over valid tokens without a host sync (no boolean indexing, no
            # ``m.any()``): +inf / -inf when no token is valid, the identities of the
            # min / max merge of :func:`merge_metrics` and of the all-reduce over ranks
            "ratio_min": ratio.masked_fill(~m, float("inf")).amin(),
            "ratio_max": ratio.masked_fill(~m, float("-inf")).amax(),
        }
    return LossOutput(loss, metrics)


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    clip_range: float | None = 0.2,
    aggregation: str = "token-mean",
    num_tokens: Number | torch.Tensor | None = None,
    num_seqs: Number | torch.Tensor | None = None,
    max_len: Number | None = None,
) -> LossOutput:
    """Clipped value loss: ℓ = ½·max((V − R)², (V_clip − R)²) with
    V_clip = V_old + clip(V − V_old, −c, c); ℓ = ½ (V − R)² when ``clip_range`` is None.

    ``value_clip_frac`` counts the tokens where the clip moved the value (|V − V_old| > c) and
    the clipped term is the larger one, verl's ``vf_clipfrac`` (clipped loss strictly greater)
    computed without rounding: where the clip does not bind, V_old + (V − V_old) need not be
    exactly V in floating point, and comparing the two squared errors alone would count that
    rounding as clipping.

    Args:
        values: float (B, T) predictions of the value model being trained (with grad).
        old_values: float (B, T) predictions at rollout time (no grad).
        returns: float (B, T) targets R (GAE returns).
        mask: (B, T) response mask.
        clip_range: c > 0 (TRL PPO 0.2, OpenRLHF 0.5); None = unclipped.
        aggregation, num_tokens, num_seqs, max_len: see :func:`aggregate`.

    Returns:
        :class:`LossOutput` with metrics ``value_loss``, ``value_clip_frac`` (tokens where the
        clip moved the value and the clipped term is larger), ``value_mean``, ``return_mean``
        (token means).
    """
    _check_2d("values", values)
    _check_same_shape("values", values, old_values=old_values, returns=returns)
    if clip_range is not None and not clip_range > 0:
        raise ValueError(f"clip_range={clip_range}: expected > 0 (e.g. 0.2) or None for no clip")
    dtype = _compute_dtype(values, old_values, returns)
    m = _bool_mask(mask, values)
    v = _zero_masked(_as_float(values, dtype), m)
    v_old = _zero_masked(_as_float(old_values, dtype), m)
    ret = _zero_masked(_as_float(returns, dtype), m)
    err = (v - ret).square()
    if clip_range is None:
        per_token = 0.5 * err
        clipped_larger = torch.zeros_like(m)
    else:
        delta = v - v_old
        v_clip = v_old + delta.clamp(-clip_range, clip_range)
        err_clip = (v_clip - ret).square()
        per_token = 0.5 * torch.maximum(err, err_clip)
        with torch.no_grad():
            clipped_larger = (delta.abs() > clip_range) & (err_clip > err)
    loss = aggregate(
        per_token, m, aggregation, num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len
    )
    with torch.no_grad():
        n_tok = _denominator(num_tokens, m.sum().to(dtype), "num_tokens")
        metrics = {
            "value_loss": loss.detach(),
            "value_clip_frac": (clipped_larger & m).sum().to(dtype) / n_tok,
            "value_mean": _token_mean(v, m, n_tok),
            "return_mean": _token_mean(ret, m, n_tok),
        }
    return LossOutput(loss, metrics)


def entropy_bonus(
    entropy: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    coef: float,
    aggregation: str = "token-mean",
    num_tokens: Number | torch.Tensor | None = None,
    num_seqs: Number | torch.Tensor | None = None,
    max_len: Number | None = None,
) -> LossOutput:
    """Entropy bonus: loss = −coef · aggregate(H), so minimising it raises entropy.

    Args:
        entropy: float (B, T) per-token entropy of the policy's next-token distribution.
        coef: bonus coefficient ≥ 0 (0 keeps the metric and adds nothing to the loss).

    Returns:
        :class:`LossOutput` with metrics ``entropy`` (token mean) and ``entropy_loss``.
    """
    _check_2d("entropy", entropy)
    if coef < 0:
        raise ValueError(f"coef={coef}: the entropy coefficient must be >= 0")
    if coef == 0:
        # the metric only: no backward through the full-vocabulary softmax for a zero term
        entropy = entropy.detach()
    dtype = _compute_dtype(entropy)
    m = _bool_mask(mask, entropy)
    agg = aggregate(
        entropy, m, aggregation, num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len
    )
    loss = -coef * agg
    with torch.no_grad():
        n_tok = _denominator(num_tokens, m.sum().to(dtype), "num_tokens")
        metrics = {
            "entropy": _token_mean(_as_float(entropy, dtype), m, n_tok),
            "entropy_loss": loss.detach(),
        }
    return LossOutput(loss, metrics)


def kl_penalty(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    coef: float,
    estimator: str = "k3",
    clamp: float | None = 10.0,
    aggregation: str = "token-mean",
    num_tokens: Number | torch.Tensor | None = None,
    num_seqs: Number | torch.Tensor | None = None,
    max_len: Number | None = None,
) -> LossOutput:
    """KL to the reference in the loss: loss = coef · aggregate(kl_estimate(logπ, logπ_ref)).

    GRPO's choice (TRL ``beta`` with k3; verl ``use_kl_loss`` with ``low_var_kl``). For KL in
    the reward instead, use :func:`rlhf_core.ops.shaped_rewards` at rollout time.

    Args:
        logprobs: float (B, T) current policy (with grad).
        ref_logprobs: float (B, T) frozen reference (no grad).
        coef: β ≥ 0 (0 logs the KL and adds nothing).
        estimator, clamp: see :func:`kl_estimate`.

    Returns:
        :class:`LossOutput` with metrics ``kl`` (token mean of the estimate) and ``kl_loss``.
    """
    _check_2d("logprobs", logprobs)
    _check_same_shape("logprobs", logprobs, ref_logprobs=ref_logprobs)
    if coef < 0:
        raise ValueError(f"coef={coef}: the KL coefficient beta must be >= 0")
    dtype = _compute_dtype(logprobs, ref_logprobs)
    m = _bool_mask(mask, logprobs)
    per_token = kl_estimate(
        _zero_masked(_as_float(logprobs, dtype), m),
        _zero_masked(_as_float(ref_logprobs, dtype), m),
        estimator=estimator,
        clamp=clamp,
    )
    agg = aggregate(
        per_token, m, aggregation, num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len
    )
    loss = coef * agg
    with torch.no_grad():
        n_tok = _denominator(num_tokens, m.sum().to(dtype), "num_tokens")
        metrics = {"kl": _token_mean(per_token, m, n_tok), "kl_loss": loss.detach()}
    return LossOutput(loss, metrics)


def sft_loss(
    logprobs: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    aggregation: str = "token-mean",
    num_tokens: Number | torch.Tensor | None = None,
    num_seqs: Number | torch.Tensor | None = None,
    max_len: Number | None = None,
) -> LossOutput:
    """Negative log-likelihood of target tokens: loss = aggregate(−logπ).

    Args:
        logprobs: float (B, T) log-probabilities of the target tokens (e.g. from
            :func:`rlhf_core.models.token_logprobs`), mask selecting the completion tokens.

    Returns:
        :class:`LossOutput` with metric ``nll`` (token mean).
    """
    _check_2d("logprobs", logprobs)
    dtype = _compute_dtype(logprobs)
    m = _bool_mask(mask, logprobs)
    loss = aggregate(
        -_as_float(logprobs, dtype),
        m,
        aggregation,
        num_tokens=num_tokens,
        num_seqs=num_seqs,
        max_len=max_len,
    )
    with torch.no_grad():
        n_tok = _denominator(num_tokens, m.sum().to(dtype), "num_tokens")
        metrics = {"nll": _token_mean(-_as_float(logprobs, dtype), m, n_tok)}
    return LossOutput(loss, metrics)


# ----------------------------------------------------------------------------------------------
# preference losses


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    *,
    margin: torch.Tensor | float | None = None,
    center_coef: float = 0.0,
    num_pairs: Number | torch.Tensor | None = None,
) -> LossOutput:
    """Bradley–Terry reward-model loss over preference pairs.

    loss = Σ_i −log σ(r_c,i − r_r,i − m_i) / N + center_coef · Σ_i (r_c,i + r_r,i)² / N

    (InstructGPT's pairwise loss; the margin of Llama 2; the centring term of TRL's
    ``center_rewards_coefficient``, which keeps rewards near zero mean.)

    Args:
        chosen_rewards, rejected_rewards: float (P,) scalar rewards of each pair.
        margin: None, a float, or float (P,) per-pair margins m_i.
        center_coef: ≥ 0 (TRL suggests 0.01).
        num_pairs: global number of pairs N (micro-batch invariance); default P.

    Returns:
        :class:`LossOutput` with metrics ``bt_loss`` (the NLL part), ``accuracy`` (fraction
        with r_c > r_r; a tie counts ½), ``margin`` (mean r_c − r_r), ``chosen_reward``,
        ``rejected_reward`` (means); all normalised by N.
    """
    if chosen_rewards.dim() != 1:
        raise ValueError(
            f"chosen_rewards must be (P,) one reward per pair, got {tuple(chosen_rewards.shape)}"
        )
    _check_same_shape("chosen_rewards", chosen_rewards, rejected_rewards=rejected_rewards)
    if center_coef < 0:
        raise ValueError(f"center_coef={center_coef}: expected >= 0 (e.g. 0.01) or 0 to disable")
    dtype = _compute_dtype(chosen_rewards, rejected_rewards)
    rc = _as_float(chosen_rewards, dtype)
    rr = _as_float(rejected_rewards, dtype)
    n = _denominator(num_pairs, torch.tensor(float(rc.shape[0]), dtype=dtype), "num_pairs")
    diff = rc - rr
    logits = diff
    if margin is not None:
        if isinstance(margin, torch.Tensor):
            _check_same_shape("chosen_rewards", chosen_rewards, margin=margin)
            logits = diff - _as_float(margin, dtype)
        else:
            logits = diff - float(margin)
    nll = -F.logsigmoid(logits).sum() / n
    loss = nll
    if center_coef > 0:
        loss = loss + center_coef * (rc + rr).square().sum() / n
    with torch.no_grad():
        acc = (diff > 0).to(dtype) + 0.5 * (diff == 0).to(dtype)
        metrics = {
            "bt_loss": nll.detach(),
            "accuracy": acc.sum() / n,
            "margin": diff.sum() / n,
            "chosen_reward": rc.sum() / n,
            "rejected_reward": rr.sum() / n,
        }
    return LossOutput(loss, metrics)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    num_pairs: Number | torch.Tensor | None = None,
) -> LossOutput:
    """DPO and IPO losses over preference pairs.

    With h = (logπ(y_c) − logπ(y_r)) − (logπ_ref(y_c) − logπ_ref(y_r)):

    - ``sigmoid`` (DPO): ℓ = −(1 − ε)·log σ(β·h) − ε·log σ(−β·h), ε = ``label_smoothing``
      (conservative DPO: labels flipped with probability ε; ε = 0 is plain DPO).
    - ``ipo``: ℓ = (h − 1/(2β))². The IPO paper uses length-averaged log-probabilities;
      pass them so (``sequence_logprobs(..., average=True)``), as DPOTrainer does.

    Args:
        policy_chosen_logps, ...: float (P,) sequence log-probabilities (sum over completion
            tokens, or mean for IPO) under the policy (with grad) and the frozen reference.
        beta: β > 0.
        loss_type: one of :data:`DPO_LOSS_TYPES`.
        label_smoothing: ε in [0, 0.5) (sigmoid only).
        num_pairs: global pair count (micro-batch invariance); default P.

    Returns:
        :class:`LossOutput` with metrics ``dpo_loss``, ``reward_chosen`` / ``reward_rejected``
        (implicit rewards β·(logπ − logπ_ref), means), ``reward_margin``, ``reward_accuracy``
        (fraction with chosen implicit reward > rejected), ``logps_chosen`` /
        ``logps_rejected`` (policy means).
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r} is unknown; expected one of {DPO_LOSS_TYPES}")
    if not beta > 0:
        raise ValueError(f"beta={beta}: expected > 0 (e.g. 0.1)")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing={label_smoothing}: expected in [0, 0.5)")
    if policy_chosen_logps.dim() != 1:
        raise ValueError(
            "policy_chosen_logps must be (P,) one log-probability per sequence, got "
            f"{tuple(policy_chosen_logps.shape)}"
        )
    _check_same_shape(
        "policy_chosen_logps",
        policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    dtype = _compute_dtype(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    pc = _as_float(policy_chosen_logps, dtype)
    pr = _as_float(policy_rejected_logps, dtype)
    rc = _as_float(ref_chosen_logps, dtype)
    rr = _as_float(ref_rejected_logps, dtype)
    n = _denominator(num_pairs, torch.tensor(float(pc.shape[0]), dtype=dtype), "num_pairs")
    h = (pc - pr) - (rc - rr)
    if loss_type == "sigmoid":
        per_pair = -(1.0 - label_smoothing) * F.logsigmoid(beta * h)
        if label_smoothing > 0:
            per_pair = per_pair - label_smoothing * F.logsigmoid(-beta * h)
    else:
        per_pair = (h - 1.0 / (2.0 * beta)).square()
    loss = per_pair.sum() / n
    with torch.no_grad():
        reward_c = beta * (pc - rc)
        reward_r = beta * (pr - rr)
        metrics = {
            "dpo_loss": loss.detach(),
            "reward_chosen": reward_c.sum() / n,
            "reward_rejected": reward_r.sum() / n,
            "reward_margin": (reward_c - reward_r).sum() / n,
            "reward_accuracy": (reward_c > reward_r).to(dtype).sum() / n,
            "logps_chosen": pc.sum() / n,
            "logps_rejected": pr.sum() / n,
        }
    return LossOutput(loss, metrics)


def sequence_logprobs(
    token_logprobs: torch.Tensor, mask: torch.Tensor | None = None, *, average: bool = False
) -> torch.Tensor:
    """Sum (or mean, with ``average=True``) of per-token log-probabilities over valid tokens.

    Args:
        token_logprobs: float (B, T).
        mask: (B, T) completion mask.

    Returns:
        float (B,); a row without valid tokens gives 0.
    """
    _check_2d("token_logprobs", token_logprobs)
    m = _bool_mask(mask, token_logprobs)
    total = _zero_masked(token_logprobs, m).sum(dim=-1)
    if average:
        return total / m.sum(dim=-1).clamp(min=1).to(total.dtype)
    return total


def explained_variance(
    values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor | None = None
) -> float:
    """1 − Var(R − V) / Var(R) over valid tokens (float64, population variance).

    1 = the value model predicts the returns perfectly; 0 = no better than a constant; < 0 =
    worse. Not additive: compute it over the whole batch, not per micro-batch.

    Args:
        values, returns: float (B, T) (or any equal shapes) with a mask of the same shape.

    Returns:
        a Python float; NaN when the returns have no variance (or fewer than 2 valid tokens).
    """
    _check_same_shape("values", values, returns=returns)
    m = _bool_mask(mask, values)
    v = values.detach().to(torch.float64)[m]
    r = returns.detach().to(torch.float64)[m]
    if r.numel() < 2:
        return math.nan
    var_r = torch.var(r, unbiased=False)
    if float(var_r) == 0.0:
        return math.nan
    return float(1.0 - torch.var(r - v, unbiased=False) / var_r)
