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

Modules (every public name is importable from ``rlhf_core.losses``)
-------------------------------------------------------------------
=====================  =====================================================================
:mod:`.aggregation`    :class:`LossOutput`, :func:`aggregate` and its modes, global counts,
                       the metric merge rule
:mod:`.ratio`          importance ratios at the token / sequence / sequence_token level
:mod:`.policy`         policy losses on the ratio: PPO clipped surrogate, CISPO, SAPO; SFT NLL
:mod:`.sequence`       GSPO and GSPO-token; sequence log-probabilities
:mod:`.value`          the clipped value loss, explained variance
:mod:`.kl`             KL estimators and the KL term
:mod:`.entropy`        the entropy bonus; Clip-Cov and KL-Cov
:mod:`.preference`     Bradley–Terry, DPO / IPO
:mod:`.correction`     rollout/trainer mismatch weights (TIS, MIS, IcePop, geometric mask) and
                       metrics (``from rlhf_core.losses import correction``)
=====================  =====================================================================

Sources of the formulas (read from each project's code, see DESIGN.md and the research notes):
clipped surrogate with asymmetric ε and dual clip (PPO, Schulman et al. 2017; DAPO
clip-higher; dual clip as in verl ``compute_policy_loss_vanilla`` and OpenRLHF
``--actor.dual_clip``); aggregation modes as verl ``agg_loss``; KL estimators k1/k2/k3/abs
(Schulman's "Approximating KL divergence" note, as verl ``kl_penalty``); Bradley–Terry with
margin and reward centring (TRL ``RewardTrainer``); DPO sigmoid with conservative label
smoothing (Rafailov et al. 2023; Mitchell's cDPO note) and IPO (Azar et al. 2023); GSPO and
GSPO-token (Zheng et al. 2025; verl ``compute_policy_loss_gspo``, TRL
``importance_sampling_level``); CISPO (MiniMax-M1; verl ``compute_policy_loss_cispo``, TRL
``loss_type="cispo"``); SAPO (verl ``compute_policy_loss_sapo``, TRL ``loss_type="sapo"``);
Clip-Cov and KL-Cov (Cui et al. 2025; verl ``compute_policy_loss_clip_cov`` / ``_kl_cov``).
The research note ``rl-2026-techniques.md`` gives each anchor's file and where they disagree.
"""

from __future__ import annotations

from rlhf_core.losses.aggregation import (
    AGGREGATIONS,
    METRIC_REDUCTIONS,
    LossOutput,
    aggregate,
    count_tokens_and_seqs,
    merge_metrics,
    metric_reduction,
)
from rlhf_core.losses.entropy import clip_cov_loss, entropy_bonus, kl_cov_loss
from rlhf_core.losses.kl import KL_ESTIMATORS, kl_estimate, kl_penalty
from rlhf_core.losses.policy import cispo_bounds, cispo_loss, ppo_policy_loss, sapo_loss, sft_loss
from rlhf_core.losses.preference import DPO_LOSS_TYPES, bradley_terry_loss, dpo_loss
from rlhf_core.losses.ratio import IMPORTANCE_SAMPLING_LEVELS, log_importance_ratio
from rlhf_core.losses.sequence import gspo_loss, sequence_logprobs
from rlhf_core.losses.value import explained_variance, value_loss

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
    "IMPORTANCE_SAMPLING_LEVELS",
    "log_importance_ratio",
    "gspo_loss",
    "cispo_loss",
    "cispo_bounds",
    "sapo_loss",
    "clip_cov_loss",
    "kl_cov_loss",
]
