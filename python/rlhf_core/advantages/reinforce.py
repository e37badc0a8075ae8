"""REINFORCE++ (Hu 2025, OpenRLHF ``reinforce``): no critic, no groups.

Per-token rewards ``r_t = −β·KL_t`` plus the score on the last valid token; the advantage of a
token is its discounted reward-to-go ``G_t = r_t + γ·G_{t+1}``, whitened over the batch's valid
tokens. Works with one sample per prompt. With several processes the whitening uses the
moments of every rank's tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from rlhf_core import parallel as D
from rlhf_core.advantages.base import AdvantageStats, RewardKL
from rlhf_core.advantages.distributed import whiten_advantages

if TYPE_CHECKING:
    from rlhf_core.buffer import RolloutBuffer

__all__ = ["ReinforcePP"]


@dataclass(frozen=True, kw_only=True)
class ReinforcePP(RewardKL):
    """REINFORCE++ advantages: whitened discounted returns of the KL-shaped rewards.

    Attributes:
        gamma: discount γ in [0, 1] of the per-token returns.
        whiten_eps: ε inside the square root of the whitening.
    """

    name: ClassVar[str] = "reinforce++"
    gamma: float = 1.0
    whiten_eps: float = 1e-8

    def compute(self, buffer: RolloutBuffer, dist: D.DistContext | None = None) -> AdvantageStats:
        """Per-token advantages and returns of ``buffer``; see :class:`Estimator`."""
        ctx = D.get_context() if dist is None else dist
        buffer.compute_advantages(
            "reinforce++",
            gamma=self.gamma,
            kl_coef=self.kl_coef,
            kl_estimator=self.kl_estimator,
            kl_clamp=self.kl_clamp,
            whiten="none" if ctx.is_distributed else "token",
            whiten_eps=self.whiten_eps,
        )
        if ctx.is_distributed:
            whiten_advantages(buffer, ctx, eps=self.whiten_eps)
        return AdvantageStats.of(buffer, ctx)
