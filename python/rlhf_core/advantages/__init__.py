"""The estimator layer: advantages from a :class:`rlhf_core.buffer.RolloutBuffer`.

Between the kernels (the Rust core and :mod:`rlhf_core.ops`) and the losses
(:mod:`rlhf_core.losses`), as torchrl's value estimators sit between its functional layer and
its objectives. An estimator is a frozen dataclass of typed options with one method,
``compute(buffer, dist) -> AdvantageStats``: it runs the kernels over the buffer's ragged
fields, stores the advantages (and returns) in the buffer, reduces what spans the batch over
every rank when there are several processes, and returns the summary the trainers log.

=================================  ======================  ========================
estimator                          module                  trainer preset
=================================  ======================  ========================
:class:`GAE`                       :mod:`.gae`             PPO
:class:`GroupRelative` (GRPO,      :mod:`.group`           GRPO, Dr.GRPO, RLOO
Dr.GRPO, RLOO)
:class:`ReinforcePPBaseline`       :mod:`.group`           ``reinforce++_baseline``
:class:`ReinforcePP`               :mod:`.reinforce`       REINFORCE++
:class:`TeacherKL` (on-policy      :mod:`.distill`         any, with a
distillation: −λ·KL to a teacher                           ``teacher_model``
per token, on top of a base)
=================================  ======================  ========================

:mod:`.token_masks` chooses per-token selections over a whole minibatch (every rank): the
top-entropy tokens and the Clip-Cov / KL-Cov tokens of the entropy-aware losses.

:mod:`.distributed` holds the several-process statistics every estimator shares (group
advantages over gathered scores, moments and whitening over ranks, the advantage summary).

A new estimator is a new module here: a frozen dataclass deriving from :class:`RewardKL`
(for the KL-in-reward options) with a ``name`` and a ``compute`` method (the
:class:`Estimator` protocol). Trainers take any estimator; none overrides how advantages are
computed.

Example::

    buf = RolloutBuffer()
    buf.add(prompt_ids=..., response_ids=..., scores=scores, group_ids=group_ids)
    stats = GroupRelative.grpo(eps=1e-4).compute(buf)
    stats.metrics()   # {"advantages/mean": ..., "frac_zero_std_groups": ..., ...}
"""

from __future__ import annotations

from rlhf_core.advantages import token_masks
from rlhf_core.advantages.base import AdvantageStats, Estimator, RewardKL
from rlhf_core.advantages.distill import TeacherKL, teacher_reverse_kl
from rlhf_core.advantages.gae import GAE
from rlhf_core.advantages.group import GroupRelative, ReinforcePPBaseline, sequence_kl
from rlhf_core.advantages.reinforce import ReinforcePP

__all__ = [
    "GAE",
    "AdvantageStats",
    "Estimator",
    "GroupRelative",
    "ReinforcePP",
    "ReinforcePPBaseline",
    "RewardKL",
    "TeacherKL",
    "sequence_kl",
    "teacher_reverse_kl",
    "token_masks",
]
