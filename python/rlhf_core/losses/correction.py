"""Rollout / trainer mismatch correction: importance weights between the engine that sampled
and the trainer that learns, and the metrics that show the gap.

When the completions come from an inference engine (vLLM) rather than the training model
itself, the engine's logprobs of the sampled tokens (``rollout_logprobs``, π_roll) differ from
the trainer's recomputed ones (``old_logprobs``, π_old): another kernel, another precision,
weights one sync behind. The policy-gradient loss is then off-policy by the mismatch ratio
ρ_t = π_old / π_roll = exp(lp_old − lp_roll), and the correction multiplies the already
clipped per-token loss by a detached weight w = f(ρ) (the *decoupled* form: the PPO ratio
stays π_θ / π_old, TRL ``GRPOTrainer._compute_loss``, verl ``compute_policy_loss_*``).

Modes (``mode``; TRL's ``vllm_importance_sampling_mode`` names, plus the geometric one):

======================  =========================================================  ==================================
mode                    weight                                                      anchors
======================  =========================================================  ==================================
``token_truncate``      w_t = clamp(ρ_t, C_min, C_max)                              TIS: TRL ``token_truncate``; verl
                                                                                    ``rollout_is=token`` with a float
                                                                                    threshold (C_min none); OpenRLHF
                                                                                    ``tis``; slime ``--use-tis``
``token_mask``          w_t = ρ_t · 1[C_min ≤ ρ_t ≤ C_max]                          TRL ``token_mask``; **IcePop** with
                                                                                    both bounds (OpenRLHF ``icepop``
                                                                                    0.5 / 5; verl ``"a_b"`` threshold)
``sequence_truncate``   w_b = clamp(ρ_b, C_min, C_max), ρ_b = exp(Σ_t log ρ_t)      Seq-TIS: TRL ``sequence_truncate``;
                                                                                    verl ``rollout_is=sequence``
``sequence_mask``       w_b = ρ_b · 1[C_min ≤ ρ_b ≤ C_max]                          Seq-MIS: TRL ``sequence_mask`` (its
                                                                                    default); verl sequence ``"a_b"``
``geometric_mask``      w_t = ρ_t · 1[C_min ≤ g_b ≤ C_max], g_b = exp(mean_t log ρ_t)  OpenRLHF / NeMo-RL
                                                                                    ``seq-mask-tis`` (geometric-mean
                                                                                    sequence ratio as the filter)
======================  =========================================================  ==================================

A missing bound is no bound (C_min None = −∞ for masks, no lower clamp for truncation);
every mode needs at least one. Sequence sums and means run over the mask only.

Conventions and where the anchors disagree (``shared/research/rl-2026-techniques.md`` §1):

- **Log clamp.** ``log_ratio_clamp`` (default 20, verl's ``SAFETY_BOUND``) clamps log ρ_t
  (token modes), the sequence sum (sequence modes) and the sequence mean (geometric) before
  ``exp``. TRL does not clamp its sequence sums (``exp`` overflows to +inf, which truncation
  caps and masking drops); ``log_ratio_clamp=None`` reproduces that exactly. With the clamp a
  ratio TRL computes as 0 (a sum below −745) becomes e^−20 ≈ 2e−9.
- **Masked positions** never enter any arithmetic (NaN or ±inf there is ignored, as in
  :mod:`rlhf_core.losses`). A non-finite value at a valid position propagates, so the
  trainer's non-finite check stops the run and dumps the batch.
- **Where the weight goes.** After the clip (and dual clip), before the KL and entropy terms.
  Every weight is ≥ 0 and every policy loss here is positively homogeneous in the advantage
  (max(−wAρ, −wA·clip ρ) = w·max(−Aρ, −A·clip ρ), and likewise for the dual-clip bound), so
  :func:`weighted_advantages` — the advantage times the weight — gives exactly the anchors'
  ``w · ℓ_clipped`` per token without touching the loss function (tested against the
  anchors' form). The loss's ``advantage_mean`` metric is then that of the weighted advantage.
- **Denominators.** A masked weight zeroes the token's numerator only: by default the token
  still counts in the token-mean denominator (``"original"``, AReaL / slime; TRL, OpenRLHF and
  IcePop weights behave so too). ``"kept"`` (verl's rejection sampling) drops rejected tokens
  from the loss mask, so the denominators shrink; :attr:`CorrectionWeights.rejected` says
  which.
- **Weights are detached**; the functions run under ``no_grad``.

Metrics (:func:`mismatch_metrics`), spelled as the anchors spell them: TRL's
``sampling/sampling_logp_difference/{mean,max}`` and
``sampling/importance_sampling_ratio/{min,mean,max}``, verl's ``rollout_corr/kl``,
``rollout_corr/k3_kl``, ``rollout_corr/chi2_{token,seq}`` and ``rollout_corr/rollout_is_*``.

This module imports only torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "CORRECTION_MODES",
    "DENOMINATORS",
    "LOG_RATIO_BOUND",
    "CorrectionWeights",
    "check_correction_options",
    "correction_weights",
    "mismatch_metrics",
    "weighted_advantages",
]

#: The values of ``mode`` (see the module docstring).
CORRECTION_MODES: tuple[str, ...] = (
    "token_truncate",
    "token_mask",
    "sequence_truncate",
    "sequence_mask",
    "geometric_mask",
)
#: The values of the denominator choice: ``"original"`` (rejected tokens still count) or
#: ``"kept"`` (rejected tokens leave the loss mask).
DENOMINATORS: tuple[str, ...] = ("original", "kept")
#: Clamp of log ratios before ``exp`` (verl ``rollout_corr_helper.SAFETY_BOUND``).
LOG_RATIO_BOUND = 20.0


@dataclass(frozen=True)
class CorrectionWeights:
    """The result of :func:`correction_weights`.

    Attributes:
        weights: float (B, T) detached weights, 0 at masked and rejected positions (the
            sequence weight repeated over its tokens at sequence level).
        rejected: bool (B, T): valid tokens whose weight a bound set to 0 (mask modes; all
            False for truncation).
        raw: float (B, T): the ratio before the bounds at each valid token (ρ_t, or ρ_b at
            sequence level), 0 elsewhere.
        log_ratio: float (B,) per-sequence log ratio at sequence level (Σ_t log ρ_t,
            unclamped), the per-sequence mean for ``geometric_mask``, None for token modes.
        level: ``"token"`` or ``"sequence"``: what one weight belongs to.
    """

    weights: torch.Tensor
    rejected: torch.Tensor
    raw: torch.Tensor
    log_ratio: torch.Tensor | None
    level: str


def check_correction_options(
    mode: str, clip_max: float | None, clip_min: float | None, denominator: str = "original"
) -> None:
    """Raise ``ValueError`` naming the option for a bad mode, bound pair or denominator."""
    if mode not in CORRECTION_MODES:
        raise ValueError(f"mode={mode!r}: expected one of {CORRECTION_MODES}")
    if clip_max is None and clip_min is None:
        raise ValueError(
            f"mode={mode!r} needs a bound: set clip_max (e.g. 3.0, TRL's default) and/or clip_min"
        )
    for name, v in (("clip_max", clip_max), ("clip_min", clip_min)):
        if v is not None and not (math.isfinite(v) and v >= 0):
            raise ValueError(f"{name}={v}: expected a finite ratio >= 0, or None (no bound)")
    if clip_max is not None and clip_min is not None and clip_min > clip_max:
        raise ValueError(f"clip_min={clip_min} is above clip_max={clip_max}")
    if denominator not in DENOMINATORS:
        raise ValueError(f"denominator={denominator!r}: expected one of {DENOMINATORS}")


def _inputs(
    old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log ρ (B, T) in float32 / float64, zero at masked positions; bool mask (B, T))."""
    if old_logprobs.dim() != 2:
        raise ValueError(
            f"old_logprobs must be a padded (B, T) tensor, got shape {tuple(old_logprobs.shape)}"
        )
    if rollout_logprobs.shape != old_logprobs.shape:
        raise ValueError(
            f"rollout_logprobs has shape {tuple(rollout_logprobs.shape)}, expected "
            f"{tuple(old_logprobs.shape)} (the shape of old_logprobs)"
        )
    if mask is None:
        m = torch.ones_like(old_logprobs, dtype=torch.bool)
    elif mask.shape != old_logprobs.shape:
        raise ValueError(
            f"mask has shape {tuple(mask.shape)}, expected {tuple(old_logprobs.shape)}"
        )
    else:
        m = mask if mask.dtype == torch.bool else mask != 0
    f64 = torch.float64 in (old_logprobs.dtype, rollout_logprobs.dtype)
    dtype = torch.float64 if f64 else torch.float32
    zero = torch.zeros((), dtype=dtype, device=old_logprobs.device)
    # masked values (NaN, ±inf, padding) never reach the subtraction
    old = torch.where(m, old_logprobs.detach().to(dtype), zero)
    roll = torch.where(m, rollout_logprobs.detach().to(dtype), zero)
    return old - roll, m


