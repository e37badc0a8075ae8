"""PPO with a value model (InstructGPT-style RLHF).

Per step: sample completions; score them (a frozen reward model and/or reward functions);
compute the rollout policy's and the frozen reference's logprobs and the value model's values;
build KL-shaped per-token rewards ``r_t = −β·KL_t (+ score on the last token)``, GAE
advantages and returns in the buffer (Rust kernels),
whitened over the batch's tokens; then ``ppo_epochs`` passes of shuffled minibatches, each one
optimizer step of the policy (clipped surrogate) and of the value model (clipped value loss,
weighted by ``vf_coef``). β is fixed or follows the adaptive controller of Ziegler et al. 2019
(``kl_target``).

Unscorable completions (a reward function returned None) get score 0 in the shaped reward and
are left out of the loss.

What is PPO's here: the value model (its no-grad values in the rollout, its clipped value
loss added to the policy's, its own AdamW and schedule), the KL controller, and the GAE
estimator (:class:`rlhf_core.advantages.GAE`); the rest is the
:class:`~rlhf_core.trainers.policy_gradient.PolicyGradientTrainer`.

Several processes: the value model is wrapped like the policy (DDP or FSDP2) and one
backward of the summed loss synchronises both; GAE is per sequence (local), the token
whitening of the advantages uses the moments of every rank's tokens, and the adaptive KL
controller sees the global KL of the global batch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from rlhf_core import losses as L
from rlhf_core.advantages import GAE
from rlhf_core.errors import check_field
from rlhf_core.rollout import gather
from rlhf_core.trainers.config import RLConfig
from rlhf_core.trainers.policy_gradient import PolicyGradientTrainer
from rlhf_core.trainers.sampling import RewardSource

log = logging.getLogger("rlhf_core.trainers")

__all__ = ["PPOConfig", "PPOTrainer", "FixedKLController", "AdaptiveKLController"]


class FixedKLController:
    """A constant KL coefficient β."""

    def __init__(self, value: float) -> None:
        self.value = float(value)

    def update(self, kl: float, n_samples: int) -> None:
        """Nothing changes."""

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Adaptive β (Ziegler et al. 2019, as in verl and OpenRLHF):
    ``β ← β · (1 + clip(KL / target − 1, −0.2, 0.2) · n / horizon)`` after each batch of
    ``n`` samples whose mean KL to the reference (nats per sequence) was ``KL``."""

    def __init__(self, value: float, target: float, horizon: int) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target={target} and horizon={horizon} must be > 0")
        self.value = float(value)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, kl: float, n_samples: int) -> None:
        error = float(np.clip(kl / self.target - 1.0, -0.2, 0.2))
        self.value *= 1.0 + error * n_samples / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.value = float(state["value"])


