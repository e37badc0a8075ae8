"""Losses over preference pairs: Bradley–Terry (reward models) and DPO / IPO (policies)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhf_core.losses.aggregation import (
    LossOutput,
    Number,
    _as_float,
    _check_same_shape,
    _compute_dtype,
    _denominator,
)

__all__ = ["DPO_LOSS_TYPES", "bradley_terry_loss", "dpo_loss"]

DPO_LOSS_TYPES: tuple[str, ...] = ("sigmoid", "ipo")


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
