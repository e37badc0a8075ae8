"""Group-relative estimators: GRPO, Dr.GRPO, RLOO and REINFORCE++-baseline.

Each prompt's G samples form a group (the buffer's ``group_ids``); a sample's advantage comes
from its score relative to the others of its group (the Rust kernel
:func:`rlhf_core.ops.group_advantages`):

======================  =====================================================================
estimator               advantage
======================  =====================================================================
GRPO                    (r − mean_group) / (std_group + ε) (DeepSeekMath); ``scale="batch"``:
                        / (std_batch + ε)
Dr.GRPO                 r − mean_group, no division (Liu et al. 2025)
RLOO                    r − mean of the other G − 1 samples (Ahmadian et al. 2024)
REINFORCE++-baseline    r − mean_group on the last token, then REINFORCE++ (KL-shaped per-token
                        rewards, discounted returns, whitened over the batch; OpenRLHF)
======================  =====================================================================

NaN scores (unscorable samples) get advantage 0 and stay out of their group's statistics;
groups whose scores are all equal get exactly 0 and are counted (``frac_zero_std_groups``).

With the KL in the reward, the first three subtract β·Σ_t KL_t of each sequence from its score
(TRL's RLOO); REINFORCE++-baseline puts −β·KL_t on every token.

Several processes: a prompt's group is sampled and held on one rank, so group and no scaling
are computed locally, bit for bit as in one process; ``scale="batch"`` gathers one score per
sequence and runs the same kernel on the global batch; REINFORCE++-baseline whitens with the
moments of every rank's tokens; the group counts are summed over ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from rlhf_core import ops
from rlhf_core import parallel as D
from rlhf_core.advantages.base import AdvantageStats, RewardKL
from rlhf_core.advantages.distributed import (
    distributed_group_advantages,
    global_group_stats,
    whiten_advantages,
)

if TYPE_CHECKING:
    from rlhf_core.buffer import RolloutBuffer

__all__ = ["GroupRelative", "ReinforcePPBaseline", "sequence_kl"]


def sequence_kl(
    buffer: RolloutBuffer, *, estimator: str = "k1", clamp: float | None = 10.0
) -> np.ndarray:
    """float64 (N,): Σ_t KL_t over each sequence's response tokens, from the buffer's
    ``logprobs`` and ``ref_logprobs`` (:func:`rlhf_core.ops.kl` per token, then
    :func:`rlhf_core.ops.reduce_tokens`; float64 throughout)."""
    per_token = ops.kl(
        buffer.field("logprobs").astype(np.float64),
        buffer.field("ref_logprobs").astype(np.float64),
        estimator=estimator,
        clamp=clamp,
    )
    out: np.ndarray = ops.reduce_tokens(per_token, offsets=buffer.offsets("response"), how="sum")
    return out


@dataclass(frozen=True, kw_only=True)
class GroupRelative(RewardKL):
    """One advantage per sequence from its group's scores; the GRPO family.

    :meth:`grpo`, :meth:`dr_grpo` and :meth:`rloo` build the three named settings.

    Attributes:
        baseline: ``"mean"`` (GRPO, Dr.GRPO) or ``"leave_one_out"`` (RLOO).
        scale: ``"group"`` (divide by the group std + ``eps``), ``"batch"`` (by the std of the
            batch's scores + ``eps``) or ``"none"``.
        eps: added to the std (verl 1e-6, TRL 1e-4, OpenRLHF 1e-9).
        ddof: of the std (1, every anchor's choice).
        singleton: what a group with one scorable member gets: ``"zero"`` or ``"raw"``.
    """

    baseline: str = "mean"
    scale: str = "group"
    eps: float = 1e-6
    ddof: int = 1
    singleton: str = "zero"

    @property
    def name(self) -> str:  # type: ignore[override]
        return "rloo" if self.baseline == "leave_one_out" else "grpo"

    @classmethod
    def grpo(cls, *, scale: str = "group", eps: float = 1e-6, **kl: Any) -> GroupRelative:
        """GRPO: group mean baseline, divided by the group (or batch) std (``kl``: the
        :class:`RewardKL` options)."""
        return cls(baseline="mean", scale=scale, eps=eps, **kl)

    @classmethod
    def dr_grpo(cls, **kl: Any) -> GroupRelative:
        """Dr.GRPO: group mean baseline, no std scaling."""
        return cls(baseline="mean", scale="none", **kl)

    @classmethod
    def rloo(cls, *, scale: str = "none", eps: float = 1e-6, **kl: Any) -> GroupRelative:
        """RLOO: leave-one-out baseline, no scaling by default."""
        return cls(baseline="leave_one_out", scale=scale, eps=eps, **kl)

    def scores(self, buffer: RolloutBuffer) -> np.ndarray:
        """float64 (N,): the buffer's scores, minus β·Σ_t KL_t when the KL is in the reward."""
        scores = buffer.field("scores").astype(np.float64)
        if self.kl_coef != 0:
            kl = sequence_kl(buffer, estimator=self.kl_estimator, clamp=self.kl_clamp)
            scores = scores - self.kl_coef * kl
        return scores

    def compute(self, buffer: RolloutBuffer, dist: D.DistContext | None = None) -> AdvantageStats:
        """Per-sequence advantages of ``buffer``; see :class:`Estimator`."""
        ctx = D.get_context() if dist is None else dist
        # the kernel runs in the buffer's float dtype, as the buffer's own estimators do
        scores = self.scores(buffer).astype(buffer.float_dtype)
        ids = buffer.field("group_ids")
        options: dict[str, Any] = dict(
            baseline=self.baseline,
            scale=self.scale,
            eps=self.eps,
            ddof=self.ddof,
            singleton=self.singleton,
        )
        if ctx.is_distributed and self.scale == "batch":
            adv, groups = distributed_group_advantages(
                scores, ids, ctx, return_stats=True, **options
            )
        else:
            adv, local = ops.group_advantages(scores, group_ids=ids, return_stats=True, **options)
            groups = global_group_stats(local, ctx)
        buffer.set_advantages(adv, estimator=self.name)
        return AdvantageStats.of(buffer, ctx, groups)


@dataclass(frozen=True, kw_only=True)
class ReinforcePPBaseline(RewardKL):
    """REINFORCE++-baseline: the group-mean-centred score on the last valid token (plus the
    buffer's per-token ``rewards`` when held), −β·KL_t on every token, discounted returns,
    whitened over the batch's valid tokens. With β = 0, γ = 1 and no ``rewards`` field every
    token of a sequence would get the same value, so the buffer keeps one per sequence.

    Attributes:
        gamma: discount γ in [0, 1] of the per-token returns.
        whiten_eps: ε inside the square root of the whitening.
    """

    name: ClassVar[str] = "reinforce++_baseline"
    gamma: float = 1.0
    whiten_eps: float = 1e-8

    def compute(self, buffer: RolloutBuffer, dist: D.DistContext | None = None) -> AdvantageStats:
        """Advantages (and returns, per token) of ``buffer``; see :class:`Estimator`."""
        ctx = D.get_context() if dist is None else dist
        out = buffer.compute_advantages(
            "reinforce++_baseline",
            gamma=self.gamma,
            kl_coef=self.kl_coef,
            kl_estimator=self.kl_estimator,
            kl_clamp=self.kl_clamp,
            whiten="none" if ctx.is_distributed else "token",
            whiten_eps=self.whiten_eps,
        )
        if ctx.is_distributed:
            whiten_advantages(buffer, ctx, eps=self.whiten_eps)
        local = ops.GroupStats(
            *(int(out[k]) for k in ("num_groups", "num_nan", "num_singleton", "num_zero_std"))
        )
        return AdvantageStats.of(buffer, ctx, global_group_stats(local, ctx))
