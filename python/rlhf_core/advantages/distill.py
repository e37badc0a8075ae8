"""On-policy distillation: a teacher's per-token reverse KL to the student, on the student's
own samples, as a per-token advantage.

On a completion sampled from the student π, with the teacher's log-probabilities of the same
tokens, the per-token reverse KL estimate is D_t = log π(y_t) − log π_teacher(y_t) (k1, from
the rollout's log-probabilities, no gradient). Its negative is an undiscounted per-token
advantage: E[−D_t·∇log π(y_t)] is the gradient of −KL(π ‖ π_teacher) at that token, so the
policy loss pulls the student towards the teacher where the student actually goes::

    A_t = A_task,t − λ·clamp(D_t, ±c)

with A_task the advantage of the trainer's own estimator (GRPO's, broadcast over the tokens;
zero when there is no task reward) and λ the coefficient. This is slime's
``apply_opd_kl_to_advantages`` (``--use-opd``, ``--opd-kl-coef`` 1.0: added after the base
estimator) and verl's distillation with ``use_policy_gradient: true`` (advantages −sg(D_t), k1,
clamped at ±10); λ·D_t mixed with task advantages is slime's and verl's
``use_task_rewards``. The teacher's log-probabilities come from a frozen forward of the teacher
under ``torch.inference_mode`` over the rollout (:class:`rlhf_core.rollout.RolloutCollector`,
buffer field ``teacher_logprobs``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from rlhf_core import ops
from rlhf_core import parallel as D
from rlhf_core.advantages.base import AdvantageStats, Estimator

if TYPE_CHECKING:
    from rlhf_core.buffer import RolloutBuffer

__all__ = ["TeacherKL", "teacher_reverse_kl"]


def teacher_reverse_kl(buffer: RolloutBuffer, *, clamp: float | None = 10.0) -> np.ndarray:
    """float64 (num_response_tokens,): D_t = log π − log π_teacher of every response token
    (:func:`rlhf_core.ops.kl` k1, clamped to ±``clamp``), from the buffer's ``logprobs`` and
    ``teacher_logprobs``."""
    if "teacher_logprobs" not in buffer.token_fields:
        raise ValueError(
            "the buffer holds no 'teacher_logprobs' field: on-policy distillation needs the "
            "teacher's log-probabilities of the sampled tokens (pass teacher_model= to the "
            "trainer)"
        )
    out: np.ndarray = ops.kl(
        buffer.field("logprobs").astype(np.float64),
        buffer.field("teacher_logprobs").astype(np.float64),
        estimator="k1",
        clamp=clamp,
    )
    return out


@dataclass(frozen=True, kw_only=True)
class TeacherKL:
    """The base estimator's advantages minus λ·D_t per token (see the module).

    Attributes:
        base: the task estimator (e.g. :class:`GroupRelative`); None = distillation alone
            (A_t = −λ·D_t).
        coef: λ ≥ 0, the weight of the teacher term (slime's ``--opd-kl-coef``, 1.0).
        clamp: clamp D_t to ±this (verl: 10); None = off.
    """

    name: ClassVar[str] = "teacher_kl"
    base: Estimator | None = None
    coef: float = 1.0
    clamp: float | None = 10.0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.coef) and self.coef >= 0):
            raise ValueError(f"teacher_kl_coef={self.coef}: expected a finite value >= 0")
        if self.clamp is not None and not self.clamp > 0:
            raise ValueError(f"teacher_kl_clamp={self.clamp}: expected > 0 (e.g. 10) or None")

    @property
    def kl_coef(self) -> float:
        return 0.0 if self.base is None else self.base.kl_coef

    def with_kl_coef(self, kl_coef: float) -> TeacherKL:
        """β goes to the base estimator (the KL to the reference, not to the teacher)."""
        if self.base is None:
            return self
        return dataclasses.replace(self, base=self.base.with_kl_coef(kl_coef))

    def compute(self, buffer: RolloutBuffer, dist: D.DistContext | None = None) -> AdvantageStats:
        """Per-token advantages A_task − λ·D_t into ``buffer``; see :class:`Estimator`."""
        ctx = D.get_context() if dist is None else dist
        groups = None
        offsets = buffer.offsets("response")
        lengths = np.diff(offsets)
        if self.base is None:
            task = np.zeros(buffer.num_response_tokens, dtype=np.float64)
        else:
            groups = self.base.compute(buffer, ctx).groups
            adv = buffer.field("advantages").astype(np.float64)
            info = buffer.advantages_info or {}
            task = np.repeat(adv, lengths) if info.get("level") == "sequence" else adv
        combined = task - self.coef * teacher_reverse_kl(buffer, clamp=self.clamp)
        returns = None
        if self.base is not None and (buffer.advantages_info or {}).get("has_returns"):
            returns = buffer.field("returns")
        buffer.set_advantages(
            combined.astype(buffer.float_dtype),
            returns=returns if returns is None else np.asarray(returns),
            estimator=self.name,
        )
        return AdvantageStats.of(buffer, ctx, groups)
