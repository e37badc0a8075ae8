"""GRPO and its relatives: Dr.GRPO, DAPO options, RLOO and REINFORCE++.

No value model. Each prompt gets G = ``num_samples`` completions; the advantage of a completion
comes from its score relative to the others of its group (Rust kernels through the buffer):

=========================  ==============================================================
``estimator``              advantage
=========================  ==============================================================
``grpo``                   (r − mean_group) / (std_group + ε) with ``scale_rewards="group"``
                           (DeepSeekMath), / (std_batch + ε) with ``"batch"``, no division
                           with ``"none"`` (Dr.GRPO)
``rloo``                   r − mean of the other G−1 samples (leave-one-out, Ahmadian et al.
                           2024); scaled like ``grpo`` when ``scale_rewards`` is not "none"
``reinforce++``            discounted per-token return of the KL-shaped rewards, whitened
                           over the batch (Hu 2025; works with G = 1)
``reinforce++_baseline``   r − mean_group, then whitened over the batch's tokens
=========================  ==============================================================

The loss is the clipped surrogate with asymmetric clip (``clip_low``, ``clip_high``; DAPO uses
0.2 / 0.28), aggregated by ``loss_type``:

- ``grpo``: ``seq-mean-token-mean`` (the GRPO paper),
- ``dr_grpo``: ``seq-mean-token-sum-norm`` with L = ``max_new_tokens``, and by default no
  std scaling of advantages (Liu et al. 2025),
- ``dapo``: ``token-mean`` over the batch's tokens (Yu et al. 2025; TRL's default),

or directly by ``aggregation``. The KL to the reference goes into the loss with β =
``kl_coef`` and the k3 estimator (GRPO's choice), or into the reward (``kl_in_reward``, the
RLOO / REINFORCE++ choice). ``mask_truncated`` drops completions that hit ``max_new_tokens``
from the loss (DAPO's overlong filtering). Groups whose rewards are all equal get zero
advantage; their fraction is logged as ``frac_zero_std_groups``.

The advantages come from :mod:`rlhf_core.advantages` (:func:`estimator_from_config` maps the
config onto an estimator), which also holds their several-process path: a prompt's group is
sampled and held on one rank, so ``scale_rewards="group"`` / ``"none"`` advantages are
computed locally, bit for bit as in one process; ``"batch"`` gathers one score per sequence;
the reinforce++ estimators whiten with the moments of every rank's tokens; the logged advantage
statistics are global.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from rlhf_core import losses as L
from rlhf_core.advantages import (
    Estimator,
    GroupRelative,
    ReinforcePP,
    ReinforcePPBaseline,
)
from rlhf_core.errors import check_field
from rlhf_core.trainers.config import RLConfig
from rlhf_core.trainers.policy_gradient import PolicyGradientTrainer
from rlhf_core.trainers.sampling import RewardSource

__all__ = [
    "GRPOConfig",
    "GRPOTrainer",
    "RLOOConfig",
    "RLOOTrainer",
    "ReinforcePPConfig",
    "ReinforcePPTrainer",
    "ESTIMATORS",
    "LOSS_TYPES",
    "estimator_from_config",
]

ESTIMATORS = ("grpo", "rloo", "reinforce++", "reinforce++_baseline")
GROUP_ESTIMATORS = ("grpo", "rloo", "reinforce++_baseline")
LOSS_TYPES = {
    "grpo": "seq-mean-token-mean",
    "dr_grpo": "seq-mean-token-sum-norm",
    "dapo": "token-mean",
    "cispo": "token-mean",
    "sapo": "seq-mean-token-mean",
}
#: the loss types whose objective is not the clipped surrogate (TRL's names)
OBJECTIVES = {"cispo": "cispo", "sapo": "sapo"}
SCALES = ("group", "batch", "none")


@dataclass
class GRPOConfig(RLConfig):
    """Config of :class:`GRPOTrainer`. ``num_samples`` is the group size G."""

    num_samples: int = field(default=4, metadata={"help": "G: completions per prompt (>= 2)"})
    rollout_batch_size: int = field(
        default=32,
        metadata={"help": "completions per step; a multiple of num_samples (prompts × G)"},
    )
    estimator: str = field(
        default="grpo", metadata={"help": f"advantage estimator, one of {', '.join(ESTIMATORS)}"}
    )
    loss_type: str = field(
        default="grpo",
        metadata={
            "help": "grpo (seq-mean-token-mean), dr_grpo (seq-mean-token-sum-norm, no std "
            "scaling), dapo (token-mean): the clipped surrogate; cispo (clipped detached "
            "ratio on a REINFORCE term, token-mean), sapo (soft gate, seq-mean-token-mean); "
            "sets aggregation / scale_rewards left at 'auto'"
        },
    )
    aggregation: str = field(
        default="auto",
        metadata={"help": "loss aggregation ('auto' = from loss_type), or one of the modes"},
    )
    scale_rewards: str = field(
        default="auto",
        metadata={
            "help": "divide group-centred rewards by the group std ('group'), the batch std "
            "('batch') or not ('none'); 'auto' = none for dr_grpo and rloo, else group"
        },
    )
    std_eps: float = field(
        default=1e-4, metadata={"help": "ε added to the std before dividing (TRL: 1e-4)"}
    )
    gamma: float = field(
        default=1.0, metadata={"help": "discount of the reinforce++ per-token returns"}
    )

    def __post_init__(self) -> None:
        check_field(
            self.loss_type in LOSS_TYPES,
            "loss_type",
            self.loss_type,
            f"unknown loss type; expected one of {tuple(LOSS_TYPES)}",
        )
        check_field(
            self.estimator in ESTIMATORS,
            "estimator",
            self.estimator,
            f"unknown advantage estimator; expected one of {ESTIMATORS}",
        )
        if self.aggregation == "auto":
            self.aggregation = LOSS_TYPES[self.loss_type]
        if self.scale_rewards == "auto":
            plain = self.loss_type == "dr_grpo" or self.estimator == "rloo"
            self.scale_rewards = "none" if plain else "group"
        check_field(
            self.scale_rewards in SCALES,
            "scale_rewards",
            self.scale_rewards,
            f"expected one of {SCALES} or 'auto'",
        )
        super().__post_init__()
        if self.estimator in GROUP_ESTIMATORS:
            check_field(
                self.num_samples >= 2,
                "num_samples",
                self.num_samples,
                f"the group size G must be >= 2 for estimator {self.estimator!r} (a group of "
                "one has no baseline); use G >= 2, or estimator 'reinforce++' for G = 1",
            )
        check_field(self.std_eps > 0, "std_eps", self.std_eps, "expected > 0 (e.g. 1e-4)")
        if self.loss_type == "cispo" and self.cispo_ratio_max is None:
            # TRL spells CISPO's cap epsilon_high as an absolute ratio (e.g. 5.0); here
            # clip_high is verl's ε of 1 + ε: refuse what only makes sense the TRL way
            check_field(
                self.clip_high is None or self.clip_high < 1,
                "clip_high",
                self.clip_high,
                "with loss_type='cispo' CISPO's cap is 1 + clip_high (verl's convention); for "
                "TRL's absolute cap (its epsilon_high, e.g. 5.0) set cispo_ratio_max instead",
            )

    @property
    def policy_objective(self) -> str:
        """``"cispo"`` / ``"sapo"`` for those loss types, else ``"ppo"``."""
        return OBJECTIVES.get(self.loss_type, "ppo")
        check_field(0 <= self.gamma <= 1, "gamma", self.gamma, "expected in [0, 1]")


@dataclass
class RLOOConfig(GRPOConfig):
    """Config of :class:`RLOOTrainer`: leave-one-out baseline, KL (k1) in the reward (as in
    TRL's RLOO trainer)."""

    estimator: str = field(
        default="rloo", metadata={"help": f"advantage estimator, one of {', '.join(ESTIMATORS)}"}
    )
    kl_coef: float = field(default=0.05, metadata={"help": "β of the KL penalty (>= 0)"})
    kl_estimator: str = field(
        default="k1", metadata={"help": f"KL estimator, one of {', '.join(L.KL_ESTIMATORS)}"}
    )
    kl_in_reward: bool = field(
        default=True,
        metadata={"help": "KL as a reward penalty (true) or a loss term (false)"},
    )


@dataclass
class ReinforcePPConfig(GRPOConfig):
    """Config of :class:`ReinforcePPTrainer`: REINFORCE++ (per-token discounted returns of the
    KL-shaped reward, whitened over the batch); G = 1 allowed."""

    num_samples: int = field(default=1, metadata={"help": "completions per prompt"})
    estimator: str = field(
        default="reinforce++",
        metadata={"help": f"advantage estimator, one of {', '.join(ESTIMATORS)}"},
    )
    loss_type: str = field(
        default="dapo", metadata={"help": "aggregation preset (dapo = token-mean)"}
    )
    kl_coef: float = field(default=0.01, metadata={"help": "β of the KL penalty (>= 0)"})
    kl_estimator: str = field(
        default="k1", metadata={"help": f"KL estimator, one of {', '.join(L.KL_ESTIMATORS)}"}
    )
    kl_in_reward: bool = field(
        default=True,
        metadata={"help": "KL as a per-token reward penalty (true) or a loss term (false)"},
    )


def estimator_from_config(config: GRPOConfig) -> Estimator:
    """The advantage estimator of a :class:`GRPOConfig` (β = 0: the trainer puts its β in each
    step when ``kl_in_reward``)."""
    kl = dict(kl_estimator=config.kl_estimator, kl_clamp=config.kl_clamp)
    if config.estimator in ("grpo", "rloo"):
        baseline = "mean" if config.estimator == "grpo" else "leave_one_out"
        return GroupRelative(baseline=baseline, scale=config.scale_rewards, eps=config.std_eps,
                             **kl)  # type: ignore[arg-type]  # fmt: skip
    if config.estimator == "reinforce++":
        return ReinforcePP(gamma=config.gamma, **kl)  # type: ignore[arg-type]
    return ReinforcePPBaseline(gamma=config.gamma, **kl)  # type: ignore[arg-type]


class GRPOTrainer(PolicyGradientTrainer):
    """GRPO / Dr.GRPO / DAPO (and, by ``estimator``, RLOO and REINFORCE++): the
    policy-gradient trainer with the estimator of :func:`estimator_from_config`.

    Args: as :class:`~rlhf_core.trainers.policy_gradient.PolicyGradientTrainer` (policy,
    tokenizer, prompts, reward_funcs, reference, eval_dataset, callbacks, teacher_model),
    without ``estimator``.
    """

    name = "grpo"
    config: GRPOConfig

    def __init__(
        self,
        config: GRPOConfig,
        policy: nn.Module,
        tokenizer: Any,
        prompts: Any,
        reward_funcs: RewardSource | Sequence[RewardSource] | None,
        *,
        reference: nn.Module | None = None,
        eval_dataset: Any = None,
        callbacks: Sequence[Any] | None = None,
        reward_processing_classes: Any = None,
        teacher_model: nn.Module | str | None = None,
    ) -> None:
        super().__init__(config, policy, tokenizer, prompts, reward_funcs,
                         estimator=estimator_from_config(config), reference=reference,
                         eval_dataset=eval_dataset, callbacks=callbacks,
                         reward_processing_classes=reward_processing_classes,
                         teacher_model=teacher_model)  # fmt: skip


class RLOOTrainer(GRPOTrainer):
    """RLOO: :class:`GRPOTrainer` with the leave-one-out estimator (see :class:`RLOOConfig`)."""

    name = "rloo"
    config: RLOOConfig


class ReinforcePPTrainer(GRPOTrainer):
    """REINFORCE++: :class:`GRPOTrainer` with the ``reinforce++`` estimator (see
    :class:`ReinforcePPConfig`)."""

    name = "reinforce++"
    config: ReinforcePPConfig
