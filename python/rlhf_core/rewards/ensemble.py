"""A reward ensemble as a reward source: how K members' scores become one reward, and how
much the members disagree.

- :func:`reduce_ensemble` turns member scores (B, K) into one score per sequence with one of
  :data:`ENSEMBLE_REDUCTIONS`;
- :func:`ensemble_std` is the disagreement of each sequence: the standard deviation of its K
  member scores (population, ddof 0);
- :class:`RewardEnsembleScorer` makes a :class:`~rlhf_core.models.RewardEnsemble` a reward
  function: it is scored on the sampled token ids like a single reward model, returns the
  reduced score, and hands the trainers each member's score and the disagreement to log
  (``reward/<name>/member_<k>``, ``reward/<name>/std``).

The reductions (with their names in the literature):

============================  ============================================================
``mean``                      the members' mean (Coste et al. 2023: mean optimisation)
``min``                       the lowest member (Coste et al. 2023: worst-case
                              optimisation, WCO)
``mean_minus_std``            mean − λ·std (Eisenstein et al. 2023's mean-minus-std)
``mean_minus_var``            mean − λ·variance (Coste et al. 2023: uncertainty-weighted
                              optimisation, UWO)
============================  ============================================================

λ is ``lam`` (``ensemble_lambda`` in the trainer configs). A NaN member score makes the
sequence's reduced score NaN (unscorable), and its disagreement NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from rlhf_core.rewards.model_scorer import RewardModelScorer

__all__ = ["ENSEMBLE_REDUCTIONS", "RewardEnsembleScorer", "ensemble_std", "reduce_ensemble"]

#: The ways :func:`reduce_ensemble` combines member scores.
ENSEMBLE_REDUCTIONS: tuple[str, ...] = ("mean", "min", "mean_minus_std", "mean_minus_var")


def _members(scores: Any) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] < 1:
        raise ValueError(
            f"scores must be (B, K) member scores with K >= 1, got shape {tuple(s.shape)}"
        )
    return s


def ensemble_std(scores: Any) -> np.ndarray:
    """float64 (B,): the standard deviation of each row's K member scores (population, ddof
    0; 0 for one member; NaN when a member is NaN)."""
    s = _members(scores)
    return np.asarray(s.std(axis=1), dtype=np.float64)


def reduce_ensemble(scores: Any, how: str = "mean", lam: float = 1.0) -> np.ndarray:
    """One score per sequence from member scores (B, K): float64 (B,).

    ``how`` is one of :data:`ENSEMBLE_REDUCTIONS` (``mean``, ``min``, ``mean_minus_std``,
    ``mean_minus_var``); ``lam`` (>= 0, finite) weighs the std or variance. Statistics are
    over the K members of each row, variance and std with ddof 0.
    """
    if how not in ENSEMBLE_REDUCTIONS:
        raise ValueError(f"ensemble reduction {how!r}: expected one of {ENSEMBLE_REDUCTIONS}")
    if not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam (ensemble_lambda) must be finite and >= 0, got {lam}")
    s = _members(scores)
    if how == "min":
        return np.asarray(s.min(axis=1), dtype=np.float64)  # NaN propagates
    mean = s.mean(axis=1)
    if how == "mean":
        return np.asarray(mean, dtype=np.float64)
    var = s.var(axis=1)
    spread = np.sqrt(var) if how == "mean_minus_std" else var
    return np.asarray(mean - lam * spread, dtype=np.float64)


class RewardEnsembleScorer(RewardModelScorer):
    """A reward ensemble as a reward function: scored like a
    :class:`~rlhf_core.rewards.RewardModelScorer` (same encoding, batching and token-id
    path), returning the members' scores reduced by ``reduce`` (:func:`reduce_ensemble`).

    Args:
        ensemble: a model returning (B, K) scores, e.g. :class:`~rlhf_core.models.
            RewardEnsemble`.
        tokenizer: its tokenizer.
        reduce: one of :data:`ENSEMBLE_REDUCTIONS`.
        lam: λ of ``mean_minus_std`` / ``mean_minus_var``.
        name: what logs call it (default ``"reward_ensemble"``).
        batch_size, max_length, add_eos: as for :class:`~rlhf_core.rewards.RewardModelScorer`.

    :meth:`score_ids_parts` also returns ``member_<k>`` (each member's scores) and ``std``
    (:func:`ensemble_std`), which the trainers log as ``reward/<name>/member_<k>`` and
    ``reward/<name>/std`` (the ensemble's disagreement on the rollout).
    """

    __name__ = "reward_ensemble"

    def __init__(
        self,
        ensemble: torch.nn.Module,
        tokenizer: Any,
        *,
        reduce: str = "mean",
        lam: float = 1.0,
        batch_size: int = 32,
        max_length: int | None = None,
        add_eos: bool = True,
        name: str | None = None,
    ) -> None:
        reduce_ensemble(np.zeros((1, 1)), reduce, lam)  # checks reduce and lam
        super().__init__(
            ensemble,
            tokenizer,
            batch_size=batch_size,
            max_length=max_length,
            add_eos=add_eos,
            name=name,
        )
        self.reduce = reduce
        self.lam = float(lam)

    def member_scores(
        self, sequences: Sequence[Sequence[int] | np.ndarray | torch.Tensor]
    ) -> np.ndarray:
        """float64 (B, K): every member's score of each token-id sequence."""
        raw = self.raw_scores(sequences)
        if raw.ndim == 1:  # no rows at all, or a single-output model
            raw = raw.reshape(len(raw), -1) if raw.size else raw.reshape(0, 1)
        return raw

    def score_ids(
        self, sequences: Sequence[Sequence[int] | np.ndarray | torch.Tensor]
    ) -> np.ndarray:
        return reduce_ensemble(self.member_scores(sequences), self.reduce, self.lam)

    def score_ids_parts(
        self, sequences: Sequence[Sequence[int] | np.ndarray | torch.Tensor]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        m = self.member_scores(sequences)
        parts = {f"member_{k}": m[:, k].copy() for k in range(m.shape[1])}
        parts["std"] = ensemble_std(m)
        return reduce_ensemble(m, self.reduce, self.lam), parts
