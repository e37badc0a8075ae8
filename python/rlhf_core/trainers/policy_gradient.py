"""The policy-gradient trainer: a rollout collector, an advantage estimator and the clipped
surrogate, composed. PPO, GRPO, RLOO and REINFORCE++ are this trainer with another estimator
(and, for PPO, a value model).

One training step::

    generation   draw prompts (seeded, resumable), sample completions     RolloutCollector
    scoring      reward sources -> one score per completion (NaN =         RolloutCollector
                 unscorable); no-grad logprobs of the rollout policy and
                 the reference (and a value model's values)
    bookkeeping  rollout metrics; the rollout into the RolloutBuffer         rollout_metrics
                 (Rust); advantages                                        Estimator.compute
    training     ppo_epochs x shuffled minibatches, each one optimizer      accumulate_step
                 step over micro-batches of the clipped surrogate (+ KL
                 in the loss, + entropy bonus), normalised by the
                 minibatch's global token / sequence counts

A rollout sampled by an engine (``generation_backend="vllm"``) carries the engine's logprobs
(``rollout_logprobs``, a per-token buffer field beside the trainer's ``logprobs``); the step
then logs the mismatch metrics, and with ``vllm_importance_sampling_correction`` the clipped
per-token loss is weighted by :func:`rlhf_core.losses.correction.correction_weights` (detached,
after the clip, before the KL and entropy terms).

The estimator (:mod:`rlhf_core.advantages`) owns how advantages are computed, over every rank;
the KL coefficient β of this step (:attr:`PolicyGradientTrainer.kl_coef`) goes into the
estimator's rewards (``kl_in_reward``) or into the loss.

Token alignment: every per-token tensor here is ``(B, T-1)`` and aligned with
:func:`rlhf_core.models.token_logprobs` (column ``j`` is about token ``j+1``), the same
alignment as the buffer's materialised ``response_mask``.

Several processes (``torchrun``): each rank holds a block of whole prompts; minibatches are
``minibatch_size / world_size`` local rows, losses use the global token / sequence counts (see
:mod:`rlhf_core.trainers.step`), the rollout metrics and the advantage statistics are global.
With ``per_prompt_seeds`` the whole step equals a single-process step on the same prompts when
each optimizer step sees the whole rollout (``docs/scaling.md``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from rlhf_core import distributed as D
from rlhf_core import losses as L
from rlhf_core import ops
from rlhf_core.advantages import Estimator, TeacherKL, token_masks
from rlhf_core.losses import correction as LC
from rlhf_core.rollout import Rollout, iter_micro_batches, logprobs_and_entropy, rollout_metrics
from rlhf_core.rollout.dynamic import DynamicSampler
from rlhf_core.trainers.config import RLConfig
from rlhf_core.trainers.optim import step_seed
from rlhf_core.trainers.sampling import RewardSource, RolloutTrainer
from rlhf_core.trainers.step import StepAverage, accumulate_step

__all__ = ["OnPolicyTrainer", "PolicyGradientTrainer"]


class PolicyGradientTrainer(RolloutTrainer):
    """Rollout → buffer → ``estimator`` → clipped-surrogate updates over shuffled minibatches.

    Args:
        config: an :class:`~rlhf_core.trainers.config.RLConfig`.
        policy, tokenizer, prompts, reward_funcs, reference: as
            :class:`~rlhf_core.trainers.sampling.RolloutTrainer`.
        estimator: the advantage estimator (:class:`rlhf_core.advantages.Estimator`); its β is
            replaced by :attr:`kl_coef` each step when ``config.kl_in_reward``.
        eval_dataset, callbacks: as :class:`~rlhf_core.trainers.sampling.RolloutTrainer`.
        teacher_model: on-policy distillation: a frozen teacher (module or name) whose
            per-token reverse KL to the policy on its samples enters the advantages
            (:class:`rlhf_core.advantages.TeacherKL`, ``teacher_kl_coef``); ``reward_funcs``
            may then be empty.
    """

    name = "policy_gradient"
    config: RLConfig
    #: Leave completions whose score is NaN (unscorable) out of the loss (PPO: its value loss
    #: must not learn from a reward that does not exist). Otherwise they stay in the loss with
    #: advantage 0 (group estimators) and count in the token normalisers.
    drop_unscorable: bool = False

    def __init__(
        self,
        config: RLConfig,
        policy: nn.Module,
        tokenizer: Any,
        prompts: Any,
        reward_funcs: RewardSource | Sequence[RewardSource] | None,
        *,
        estimator: Estimator,
        reference: nn.Module | None = None,
        eval_dataset: Any = None,
        callbacks: Sequence[Any] | None = None,
        reward_processing_classes: Any = None,
        teacher_model: nn.Module | str | None = None,
    ) -> None:
        from rlhf_core.buffer import RolloutBuffer

        super().__init__(config, policy, tokenizer, prompts, reward_funcs, reference=reference,
                         eval_dataset=eval_dataset, callbacks=callbacks,
                         reward_processing_classes=reward_processing_classes,
                         teacher_model=teacher_model)  # fmt: skip
        if config.minibatch_size is not None:
            self.check_divisible("minibatch_size", config.minibatch_size)
        if self.teacher is not None:
            estimator = TeacherKL(
                base=estimator, coef=config.teacher_kl_coef, clamp=config.teacher_kl_clamp
            )
        self.estimator = estimator
        # the top-entropy selection reads the rollout policy's entropies
        self.collector.entropies = config.top_entropy_quantile < 1
        self.buffer = RolloutBuffer()
        self.add_state("buffer", self.buffer, optional=True)
        self.sampling_metrics: dict[str, float] = {}
        self.dynamic_sampler: DynamicSampler | None = None
        if config.dynamic_sampling:
            self.dynamic_sampler = DynamicSampler(
                self.collector,
                batch_rows=config.rollout_batch_size // self.world_size,
                group_size=config.num_samples,
                max_rounds=config.max_num_gen_batches,
                min_std=config.dynamic_sampling_min_std,
                dist=self.dist,
            )
            self.add_state("dynamic_sampling", self.dynamic_sampler.state, optional=True)

    @property
    def kl_coef(self) -> float:
        """β of this step (PPO's adaptive controller replaces it)."""
        return self.config.kl_coef

    # ---- the step ---------------------------------------------------------------------------
    def collect(self, step: int, *, forward: bool = True) -> Rollout:
        """The step's rollout; with ``dynamic_sampling``, rounds of prompts until the batch
        holds informative groups only (:class:`rlhf_core.rollout.dynamic.DynamicSampler`; its
        metrics go to :attr:`sampling_metrics`)."""
        self.sampling_metrics = {}
        if self.dynamic_sampler is None:
            return super().collect(step, forward=forward)
        self.last_rollout = None  # freed before the next one is sampled
        engine = self._prepare_engine(step)  # once for every round of the step
        per_round = self.config.prompts_per_step
        with self.timer.phase("generation"):  # every round: sampled and scored
            roll, self.sampling_metrics = self.dynamic_sampler.collect(
                step, lambda: self.sampler.next(per_round), self.check_scores
            )
        if engine is not None and hasattr(engine, "sleep"):
            engine.sleep()
        self.last_rollout = roll
        with self.timer.phase("scoring"):
            self.check_scorable(roll, step)
            if forward:
                self.collector.forward(roll)
        return roll

    def train_step(self, step: int) -> dict[str, float]:
        roll = self.collect(step)
        with self.timer.phase("bookkeeping"):
            metrics = rollout_metrics(roll, self.dist)
            metrics.update(self.sampling_metrics)
            self.fill_buffer(roll)
            estimator = self.estimator
            if self.config.kl_in_reward:
                estimator = estimator.with_kl_coef(self.kl_coef)
            metrics.update(estimator.compute(self.buffer, self.dist).metrics())
            metrics.update(self.engine_metrics(roll))
        with self.timer.phase("training"):
            metrics.update(self.update(step))
            self.step_schedulers()
        return metrics

    def fill_buffer(self, roll: Rollout) -> None:
        """Put the rollout into the (cleared) buffer. A per-token ``loss_mask`` leaves out
        truncated completions (``mask_truncated``) and unscorable ones (:attr:`drop_unscorable`,
        whose NaN score is then stored as 0: nothing reads it)."""
        cfg = self.config
        self.buffer.clear()
        scores = roll.scores
        fields: dict[str, Any] = dict(
            prompt_ids=roll.prompt_ids,
            response_ids=roll.response_ids,
            logprobs=roll.logprobs,
            group_ids=roll.group_ids,
            truncated=roll.truncated,
        )
        if roll.values:
            fields["values"] = roll.values
        if roll.ref_logprobs:  # none without a reference (nothing needs them)
            fields["ref_logprobs"] = roll.ref_logprobs
        if roll.rollout_logprobs:  # the engine's, beside the trainer's
            fields["rollout_logprobs"] = roll.rollout_logprobs
        if roll.entropies:
            fields["entropies"] = roll.entropies
        if roll.teacher_logprobs:
            fields["teacher_logprobs"] = roll.teacher_logprobs
        keep = np.ones(len(roll), dtype=bool)
        if cfg.mask_truncated:
            keep &= ~np.asarray(roll.truncated, dtype=bool)
        if self.drop_unscorable:
            keep &= np.isfinite(scores)
            scores = np.nan_to_num(scores, nan=0.0)
        if cfg.mask_truncated or self.drop_unscorable:  # every step: the schema stays fixed
            fields["loss_mask"] = [
                np.full(len(r), bool(k)) for r, k in zip(roll.response_ids, keep, strict=True)
            ]
        self.buffer.add(scores=scores, **fields)

    def sequence_advantages(self) -> np.ndarray | None:
        """float64 (N,): each completion's advantage in the buffer (the mean over its response
        tokens for per-token estimators such as GAE), None before the first step."""
        buf = self.buffer
        info = buf.advantages_info if len(buf) else None
        if info is None:
            return None
        adv = buf.field("advantages").astype(np.float64)
        if info["level"] == "sequence":
            return adv  # one per sequence
        return np.asarray(ops.reduce_tokens(adv, offsets=buf.offsets(), how="mean"))

    # ---- the update -------------------------------------------------------------------------
    def update(self, step: int) -> dict[str, float]:
        """``ppo_epochs`` × minibatches, one optimizer step each (:func:`accumulate_step`).
        Returns the metrics averaged over the optimizer steps (``*_min`` / ``*_max``:
        extremes) and ``optimizer_steps``. With several processes each rank iterates over
        ``minibatch_size / world_size`` of its own rows per minibatch; counts are global."""
        cfg = self.config
        mbs = (cfg.minibatch_size or cfg.rollout_batch_size) // self.world_size
        average = StepAverage()
        for model in self.synced_models():
            model.train()
        for index, mb in enumerate(
            self.buffer.minibatches(
                batch_size=mbs, epochs=cfg.ppo_epochs, seed=step_seed(cfg.seed, step, 2)
            )
        ):
            padded = mb.to_padded(pad_token_id=self.tokenizer.pad_token_id, device=self.device)
            batch = {k: v for k, v in padded.items() if isinstance(v, torch.Tensor)}
            self.correct_mismatch(batch)
            # counts of the global minibatch: the same on every rank, so is the skip below
            n_tok, n_seq = D.global_token_counts(batch["response_mask"], self.dist)
            if n_tok == 0:
                continue  # every sequence masked out (e.g. all truncated)
            batch.update(self.token_selection(batch, step_seed(cfg.seed, step, 5, index=index)))
            # dumped on a non-finite loss; scores may be NaN by design (unscorable), so they
            # ride along unchecked
            self.batch_to_dump = {k: v for k, v in batch.items() if k != "scores"}
            if "scores" in batch:
                self.batch_to_dump["unchecked"] = {"scores": batch["scores"]}
            average.add(
                accumulate_step(
                    list(iter_micro_batches(batch, cfg.micro_batch_size, lengths=mb.lengths)),
                    partial(self.loss, n_tok=n_tok, n_seq=n_seq),
                    optimizer_step=self.optimizer_step,
                    models=self.synced_models(),
                    dist=self.dist,
                )
            )
        out = average.result()
        out["optimizer_steps"] = float(average.count)
        return out

    def correct_mismatch(self, batch: dict[str, torch.Tensor]) -> None:
        """With rollout logprobs and ``vllm_importance_sampling_correction``: the minibatch's
        correction weights as ``batch["is_weights"]`` (B, T-1); with the ``"kept"``
        denominator, rejected tokens also leave ``response_mask`` (before the counts)."""
        cfg = self.config
        if not (cfg.vllm_importance_sampling_correction and "rollout_logprobs" in batch):
            return
        cw = LC.correction_weights(
            batch["old_logprobs"],
            batch["rollout_logprobs"],
            batch["response_mask"],
            mode=cfg.vllm_importance_sampling_mode,
            clip_max=cfg.vllm_importance_sampling_clip_max,
            clip_min=cfg.vllm_importance_sampling_clip_min,
        )
        batch["is_weights"] = cw.weights
        if cfg.vllm_importance_sampling_denominator == "kept":
            batch["response_mask"] = batch["response_mask"] & ~cw.rejected

    def token_selection(self, batch: Mapping[str, torch.Tensor], seed: int) -> dict[str, Any]:
        """Per-token masks of one minibatch, chosen over every rank's rows before its
        micro-batches (:mod:`rlhf_core.advantages.token_masks`): ``token_weights`` (the
        top-entropy tokens, from the rollout policy's entropies) and ``cov_selected``
        (Clip-Cov / KL-Cov, from the rollout's log-probabilities and the advantages). Empty
        when no such option is on."""
        cfg = self.config
        mask = batch["response_mask"]
        out: dict[str, Any] = {}
        if cfg.top_entropy_quantile < 1:
            keep = token_masks.top_entropy_mask(
                batch["entropies"], mask, cfg.top_entropy_quantile, self.dist
            )
            out["token_weights"] = keep.to(torch.float32)
        if cfg.clip_cov_ratio > 0 or cfg.kl_cov_ratio > 0:
            cov = token_masks.covariance_of_batch(
                batch["old_logprobs"], batch["advantages"], mask, self.dist
            )
            if cfg.clip_cov_ratio > 0:
                out["cov_selected"] = token_masks.clip_cov_mask(
                    cov, mask, ratio=cfg.clip_cov_ratio, lb=cfg.clip_cov_lb,
                    ub=cfg.clip_cov_ub, seed=seed, dist=self.dist,
                )  # fmt: skip
            else:
                out["cov_selected"] = token_masks.kl_cov_mask(
                    cov, mask, ratio=cfg.kl_cov_ratio, dist=self.dist
                )
        return out

    def loss(self, micro: Mapping[str, torch.Tensor], n_tok: int, n_seq: int) -> L.LossOutput:
        """The config's policy loss (times the mismatch weights, when there are some) + (KL in
        the loss) + entropy bonus of one micro-batch, normalised by the minibatch's global
        counts ``n_tok`` / ``n_seq``."""
        cfg = self.config
        with self.autocast():
            logp, ent = logprobs_and_entropy(
                self.policy, micro["input_ids"], micro["attention_mask"],
                temperature=cfg.temperature,
            )  # fmt: skip
        mask = micro["response_mask"]  # (B, T-1)
        kw: dict[str, Any] = dict(
            aggregation=cfg.aggregation,
            num_tokens=n_tok,
            num_seqs=n_seq,
            max_len=cfg.max_new_tokens,
        )
        advantages = micro["advantages"]
        if "is_weights" in micro:  # w · per-token loss, as A·w (losses.correction)
            advantages = LC.weighted_advantages(advantages, micro["is_weights"])
        weights = micro.get("token_weights")
        out = self.policy_loss(logp, micro, advantages, mask, weights, kw)
        beta = self.kl_coef
        if beta > 0 and not cfg.kl_in_reward:
            out = out + L.kl_penalty(
                logp, micro["ref_logprobs"], mask, coef=beta, estimator=cfg.kl_estimator,
                clamp=cfg.kl_clamp, **kw,
            )  # fmt: skip
        return out + L.entropy_bonus(ent, mask, coef=cfg.entropy_coef, token_weights=weights, **kw)

    def policy_loss(
        self,
        logp: torch.Tensor,
        micro: Mapping[str, torch.Tensor],
        adv: torch.Tensor,
        mask: torch.Tensor,
        weights: torch.Tensor | None,
        kw: dict[str, Any],
    ) -> L.LossOutput:
        """The config's policy loss on the advantages ``adv``: the clipped surrogate at
        ``importance_sampling_level`` (GSPO at the sequence level), its Clip-Cov / KL-Cov
        variants, CISPO or SAPO. Each is linear in A for w ≥ 0, so the mismatch weights enter
        as A·w (KL-Cov's |log r| penalty stays unweighted)."""
        cfg = self.config
        old = micro["old_logprobs"]
        common: dict[str, Any] = dict(
            log_ratio_clamp=cfg.log_ratio_clamp, token_weights=weights, **kw
        )
        if cfg.kl_cov_ratio > 0:
            return L.kl_cov_loss(logp, old, adv, mask, selected=micro["cov_selected"],
                                 ppo_kl_coef=cfg.ppo_kl_coef, **common)  # fmt: skip
        if cfg.clip_cov_ratio > 0:
            return L.clip_cov_loss(logp, old, adv, mask, selected=micro["cov_selected"],
                                   clip_low=cfg.clip_low, clip_high=cfg.clip_high, **common)  # fmt: skip
        level = cfg.importance_sampling_level
        if cfg.policy_objective == "cispo":
            lo, hi = cfg.cispo_bounds()
            return L.cispo_loss(logp, old, adv, mask, ratio_min=lo, ratio_max=hi,
                                importance_sampling_level=level, **common)  # fmt: skip
        if cfg.policy_objective == "sapo":
            return L.sapo_loss(
                logp, old, adv, mask, temperature_pos=cfg.sapo_temperature_pos,
                temperature_neg=cfg.sapo_temperature_neg, importance_sampling_level=level,
                **common,
            )  # fmt: skip
        return L.ppo_policy_loss(logp, old, adv, mask, clip_low=cfg.clip_low,
                                 clip_high=cfg.clip_high, dual_clip=cfg.dual_clip,
                                 importance_sampling_level=level, **common)  # fmt: skip


#: The name of :class:`PolicyGradientTrainer` before the estimator layer existed.
OnPolicyTrainer = PolicyGradientTrainer
