"""The base of the trainers that sample from their policy (best-of-N, the policy-gradient
trainers): it builds the frozen reference, the reward sources and a
:class:`rlhf_core.rollout.RolloutCollector`, and collects one step's rollout."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch import nn

from rlhf_core.rollout import Rollout, RolloutCollector, prompt_table
from rlhf_core.trainers.config import RolloutConfig
from rlhf_core.trainers.loop import Trainer
from rlhf_core.trainers.optim import step_seed

__all__ = ["RewardSource", "RolloutTrainer"]

RewardSource = Callable[..., Any] | nn.Module


class RolloutTrainer(Trainer):
    """A trainer that samples from its policy: prompts, reward sources, the frozen reference,
    and ``self.collector`` (:class:`rlhf_core.rollout.RolloutCollector`) for generation,
    scoring and the no-grad forwards.

    Args:
        config: a :class:`~rlhf_core.trainers.config.RolloutConfig` subclass.
        policy: an HF causal LM (trained in place; moved to the config's device).
        tokenizer: its tokenizer (pad and EOS tokens).
        prompts: a :class:`rlhf_core.data.PromptDataset`, strings, or mappings with
            ``prompt`` plus extra columns handed to reward functions (e.g. ``answer``).
        reward_funcs: one reward source or a list: functions
            ``fn(prompts, completions, **columns) -> list[float | None]`` and/or
            :class:`rlhf_core.models.RewardModel` / :class:`rlhf_core.models.RewardEnsemble`
            instances or :class:`rlhf_core.rewards.RewardModelScorer` objects (frozen; scored
            on token ids), weighted by ``config.reward_weights``
            (:func:`rlhf_core.rewards.combine_rewards`; weight 0 = logged, not optimised).
        reference: the frozen reference; default :func:`rlhf_core.models.make_reference` of
            ``policy`` as passed (so pass the same starting policy when resuming).
    """

    config: RolloutConfig

    def __init__(
        self,
        config: RolloutConfig,
        policy: nn.Module,
        tokenizer: Any,
        prompts: Any,
        reward_funcs: RewardSource | Sequence[RewardSource],
        *,
        reference: nn.Module | None = None,
    ) -> None:
        from rlhf_core.models import make_reference

        super().__init__(config)
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer has no pad token; set tokenizer.pad_token first")
        texts, columns = prompt_table(prompts)
        w = self.world_size
        if config.prompts_per_step % w:
            raise ValueError(
                f"rollout_batch_size={config.rollout_batch_size} with num_samples="
                f"{config.num_samples} gives {config.prompts_per_step} prompts per step, which "
                f"the {w} processes cannot share equally: use a rollout_batch_size that is a "
                f"multiple of num_samples × {w} = {config.num_samples * w}"
            )
        self.reward_sources = self._reward_sources(reward_funcs)
        policy = self.apply_lora(policy)
        # the reference is a copy of the policy as passed, made before the policy is wrapped
        self.reference = self.wrap_frozen(
            reference if reference is not None else make_reference(policy)
        )
        self.reference.eval()
        self.policy = self.wrap_trained(policy)
        # every rank draws the same global prompts (same seed) and keeps its shard
        self.setup_optimization(self.policy, len(texts))
        self.collector = RolloutCollector(
            config,
            policy=self.policy,
            reference=self.reference,
            tokenizer=tokenizer,
            prompt_texts=texts,
            prompt_columns=columns,
            reward_sources=self.reward_sources,
            dist=self.dist,
            device=self.device,
            autocast=self.autocast,
            lockstep=self.lockstep_forwards,
            step_seed=step_seed,
        )

    def _reward_sources(
        self, reward_funcs: RewardSource | Sequence[RewardSource]
    ) -> list[Callable[..., Any]]:
        """Reward functions as given; reward models frozen, placed like the other frozen models
        and wrapped as :class:`rlhf_core.rewards.RewardModelScorer` (a reward ensemble as a
        :class:`rlhf_core.reward_ensemble.RewardEnsembleScorer` reduced by
        ``config.ensemble_reduce``); a scorer given ready-made (e.g. a check model named
        ``"check_model"``) has its model frozen and placed the same way."""
        from rlhf_core.reward_ensemble import RewardEnsembleScorer
        from rlhf_core.rewards import RewardModelScorer

        items = (
            [reward_funcs]
            if callable(reward_funcs) or isinstance(reward_funcs, nn.Module)
            else list(reward_funcs)
        )
        if not items:
            raise ValueError("reward_funcs is empty: give at least one reward function or model")
        out: list[Callable[..., Any]] = []
        cfg = self.config
        for i, src in enumerate(items):
            if isinstance(src, nn.Module) and getattr(src, "num_members", None) is not None:
                src.to(self.device).eval().requires_grad_(False)
                out.append(
                    RewardEnsembleScorer(
                        self.wrap_frozen(src),
                        self.tokenizer,
                        reduce=cfg.ensemble_reduce,
                        lam=cfg.ensemble_lambda,
                    )
                )
            elif isinstance(src, nn.Module):
                src.to(self.device).eval().requires_grad_(False)
                out.append(RewardModelScorer(self.wrap_frozen(src), self.tokenizer))
            elif isinstance(src, RewardModelScorer):
                model = src.reward_model
                model.to(self.device).eval().requires_grad_(False)
                src.reward_model = self.wrap_frozen(model)
                out.append(src)
            elif callable(src):
                out.append(src)
            else:
                raise TypeError(
                    f"reward_funcs[{i}] is a {type(src).__name__}; expected a reward function "
                    "or a RewardModel"
                )
        w = self.config.reward_weights
        if w is not None and len(w) != len(out):
            raise ValueError(
                f"reward_weights={w} has {len(w)} entries but there are {len(out)} reward "
                "sources: give one weight per reward function / model"
            )
        return out

    def collect(self, step: int, *, forward: bool = True) -> Rollout:
        """The step's rollout: its prompts (the same global draw on every rank) sampled,
        scored and checked, and with ``forward`` the no-grad logprobs (and values)."""
        with self.timer.phase("generation"):
            roll = self.collector.sample(step, self.sampler.next(self.config.prompts_per_step))
        with self.timer.phase("scoring"):
            self.collector.score(roll)
            self.check_scores(roll)
            if forward:
                self.collector.forward(roll)
        return roll

    def check_scores(self, roll: Rollout) -> None:
        """None / NaN means unscorable and is fine; an infinite reward is a bug upstream: stop
        with :class:`rlhf_core.monitor.NonFiniteError` and save the rollout. With several
        processes every rank checks, so that all stop when one finds an infinity."""
        infinite = bool(np.isinf(roll.scores).any())
        if not (infinite or self.dist.is_distributed):
            return
        if not infinite:
            self.check_finite({}, None)
            return
        parts = {
            f"reward/{k}": np.nan_to_num(v, nan=0.0, posinf=np.inf, neginf=-np.inf)
            for k, v in roll.score_parts.items()
        }
        batch = {"prompt_ids": roll.prompt_ids, "response_ids": roll.response_ids,
                 "completions": roll.texts}  # fmt: skip
        self.check_finite(parts, batch)
