"""The base of the trainers that sample from their policy (best-of-N, the policy-gradient
trainers): it builds the frozen reference, the reward sources and a
:class:`rlhf_core.rollout.RolloutCollector`, and collects one step's rollout."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch import nn

from rlhf_core.rewards import RewardModelScorer, TrainerState, check_reward_signature
from rlhf_core.rollout import Rollout, RolloutCollector, prompt_rows
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
        prompts: a :class:`rlhf_core.data.PromptDataset`, strings, or rows with ``prompt``
            plus extra columns handed to reward functions (e.g. ``answer``): mappings or a
            ``datasets.Dataset``; a conversational prompt (a list of messages) is rendered
            with ``tokenizer``'s chat template (``config.chat_template_kwargs``, the row's
            ``tools``), anything else that is not text is an error naming the row.
        reward_funcs: one reward source or a list: functions called as TRL calls them
            (``fn(completions, **kwargs) -> list[float | None]``, see
            :mod:`rlhf_core.rewards.functions`), :class:`rlhf_core.models.RewardModel`
            instances (frozen; scored on the sampled token ids when their tokenizer is the
            policy's, on the re-encoded texts otherwise) and/or ready
            :class:`rlhf_core.rewards.RewardModelScorer` objects, weighted by
            ``config.reward_weights`` (:func:`rlhf_core.rewards.combine_rewards`).
        reference: the frozen reference; default :func:`rlhf_core.models.make_reference` of
            ``policy`` as passed (so pass the same starting policy when resuming).
        reward_processing_classes: the tokenizer of each reward source (TRL's name), one
            per entry of ``reward_funcs`` or a single one; None (or a None entry) = the
            policy's tokenizer. Only reward models use theirs.
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
        reward_processing_classes: Any = None,
    ) -> None:
        from rlhf_core.models import make_reference

        super().__init__(config)
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer has no pad token; set tokenizer.pad_token first")
        table = prompt_rows(prompts, tokenizer, chat_template_kwargs=config.chat_template_kwargs)
        w = self.world_size
        if config.prompts_per_step % w:
            raise ValueError(
                f"rollout_batch_size={config.rollout_batch_size} with num_samples="
                f"{config.num_samples} gives {config.prompts_per_step} prompts per step, which "
                f"the {w} processes cannot share equally: use a rollout_batch_size that is a "
                f"multiple of num_samples × {w} = {config.num_samples * w}"
            )
        self.reward_sources = self._reward_sources(reward_funcs, reward_processing_classes)
        for fn in self.reward_sources:  # a signature that cannot be called fails here, not later
            if not isinstance(fn, RewardModelScorer):
                check_reward_signature(fn, list(table.columns))
        policy = self.apply_lora(policy)
        # the reference is a copy of the policy as passed, made before the policy is wrapped
        self.reference = self.wrap_frozen(
            reference if reference is not None else make_reference(policy)
        )
        self.reference.eval()
        self.policy = self.wrap_trained(policy)
        # every rank draws the same global prompts (same seed) and keeps its shard
        self.setup_optimization(self.policy, len(table))
        self.collector = RolloutCollector(
            config,
            policy=self.policy,
            reference=self.reference,
            tokenizer=tokenizer,
            prompt_texts=table.texts,
            prompt_columns=table.columns,
            prompt_messages=table.messages,
            reward_sources=self.reward_sources,
            dist=self.dist,
            device=self.device,
            autocast=self.autocast,
            lockstep=self.lockstep_forwards,
            step_seed=step_seed,
        )

    def _reward_sources(
        self, reward_funcs: RewardSource | Sequence[RewardSource], processing_classes: Any = None
    ) -> list[Callable[..., Any]]:
        """Reward functions as given; reward models frozen, placed like the other frozen models
        and wrapped as :class:`rlhf_core.rewards.RewardModelScorer` with their tokenizer
        (``processing_classes``) and the policy's."""
        from rlhf_core.rewards import RewardModelScorer

        items = (
            [reward_funcs]
            if callable(reward_funcs) or isinstance(reward_funcs, nn.Module)
            else list(reward_funcs)
        )
        if not items:
            raise ValueError("reward_funcs is empty: give at least one reward function or model")
        if processing_classes is None or not isinstance(processing_classes, (list, tuple)):
            processing_classes = [processing_classes] * len(items)
        if len(processing_classes) != len(items):
            raise ValueError(
                f"reward_processing_classes has {len(processing_classes)} entries but there are "
                f"{len(items)} reward sources: give one tokenizer (or None) per source"
            )
        out: list[Callable[..., Any]] = []
        for i, (src, tok) in enumerate(zip(items, processing_classes, strict=True)):
            if isinstance(src, nn.Module):
                src.to(self.device).eval().requires_grad_(False)
                out.append(RewardModelScorer(
                    self.wrap_frozen(src), tok if tok is not None else self.tokenizer,
                    policy_tokenizer=self.tokenizer,
                    chat_template_kwargs=self.config.chat_template_kwargs,
                ))  # fmt: skip
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
            self.collector.score(roll, trainer_state=self.trainer_state(step))
            self.check_scores(roll)
            if forward:
                self.collector.forward(roll)
        return roll

    def trainer_state(self, step: int) -> TrainerState:
        """What reward functions get as ``trainer_state`` during step ``step`` (0-based), after
        its prompts were drawn."""
        s = self.sampler
        return TrainerState(global_step=step, max_steps=self.config.total_steps,
                            epoch=(s.epoch * s.n + s.position) / s.n)  # fmt: skip

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