@dataclass
class PPOConfig(RLConfig):
    """Config of :class:`PPOTrainer`."""

    ppo_epochs: int = field(default=4, metadata={"help": "passes over each rollout batch"})
    kl_coef: float = field(default=0.05, metadata={"help": "β (initial β when adaptive), >= 0"})
    kl_estimator: str = field(
        default="k1", metadata={"help": f"KL estimator, one of {', '.join(L.KL_ESTIMATORS)}"}
    )
    kl_in_reward: bool = field(
        default=True,
        metadata={"help": "KL as a per-token reward penalty (true) or a loss term (false)"},
    )
    kl_target: float | None = field(
        default=None,
        metadata={"help": "adaptive β: target KL in nats per sequence; none = fixed β"},
    )
    kl_horizon: int = field(
        default=10000, metadata={"help": "adaptive β: horizon in samples (Ziegler et al.)"}
    )
    gamma: float = field(default=1.0, metadata={"help": "GAE discount γ"})
    lam: float = field(default=0.95, metadata={"help": "GAE λ"})
    whiten_advantages: bool = field(
        default=True, metadata={"help": "whiten advantages over the batch's response tokens"}
    )
    vf_coef: float = field(default=0.1, metadata={"help": "weight of the value loss"})
    value_clip: float | None = field(
        default=0.2, metadata={"help": "clip range of the value loss; none = unclipped"}
    )
    value_learning_rate: float | None = field(
        default=None, metadata={"help": "value-model learning rate; none = learning_rate"}
    )
    value_init: str = field(
        default="reward_model",
        metadata={
            "help": "initialise the value model from the reward model ('reward_model', when "
            "one is among the reward sources; an ensemble's first member) or from the policy "
            "('policy')"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_field(
            self.kl_target is None or self.kl_target > 0,
            "kl_target",
            self.kl_target,
            "expected > 0 nats per sequence (e.g. 6.0) or none for a fixed β",
        )
        check_field(self.kl_horizon >= 1, "kl_horizon", self.kl_horizon, "expected >= 1")
        check_field(0 <= self.gamma <= 1, "gamma", self.gamma, "expected in [0, 1]")
        check_field(0 <= self.lam <= 1, "lam", self.lam, "expected in [0, 1]")
        check_field(self.vf_coef >= 0, "vf_coef", self.vf_coef, "expected >= 0 (e.g. 0.1)")
        check_field(
            self.value_clip is None or self.value_clip > 0,
            "value_clip",
            self.value_clip,
            "expected > 0 (e.g. 0.2) or none",
        )
        check_field(
            self.value_learning_rate is None or self.value_learning_rate >= 0,
            "value_learning_rate",
            self.value_learning_rate,
            "expected >= 0 or none",
        )
        check_field(
            self.value_init in ("reward_model", "policy"),
            "value_init",
            self.value_init,
            "expected 'reward_model' or 'policy'",
        )


def _reward_model_of(source: Any) -> Any:
    """The reward model a value model can start from: a ``RewardModel`` itself, a reward
    ensemble's first member, or either inside a ``RewardModelScorer``; None otherwise."""
    from rlhf_core.models import RewardModel
    from rlhf_core.rewards import RewardModelScorer

    if isinstance(source, RewardModelScorer):
        source = source.reward_model
    if isinstance(source, RewardModel):
        return source
    if isinstance(source, nn.Module) and getattr(source, "num_members", None) is not None:
        member: nn.Module = source.member(0)  # type: ignore[operator]
        return member
    return None


class PPOTrainer(PolicyGradientTrainer):
    """PPO with a value model, GAE and a KL penalty to a frozen reference.

    Args:
        config: :class:`PPOConfig`.
        policy, tokenizer, prompts, reward_funcs, reference: as
            :class:`~rlhf_core.trainers.policy_gradient.PolicyGradientTrainer`.
        value_model: a :class:`rlhf_core.models.ValueModel`; default: a copy of the first
            reward model among ``reward_funcs`` that reads the policy's tokenizer
            (``value_init="reward_model"``) or of the policy's body with a fresh head.
        eval_dataset, callbacks: as :class:`~rlhf_core.trainers.sampling.RolloutTrainer`.
        reward_processing_classes: the reward sources' tokenizers, as
            :class:`~rlhf_core.trainers.sampling.RolloutTrainer`.
    """

    name = "ppo"
    config: PPOConfig
    drop_unscorable = True  # the value loss must not learn from a reward that does not exist

    def __init__(
        self,
        config: PPOConfig,
        policy: nn.Module,
        tokenizer: Any,
        prompts: Any,
        reward_funcs: RewardSource | Sequence[RewardSource],
        *,
        value_model: nn.Module | None = None,
        reference: nn.Module | None = None,
        eval_dataset: Any = None,
        callbacks: Sequence[Any] | None = None,
        reward_processing_classes: Any = None,
    ) -> None:
        from rlhf_core.models import ValueModel, same_tokenizer

        if value_model is None:
            # from the models as passed, before the base class wraps (or shards) them
            items = reward_funcs if isinstance(reward_funcs, Sequence) else [reward_funcs]
            toks = reward_processing_classes
            if toks is None or not isinstance(toks, (list, tuple)):
                toks = [toks] * len(items)
            # a reward model (an ensemble's first member, a scorer's model) that reads the
            # policy's tokens
            rms = [
                m for m, t in zip(map(_reward_model_of, items), toks, strict=False)
                if m is not None and (t is None or same_tokenizer(t, tokenizer))
            ]  # fmt: skip
            if config.value_init == "reward_model" and rms:
                value_model = ValueModel.from_reward_model(rms[0])
            else:
                if config.value_init == "reward_model" and any(
                    _reward_model_of(r) is not None for r in items
                ):
                    log.warning("ppo: the reward model reads another tokenizer than the "
                                "policy's, so the value model starts from the policy")  # fmt: skip
                value_model = ValueModel.from_policy(policy, seed=config.seed)
        gae = GAE(
            gamma=config.gamma,
            lam=config.lam,
            kl_estimator=config.kl_estimator,
            kl_clamp=config.kl_clamp,
            whiten=config.whiten_advantages,
        )
        super().__init__(config, policy, tokenizer, prompts, reward_funcs, estimator=gae,
                         reference=reference, eval_dataset=eval_dataset,
                         callbacks=callbacks,
                         reward_processing_classes=reward_processing_classes)  # fmt: skip
        self.value_model = self.wrap_trained(value_model)
        self.add_trained("value", self.value_model, lr=config.value_learning_rate)
        self.collector.value_model = self.value_model  # its values go into every rollout
        self.kl_ctl: FixedKLController | AdaptiveKLController = (
            FixedKLController(config.kl_coef)
            if config.kl_target is None
            else AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
        )
        self.add_state("kl_ctl", self.kl_ctl)

    @property
    def kl_coef(self) -> float:
        return self.kl_ctl.value

    def train_step(self, step: int) -> dict[str, float]:
        beta = self.kl_ctl.value
        metrics = super().train_step(step)
        values = gather(self.buffer.field("values").astype(np.float64), self.dist)
        returns = gather(self.buffer.field("returns").astype(np.float64), self.dist)
        metrics["explained_variance"] = L.explained_variance(
            torch.from_numpy(values), torch.from_numpy(returns)
        )
        # metrics["kl"] is the KL of the global rollout and rollout_batch_size its size, so
        # every rank moves β the same way
        if "kl" in metrics:  # no reference (kl_coef 0, track_kl off): β stays 0
            self.kl_ctl.update(float(metrics["kl"]), self.config.rollout_batch_size)
        metrics["kl_coef"] = beta
        return metrics

    def loss(self, micro: Mapping[str, torch.Tensor], n_tok: int, n_seq: int) -> L.LossOutput:
        """The policy's loss plus ``vf_coef`` × the clipped value loss."""
        cfg = self.config
        out = super().loss(micro, n_tok, n_seq)
        with self.autocast():
            v = self.value_model(micro["input_ids"], micro["attention_mask"])[:, :-1]  # (B, T-1)
        vl = L.value_loss(
            v,
            micro["values"],
            micro["returns"],
            micro["response_mask"],
            clip_range=cfg.value_clip,
            aggregation=cfg.aggregation,
            num_tokens=n_tok,
            num_seqs=n_seq,
            max_len=cfg.max_new_tokens,
        )
        return L.LossOutput(out.loss + cfg.vf_coef * vl.loss, {**out.metrics, **vl.metrics})
