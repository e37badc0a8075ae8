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

Several processes: the value model is wrapped like the policy (DDP or FSDP2) and one
backward of the summed loss synchronises both; GAE is per sequence (local), the token
whitening of the advantages uses the moments of every rank's tokens, and the adaptive KL
controller sees the global KL of the global batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from rlhf_core import distributed as D
from rlhf_core import losses as L
from rlhf_core.trainers.base import (
    build_optimizer,
    build_scheduler,
    check_field,
    trainable_parameters,
)
from rlhf_core.trainers.grpo import advantage_metrics
from rlhf_core.trainers.on_policy import OnPolicyTrainer, RewardSource, RLConfig, Rollout

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
            "one is among the reward sources) or from the policy ('policy')"
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


class PPOTrainer(OnPolicyTrainer):
    """PPO with a value model, GAE and a KL penalty to a frozen reference.

    Args:
        config: :class:`PPOConfig`.
        policy, tokenizer, prompts, reward_funcs, reference: as
            :class:`~rlhf_core.trainers.on_policy.OnPolicyTrainer`.
        value_model: a :class:`rlhf_core.models.ValueModel`; default: a copy of the first
            reward model among ``reward_funcs`` (``value_init="reward_model"``) or of the
            policy's body with a fresh head.
    """

    name = "ppo"
    config: PPOConfig

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
    ) -> None:
        from rlhf_core.models import RewardModel, ValueModel

        if value_model is None:
            # from the models as passed, before the base class wraps (or shards) them
            items = reward_funcs if isinstance(reward_funcs, Sequence) else [reward_funcs]
            rms = [r for r in items if isinstance(r, RewardModel)]
            if config.value_init == "reward_model" and rms:
                value_model = ValueModel.from_reward_model(rms[0])
            else:
                value_model = ValueModel.from_policy(policy, seed=config.seed)
        super().__init__(config, policy, tokenizer, prompts, reward_funcs, reference=reference)
        self.value_model = self.wrap_trained(value_model)
        self.value_params = trainable_parameters(self.value_model)
        self.value_optimizer = build_optimizer(
            self.value_params, config, lr=config.value_learning_rate
        )
        self.value_scheduler = build_scheduler(self.value_optimizer, config)
        self.kl_ctl: FixedKLController | AdaptiveKLController = (
            FixedKLController(config.kl_coef)
            if config.kl_target is None
            else AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
        )

    # ---- rollout ----------------------------------------------------------------------------
    def rollout_values(self, micro: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        self.value_model.eval()
        try:
            model = D.unwrap_model(self.value_model)  # no grad: no DDP wrapper needed
            v = model(micro["input_ids"], micro["attention_mask"])  # (B, T)
        finally:
            self.value_model.train()
        return v[:, :-1]  # aligned with logprobs: the value of the state before token j+1

    def loss_mask(self, roll: Rollout) -> list[np.ndarray] | None:
        keep = np.isfinite(roll.scores)
        if self.config.mask_truncated:
            keep &= ~roll.truncated
        if keep.all():
            return None
        return [np.full(len(r), bool(k)) for r, k in zip(roll.response_ids, keep, strict=True)]

    def extra_buffer_fields(self, roll: Rollout) -> dict[str, Any]:
        return {"scores": np.nan_to_num(roll.scores, nan=0.0)}

    def compute_advantages(self, roll: Rollout) -> dict[str, float]:
        """GAE on r_t = −β·KL_t (+ score on the last token), whitened over the tokens (of
        every rank when there are several processes)."""
        cfg = self.config
        several = self.dist.is_distributed
        whiten = "token" if cfg.whiten_advantages else "none"
        stats = self.buffer.compute_advantages(
            "gae",
            gamma=cfg.gamma,
            lam=cfg.lam,
            kl_coef=self.current_kl_coef() if cfg.kl_in_reward else 0.0,
            kl_estimator=cfg.kl_estimator,
            kl_clamp=cfg.kl_clamp,
            whiten="none" if several else whiten,
        )
        if several:
            if cfg.whiten_advantages:
                self.whiten_advantages_globally("gae")
            stats = self.global_advantage_stats(stats)
        out = advantage_metrics(stats)
        out["explained_variance"] = L.explained_variance(
            torch.from_numpy(self.gather(self.buffer.field("values").astype(np.float64))),
            torch.from_numpy(self.gather(self.buffer.field("returns").astype(np.float64))),
        )
        return out

    # ---- update -----------------------------------------------------------------------------
    def loss(self, micro: Mapping[str, torch.Tensor], n_tok: int, n_seq: int) -> L.LossOutput:
        cfg = self.config
        out = self.policy_loss(micro, n_tok, n_seq)
        with self.autocast():
            v = self.value_model(micro["input_ids"], micro["attention_mask"])[:, :-1]
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

    def current_kl_coef(self) -> float:
        return self.kl_ctl.value

    def synced_models(self) -> list[nn.Module]:
        return [self.policy, self.value_model]

    def optimizer_steps(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """Check both models' gradients before stepping either, so a non-finite value
        gradient cannot leave a half-applied update behind."""
        norm = self.clip_and_check(self.params, metrics)
        value_norm = self.clip_and_check(self.value_params, metrics, prefix="value_")
        for opt in (self.optimizer, self.value_optimizer):
            opt.step()
            opt.zero_grad(set_to_none=True)
        return {"grad_norm": norm, "value_grad_norm": value_norm}

    def update(self, step: int) -> dict[str, float]:
        self.value_model.train()
        metrics = super().update(step)
        self.value_scheduler.step()
        return metrics

    def after_update(self, metrics: Mapping[str, float]) -> dict[str, float]:
        # metrics["kl"] is the KL of the global rollout and rollout_batch_size its size, so
        # every rank moves β the same way
        beta = self.kl_ctl.value
        self.kl_ctl.update(float(metrics["kl"]), self.config.rollout_batch_size)
        return {"kl_coef": beta}

    # ---- checkpoint -------------------------------------------------------------------------
    def checkpoint_models(self) -> dict[str, nn.Module]:
        return {"policy": self.policy, "value": self.value_model}

    def checkpoint_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"policy": self.optimizer, "value": self.value_optimizer}

    def checkpoint_schedulers(self) -> dict[str, Any]:
        return {"policy": self.scheduler, "value": self.value_scheduler}

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "kl_ctl": self.kl_ctl.state_dict()}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        super().load_extra_state(state)
        self.kl_ctl.load_state_dict(state["kl_ctl"])