def _exp(x: torch.Tensor, clamp: float | None) -> torch.Tensor:
    return torch.exp(x if clamp is None else x.clamp(-clamp, clamp))


@torch.no_grad()
def correction_weights(
    old_logprobs: torch.Tensor,
    rollout_logprobs: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    mode: str = "sequence_mask",
    clip_max: float | None = 3.0,
    clip_min: float | None = None,
    log_ratio_clamp: float | None = LOG_RATIO_BOUND,
) -> CorrectionWeights:
    """Detached importance weights π_old / π_roll per token (see the module docstring).

    Args:
        old_logprobs: float (B, T) the trainer's logprobs of the sampled tokens, recomputed
            before the update (``Rollout.logprobs``; the buffer's ``old_logprobs``).
        rollout_logprobs: float (B, T) the engine's logprobs of the same tokens
            (``Rollout.rollout_logprobs``).
        mask: (B, T) bool or 0/1 response mask; None = every position counts.
        mode: one of :data:`CORRECTION_MODES`; defaults are TRL's (``sequence_mask``, C_max
            3.0, no C_min).
        clip_max, clip_min: C_max / C_min (None = no bound; at least one is needed).
        log_ratio_clamp: clamp of log ratios before ``exp`` (None: TRL's unclamped form).

    Returns:
        :class:`CorrectionWeights` (float64 when an input is float64, else float32).
    """
    check_correction_options(mode, clip_max, clip_min)
    log_r, m = _inputs(old_logprobs, rollout_logprobs, mask)
    zero = torch.zeros((), dtype=log_r.dtype, device=log_r.device)
    lo = -math.inf if clip_min is None else float(clip_min)
    hi = math.inf if clip_max is None else float(clip_max)
    seq_log: torch.Tensor | None = None
    if mode.startswith("token"):
        raw = _exp(log_r, log_ratio_clamp)  # (B, T)
        test = raw
    elif mode.startswith("sequence"):
        seq_log = log_r.sum(dim=-1)  # (B,)
        raw = _exp(seq_log, log_ratio_clamp)[:, None].expand_as(log_r)
        test = raw
    else:  # geometric_mask: the token ratios, filtered by the per-sequence geometric mean
        seq_log = log_r.sum(dim=-1) / m.sum(dim=-1).clamp(min=1).to(log_r.dtype)  # (B,)
        raw = _exp(log_r, log_ratio_clamp)
        test = _exp(seq_log, log_ratio_clamp)[:, None].expand_as(log_r)
    if mode.endswith("truncate"):
        weights = raw.clamp(min=clip_min, max=clip_max)
        rejected = torch.zeros_like(m)
    else:
        out = (test < lo) | (test > hi)  # a NaN ratio is neither: it propagates
        weights = torch.where(out, zero, raw)
        rejected = out & m
    level = "token" if mode.startswith("token") or mode == "geometric_mask" else "sequence"
    return CorrectionWeights(
        weights=torch.where(m, weights, zero),
        rejected=rejected,
        raw=torch.where(m, raw, zero),
        log_ratio=seq_log,
        level=level,
    )


