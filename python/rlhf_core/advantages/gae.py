"""Generalised advantage estimation (PPO with a value model).

Per-token rewards ``r_t = −β·KL_t`` plus the score on the last valid token (or the buffer's
``rewards`` field when it holds one); ``δ_t = r_t + γ·V_{t+1} − V_t``,
``A_t = δ_t + γλ·A_{t+1}``, returns ``A + V``; then the advantages are whitened over the
batch's valid tokens (verl's and OpenRLHF's PPO). The recurrences are the Rust kernels of
:meth:`rlhf_core.buffer.RolloutBuffer.compute_advantages` (``docs/kernels.md`` gives the
conventions and the anchor each matches). With several processes the whitening uses the
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

__all__ = ["GAE"]


@dataclass(frozen=True, kw_only=True)
class GAE(RewardKL):
    """GAE over the buffer's ``values`` (float (T,) per response token, the value of the state
    before each token), with the KL penalty of :class:`RewardKL` in the rewards.

    Attributes:
        gamma: discount γ in [0, 1].
        lam: λ in [0, 1].
        masked: what ``loss_mask``-ed tokens inside a response are: ``"skip"`` (verl: the
            recurrence carries across them) or ``"zero"`` (OpenRLHF: zero-reward steps).
        whiten: whiten the advantages over the valid tokens of the batch (unbiased variance).
        whiten_eps: ε inside the square root of the whitening.
    """

    name: ClassVar[str] = "gae"
    gamma: float = 1.0
    lam: float = 0.95
    masked: str = "skip"
    whiten: bool = True
    whiten_eps: float = 1e-8

    def compute(self, buffer: RolloutBuffer, dist: D.DistContext | None = None) -> AdvantageStats:
        """Per-token advantages and returns of ``buffer``; see :class:`Estimator`."""
        ctx = D.get_context() if dist is None else dist
        local_whiten = self.whiten and not ctx.is_distributed
        buffer.compute_advantages(
            "gae",
            gamma=self.gamma,
            lam=self.lam,
            masked=self.masked,
            kl_coef=self.kl_coef,
            kl_estimator=self.kl_estimator,
            kl_clamp=self.kl_clamp,
            whiten="token" if local_whiten else "none",
            whiten_eps=self.whiten_eps,
        )
        if self.whiten and ctx.is_distributed:
            whiten_advantages(buffer, ctx, eps=self.whiten_eps)
        return AdvantageStats.of(buffer, ctx)
