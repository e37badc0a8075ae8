"""Preference labels: pairs of completions judged into ``{prompt, chosen, rejected}`` rows."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from rlhf_core.rewards.functions import call_reward_function
from rlhf_core.rewards.judge import sigmoid

__all__ = ["label_pairs"]


def label_pairs(
    prompts: Sequence[str],
    completions_a: Sequence[str],
    completions_b: Sequence[str],
    judge: Any,
    *,
    sample: bool = False,
    beta: float = 1.0,
    seed: int | None = None,
    **columns: Any,
) -> list[dict[str, Any]]:
    """Label pairs of completions as preference rows ``{prompt, chosen, rejected}``.

    ``judge`` is either

    * a pairwise judge (:class:`JudgeLabeler`, or anything with ``preference_probs(prompts,
      a, b)``): ``p = P(a better)`` as it returns; or
    * a scoring judge: a reward function (:class:`RewardFunction`, e.g. a
      :class:`RewardModelScorer`, :func:`exact_match_reward` or a hidden gold reward), called
      on ``completions_a`` and ``completions_b`` with the same ``columns``; then
      ``p = sigmoid(beta * (r_a - r_b))`` (Bradley-Terry).

    With ``sample=False`` the better side by ``p`` is chosen and ties (``p == 0.5``) are
    dropped. With ``sample=True`` the label is drawn: ``a`` is chosen with probability ``p``
    (Bradley-Terry label noise), using ``numpy.random.default_rng(seed)`` and one uniform draw
    per pair, so the same seed gives the same labels. Pairs with an unscorable (NaN) score or
    probability are dropped.

    Returns a list of dicts with keys ``prompt``, ``chosen``, ``rejected``, ``p_chosen`` (the
    judged probability that ``chosen`` is better), ``index`` (the pair's position in the
    inputs) and, for scoring judges, ``chosen_score`` and ``rejected_score``.
    """
    n = len(prompts)
    if len(completions_a) != n or len(completions_b) != n:
        raise ValueError(
            f"prompts, completions_a, completions_b have {n}, {len(completions_a)}, "
            f"{len(completions_b)} entries; they must match"
        )
    if not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta must be a positive finite number, got {beta}")
    r_a = r_b = None
    if hasattr(judge, "preference_probs"):
        p = np.asarray(judge.preference_probs(prompts, completions_a, completions_b), np.float64)
        if p.shape != (n,):
            raise ValueError(f"judge.preference_probs returned shape {p.shape}, expected ({n},)")
    elif callable(judge):
        r_a = call_reward_function(judge, prompts, completions_a, **columns)
        r_b = call_reward_function(judge, prompts, completions_b, **columns)
        p = sigmoid(beta * (r_a - r_b))
    else:
        raise TypeError(
            f"judge must be a reward function or have preference_probs(), got {type(judge).__name__}"
        )
    u = np.random.default_rng(seed).random(n) if sample else None
    rows: list[dict[str, Any]] = []
    for i in range(n):
        if not np.isfinite(p[i]):
            continue
        if u is not None:
            a_wins = bool(u[i] < p[i])
        else:
            if p[i] == 0.5:
                continue
            a_wins = bool(p[i] > 0.5)
        chosen, rejected = (
            (completions_a[i], completions_b[i]) if a_wins else (completions_b[i], completions_a[i])
        )
        row: dict[str, Any] = {
            "prompt": prompts[i],
            "chosen": chosen,
            "rejected": rejected,
            "p_chosen": float(p[i] if a_wins else 1.0 - p[i]),
            "index": i,
        }
        if r_a is not None and r_b is not None:
            row["chosen_score"] = float(r_a[i] if a_wins else r_b[i])
            row["rejected_score"] = float(r_b[i] if a_wins else r_a[i])
        rows.append(row)
    return rows