def weighted_advantages(advantages: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``advantages · weights``, (B, T): what a policy loss takes so that its per-token loss is
    the clipped loss times the weight (the weights are ≥ 0 and the losses positively
    homogeneous in the advantage; see the module docstring).

    Args:
        advantages: float (B, T) per token or (B,) per sequence.
        weights: float (B, T) from :func:`correction_weights` (detached).
    """
    if advantages.dim() == 1:
        if advantages.shape[0] != weights.shape[0]:
            raise ValueError(
                f"advantages has shape {tuple(advantages.shape)}, expected "
                f"({weights.shape[0]},) per sequence or {tuple(weights.shape)} per token"
            )
        advantages = advantages[:, None].expand_as(weights)
    elif advantages.shape != weights.shape:
        raise ValueError(
            f"advantages has shape {tuple(advantages.shape)}, expected {tuple(weights.shape)} "
            "(the shape of the weights)"
        )
    return advantages * weights.detach().to(advantages.dtype)


def _masked_mean(x: torch.Tensor, m: torch.Tensor) -> float:
    return float(torch.where(m, x, torch.zeros((), dtype=x.dtype)).sum() / m.sum())


@torch.no_grad()
def mismatch_metrics(
    old_logprobs: torch.Tensor,
    rollout_logprobs: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    mode: str = "sequence_mask",
    clip_max: float | None = 3.0,
    clip_min: float | None = None,
    log_ratio_clamp: float | None = LOG_RATIO_BOUND,
) -> dict[str, float]:
    """How far the engine's logprobs are from the trainer's, and what the correction of
    ``mode`` does about it (computed in float64 on the CPU; host floats).

    TRL's (``GRPOTrainer._generate_and_score_completions``):

    - ``sampling/sampling_logp_difference/{mean,max}``: |lp_old − lp_roll| over valid tokens;
    - ``sampling/importance_sampling_ratio/{min,mean,max}``: the weights after truncation /
      masking, over valid tokens (token level) or one per sequence (sequence level; TRL counts
      empty rows too, here only rows with a valid token).

    verl's (``rollout_corr_helper.compute_offpolicy_metrics`` / ``compute_is_metrics``,
    ``rollout_corr/`` prefix):

    - ``kl`` = mean(lp_roll − lp_old) = KL(π_roll ‖ π_old), ``k3_kl`` = mean(ρ − 1 − log ρ)
      (unclamped), ``chi2_token`` = mean ρ_t² − 1, ``chi2_seq`` = mean over sequences ρ_b² − 1
      (log ratios clamped to ±20), token means over valid tokens;
    - ``rollout_is_{mean,min,max,std,eff_sample_size,ratio_fraction_high,
      ratio_fraction_low}`` as verl computes them for its ``token`` / ``sequence`` level
      (``geometric_mask`` reads as token level), with the upper threshold C_max and the lower
      C_min (verl's default 1 / C_max when None); ``rollout_is_oob_ratio`` (mask modes): the
      share of valid tokens whose weight was set to 0.

    Raises ``ValueError`` when no position is valid.
    """
    w = correction_weights(
        old_logprobs.double().cpu(), rollout_logprobs.double().cpu(),
        None if mask is None else mask.cpu(),
        mode=mode, clip_max=clip_max, clip_min=clip_min, log_ratio_clamp=log_ratio_clamp,
    )  # fmt: skip
    log_r, m = _inputs(old_logprobs.double().cpu(), rollout_logprobs.double().cpu(),
                       None if mask is None else mask.cpu())  # fmt: skip
    if not bool(m.any()):
        raise ValueError("mask selects no token: there is no mismatch to measure")
    rows = m.any(dim=-1)  # (B,) sequences with a valid token
    out: dict[str, float] = {}

    delta = log_r.abs()
    out["sampling/sampling_logp_difference/mean"] = _masked_mean(delta, m)
    out["sampling/sampling_logp_difference/max"] = float(delta[m].max())
    if w.level == "sequence":
        ratios = w.weights.max(dim=-1).values[rows]  # one weight per sequence (≥ 0)
    else:
        ratios = w.weights[m]
    out["sampling/importance_sampling_ratio/min"] = float(ratios.min())
    out["sampling/importance_sampling_ratio/mean"] = float(ratios.mean())
    out["sampling/importance_sampling_ratio/max"] = float(ratios.max())

    p = "rollout_corr/"
    out[p + "kl"] = _masked_mean(-log_r, m)
    out[p + "k3_kl"] = _masked_mean(torch.exp(log_r) - log_r - 1.0, m)
    out[p + "chi2_token"] = _masked_mean(_exp(log_r, LOG_RATIO_BOUND).square(), m) - 1.0
    seq_sum = log_r.sum(dim=-1)[rows]
    out[p + "chi2_seq"] = float(_exp(2.0 * seq_sum.clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND),
                                     None).mean()) - 1.0  # fmt: skip

    upper = math.inf if clip_max is None else float(clip_max)
    lower = clip_min if clip_min is not None else (1.0 / upper if upper > 0 else 0.0)
    if w.level == "sequence":
        assert w.log_ratio is not None
        s = w.log_ratio[rows]
        out[p + "rollout_is_max"] = math.exp(min(float(s.max()), LOG_RATIO_BOUND))
        out[p + "rollout_is_min"] = math.exp(float(s.min()))
        out[p + "rollout_is_ratio_fraction_high"] = float((s > math.log(upper)).double().mean())
        low_log = math.log(lower) if lower > 0 else -math.inf
        out[p + "rollout_is_ratio_fraction_low"] = float((s < low_log).double().mean())
    else:
        out[p + "rollout_is_max"] = float(w.weights[m].max())
        out[p + "rollout_is_min"] = float(w.weights[m].min())
        out[p + "rollout_is_ratio_fraction_high"] = _masked_mean((w.raw > upper).double(), m)
        out[p + "rollout_is_ratio_fraction_low"] = _masked_mean((w.raw < lower).double(), m)
    out[p + "rollout_is_mean"] = _masked_mean(w.weights, m)
    capped = w.weights.clamp(min=0.0, max=upper)
    mean_c = _masked_mean(capped, m)
    n = int(m.sum())
    var = _masked_mean((capped - mean_c).square(), m) if n > 1 else 0.0
    out[p + "rollout_is_std"] = math.sqrt(max(var, 0.0))
    out[p + "rollout_is_eff_sample_size"] = 1.0 / _masked_mean(
        (capped / (mean_c + 1e-8)).square(), m
    )
    if mode.endswith("mask"):
        out[p + "rollout_is_oob_ratio"] = _masked_mean(w.rejected.double(), m)
    return out
