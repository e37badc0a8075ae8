"""What every estimator is: the :class:`Estimator` protocol, the KL-in-reward options they
share (:class:`RewardKL`) and the summary they return (:class:`AdvantageStats`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from rlhf_core import ops
from rlhf_core.advantages.distributed import advantage_moments

if TYPE_CHECKING:
    from typing_extensions import Self

    from rlhf_core.buffer import RolloutBuffer
    from rlhf_core.parallel import DistContext

__all__ = ["AdvantageStats", "Estimator", "RewardKL"]


@dataclass(frozen=True)
class AdvantageStats:
    """What an estimator stored, summarised over what is trained on (valid tokens, or sequences
    with a valid token for per-sequence advantages) of every rank.

    Attributes:
        mean, std, min, max: of the advantages (std with ddof 0); None when nothing is valid.
        groups: the group counts of a group estimator (every rank's groups), else None.
    """

    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    groups: ops.GroupStats | None = None

    @classmethod
    def of(
        cls,
        buffer: RolloutBuffer,
        dist: DistContext | None = None,
        groups: ops.GroupStats | None = None,
    ) -> AdvantageStats:
        """The summary of ``buffer``'s advantages over every rank (the buffer's own summary for
        one process), with the (already global) ``groups`` counts."""
        moments = advantage_moments(buffer, dist)
        if moments is None:
            return cls(groups=groups)
        mean, std, lo, hi = moments
        return cls(mean=mean, std=std, min=lo, max=hi, groups=groups)

    def metrics(self) -> dict[str, float]:
        """The logged names: ``advantages/{mean,std,min,max}``, and for group estimators
        ``frac_zero_std_groups`` (groups whose scores are all equal: zero advantage) and
        ``num_singleton_groups``."""
        out: dict[str, float] = {}
        if self.mean is not None:
            out["advantages/mean"] = float(self.mean)
            out["advantages/std"] = float(self.std)  # type: ignore[arg-type]
            out["advantages/min"] = float(self.min)  # type: ignore[arg-type]
            out["advantages/max"] = float(self.max)  # type: ignore[arg-type]
        if self.groups is not None:
            out["frac_zero_std_groups"] = float(self.groups.frac_zero_std)
            out["num_singleton_groups"] = float(self.groups.num_singleton)
        return out


@dataclass(frozen=True, kw_only=True)
class RewardKL:
    """The KL penalty an estimator puts into the rewards (KL in the reward, as PPO in verl,
    OpenRLHF and TRL, and TRL's RLOO): ``−kl_coef·KL_t`` on every token (GAE, REINFORCE++), or
    its sum over the sequence subtracted from the score (group estimators).

    Attributes:
        kl_coef: β ≥ 0; 0 = no penalty (the KL may then be a loss term instead).
        kl_estimator: ``k1`` (default), ``k2``, ``k3`` or ``abs`` (:func:`rlhf_core.ops.kl`).
        kl_clamp: clamp each per-token estimate to ±this (OpenRLHF: 10); None = off.
    """

    kl_coef: float = 0.0
    kl_estimator: str = "k1"
    kl_clamp: float | None = 10.0

    def with_kl_coef(self, kl_coef: float) -> Self:
        """The same estimator with β = ``kl_coef`` (e.g. the adaptive β of this step)."""
        return dataclasses.replace(self, kl_coef=float(kl_coef))


@runtime_checkable
class Estimator(Protocol):
    """Computes advantages (and returns) in place in a :class:`rlhf_core.buffer.RolloutBuffer`
    from its fields, over every rank of the process group.

    An estimator is a frozen dataclass of its options (it also carries :class:`RewardKL`'s);
    :meth:`compute` runs the Rust kernels through :meth:`RolloutBuffer.compute_advantages` or
    :mod:`rlhf_core.ops` and stores the result with :meth:`RolloutBuffer.set_advantages`; with
    several processes it reduces what spans the batch itself
    (:mod:`rlhf_core.advantages.distributed`), so a trainer never branches on the world size.
    A new estimator is a new module of this package implementing this protocol.
    """

    @property
    def name(self) -> str:
        """The tag stored with the advantages (``buffer.advantages_info["estimator"]``)."""
        ...

    @property
    def kl_coef(self) -> float:
        """β of the KL penalty put into the rewards (0 = none)."""
        ...

    def with_kl_coef(self, kl_coef: float) -> Estimator:
        """The same estimator with another β."""
        ...

    def compute(self, buffer: RolloutBuffer, dist: DistContext | None = None) -> AdvantageStats:
        """Store the advantages of ``buffer``'s sequences (``dist``: the process group, None =
        :func:`rlhf_core.parallel.get_context`) and return their summary."""
        ...
