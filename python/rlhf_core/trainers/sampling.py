"""The base of the trainers that sample from their policy (best-of-N, the policy-gradient
trainers): it builds the frozen reference (when one is needed), the reward sources and a
:class:`rlhf_core.rollout.RolloutCollector`, owns the rollout engine beside the policy,
collects one step's rollout, evaluates the policy on held-out prompts, and hands the latest
completions to the run's logged samples.

The engine (``generation_backend="vllm"``) lives beside the policy::

    first collect     start it from the policy's current weights (after a resume: the
                      checkpoint's)                                      time/engine_start
    each collect      sync the policy's weights into it when it is sync_every steps behind
                      (full weights, LoRA merged; the prefix cache reset) time/weight_sync
                      sample with it; its logprobs of the sampled tokens  time/generation
                      become Rollout.rollout_logprobs
                      sleep (CUDA with vllm_enable_sleep_mode: the KV cache freed, the
                      weights offloaded while the trainer trains; the next sync or
                      generation wakes it)
    end of train()    close it

The local backends (``auto``, ``hf``, ``decode_loop``) sample from the live policy: nothing to
start, sync or close, and no rollout logprobs.

Periodic evaluation (``eval_dataset``, ``eval_steps``, ``num_generations_eval``): a second
collector over the held-out prompts samples ``num_generations_eval`` completions of each,
chunk by chunk (``rollout_batch_size / num_samples`` prompts at a time, the step's batch), at
seeds fixed per chunk (the same samples for the same weights, so evaluations along a run are
comparable), scores them with the trainer's reward sources and measures the KL to the
reference; :func:`rlhf_core.rollout.rollout_metrics` of all of them (and ``accuracy`` where
the prompts have an ``answer`` column) is logged under ``eval/``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from rlhf_core import parallel as P
from rlhf_core.generation import RolloutBackend
from rlhf_core.losses import correction as LC
from rlhf_core.rewards import (
    RewardModelScorer,
    TrainerState,
    check_reward_signature,
    check_scorable_step,
    exact_match_reward,
)
from rlhf_core.rollout import (
    Rollout,
    RolloutCollector,
    concat_rollouts,
    gather,
    prompt_rows,
    rollout_metrics,
)
from rlhf_core.trainers.config import RolloutConfig
from rlhf_core.trainers.loop import Trainer, TrainResult
from rlhf_core.trainers.optim import step_seed

__all__ = ["RewardSource", "RolloutTrainer", "eval_step_seed"]

RewardSource = Callable[..., Any] | nn.Module

#: ``purpose`` offset of the evaluation seeds in :func:`rlhf_core.trainers.optim.step_seed`
EVAL_PURPOSE = 100


def eval_step_seed(seed: int, step: int, purpose: int = 0, index: int | None = None) -> int:
    """The seeds of evaluation samples: :func:`~rlhf_core.trainers.optim.step_seed` with
    ``step`` = the chunk of eval prompts (the same at every evaluation) and a ``purpose`` apart
    from the training draws."""
    return step_seed(seed, step, EVAL_PURPOSE + purpose, index)


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
            / :class:`rlhf_core.models.RewardEnsemble` instances (frozen; scored on the
            sampled token ids when their tokenizer is the policy's, on the re-encoded texts
            otherwise) and/or ready :class:`rlhf_core.rewards.RewardModelScorer` objects,
            weighted by ``config.reward_weights`` (:func:`rlhf_core.rewards.combine_rewards`;
            weight 0 = logged, not optimised).
        reference: the frozen reference; default :func:`rlhf_core.models.make_reference` of
            ``policy`` as passed (so pass the same starting policy when resuming). None and no
            need for one (``config.needs_reference`` false: no KL optimised or logged): no
            reference at all.
        eval_dataset: held-out prompts for the periodic evaluation (the forms ``prompts``
            takes, or the path of a prompt file, :func:`rlhf_core.data.load_prompts`); none =
            no evaluation.
        callbacks: :class:`rlhf_core.trainers.callbacks.TrainerCallback` instances.
        reward_processing_classes: the tokenizer of each reward source (TRL's name), one
            per entry of ``reward_funcs`` or a single one; None (or a None entry) = the
            policy's tokenizer. Only reward models use theirs.
        teacher_model: a frozen distillation teacher sharing the policy's tokenizer (a causal
            LM, or a built-in name / local folder / Hub id loaded with
            :func:`rlhf_core.models.load_policy`); its logprobs of the sampled tokens go into
            the rollout (``teacher_logprobs``). With a teacher, ``reward_funcs`` may be empty
            (distillation alone).

    Attributes:
        backend: the engine that samples when it is not the policy itself (a
            :class:`rlhf_core.generation.RolloutBackend`): None until the first step, when
            ``generation_backend="vllm"`` starts a vLLM engine (closed at the end of
            :meth:`train`). Assign your own before :meth:`train` to sample with it instead
            (it is synced at its first use and then every ``sync_every`` steps, and left
            open: yours to close).
    """

    config: RolloutConfig

    def __init__(
        self,
        config: RolloutConfig,
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
        from rlhf_core.models import make_reference

        super().__init__(config, callbacks=callbacks)
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
        self.reward_sources = self._reward_sources(
            reward_funcs, reward_processing_classes, may_be_empty=teacher_model is not None
        )
        for fn in self.reward_sources:  # a signature that cannot be called fails here, not later
            if not isinstance(fn, RewardModelScorer):
                check_reward_signature(fn, list(table.columns))
        if config.overlong_buffer_len is not None:
            from rlhf_core.rewards import soft_overlong_punishment

            self.reward_sources.append(
                soft_overlong_punishment(config.max_new_tokens, config.overlong_buffer_len)
            )
        if config.generation_backend == "vllm" and self.dist.is_distributed:
            raise ValueError(
                "generation_backend='vllm' under torchrun is not supported yet: an in-process "
                "engine needs vLLM's external_launcher beside the trainer's process group "
                "(docs/generation.md); use one process, or generation_backend='hf'"
            )
        policy = self.apply_lora(policy)
        #: the frozen reference; None when nothing needs it (config.needs_reference)
        self.reference: nn.Module | None = None
        if reference is not None or config.needs_reference:
            # a copy of the policy as passed, made before the policy is wrapped
            self.reference = self.wrap_frozen(
                reference if reference is not None else make_reference(policy)
            )
            self.reference.eval()
        self.teacher = self._teacher(teacher_model, policy)
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
            reward_weights=self._reward_weights(),
            dist=self.dist,
            device=self.device,
            autocast=self.autocast,
            lockstep=self.lockstep_forwards,
            step_seed=step_seed,
            teacher=self.teacher,
        )
        self.backend: RolloutBackend | None = None
        self._owns_backend = False
        #: the step whose policy weights the engine holds (None: unknown, sync at first use)
        self._engine_step: int | None = None
        self._engine_metrics: dict[str, float] = {}
        #: the latest step's rollout (what :meth:`sample_rows` logs)
        self.last_rollout: Rollout | None = None
        self.eval_collector = self._eval_collector(eval_dataset)

    def _eval_collector(self, eval_dataset: Any) -> RolloutCollector | None:
        """A collector over the held-out prompts (``num_generations_eval`` samples of each,
        seeds from :func:`eval_step_seed`, no value model), or None without them."""
        cfg = self.config
        if eval_dataset is None:
            if cfg.eval_steps:
                raise ValueError(
                    f"eval_steps={cfg.eval_steps} but there are no eval prompts: pass "
                    "eval_dataset (or set eval_steps = 0)"
                )
            return None
        if isinstance(eval_dataset, (str, os.PathLike)):
            from rlhf_core.data import load_prompts

            eval_dataset = load_prompts(eval_dataset)
        table = prompt_rows(eval_dataset, self.tokenizer,
                            chat_template_kwargs=cfg.chat_template_kwargs)  # fmt: skip
        w = self.world_size
        if len(table) % w:
            raise ValueError(
                f"eval_dataset has {len(table)} prompts, which the {w} processes cannot share "
                f"equally: use a multiple of {w} prompts"
            )
        sampling = copy.copy(cfg)  # the same sampling fields, G = num_generations_eval
        sampling.num_samples = cfg.eval_generations
        return RolloutCollector(
            sampling, policy=self.policy, reference=self.reference, tokenizer=self.tokenizer,
            prompt_texts=table.texts, prompt_columns=table.columns,
            prompt_messages=table.messages, reward_sources=self.reward_sources,
            dist=self.dist, device=self.device, autocast=self.autocast,
            lockstep=self.lockstep_forwards, step_seed=eval_step_seed,
        )  # fmt: skip

    def _teacher(self, teacher: nn.Module | str | None, policy: nn.Module) -> nn.Module | None:
        """The distillation teacher, loaded when named, frozen and placed like the reference."""
        if teacher is None:
            return None
        if isinstance(teacher, str):
            from rlhf_core.models import load_policy

            teacher = load_policy(teacher, tokenizer=self.tokenizer, seed=self.config.seed)
        if not isinstance(teacher, nn.Module):
            raise TypeError(
                f"teacher_model is a {type(teacher).__name__}; expected a causal LM or a model "
                "name / folder"
            )
        emb = getattr(teacher, "get_output_embeddings", lambda: None)()
        vocab = None if emb is None else int(emb.weight.shape[0])
        if vocab is not None and vocab < len(self.tokenizer):
            raise ValueError(
                f"teacher_model has {vocab} output tokens but the policy's tokenizer has "
                f"{len(self.tokenizer)}: the teacher must score the policy's token ids (use a "
                "teacher with the same tokenizer)"
            )
        teacher.requires_grad_(False)
        out = self.wrap_frozen(teacher)
        out.eval()
        return out

    def _reward_sources(
        self,
        reward_funcs: RewardSource | Sequence[RewardSource] | None,
        processing_classes: Any = None,
        *,
        may_be_empty: bool = False,
    ) -> list[Callable[..., Any]]:
        """Reward functions as given; reward models frozen, placed like the other frozen models
        and wrapped as :class:`rlhf_core.rewards.RewardModelScorer` with their tokenizer
        (``processing_classes``) and the policy's (a reward ensemble as a
        :class:`rlhf_core.rewards.ensemble.RewardEnsembleScorer` reduced by
        ``config.ensemble_reduce``); a scorer given ready-made (e.g. a check model named
        ``"check_model"``) has its model frozen and placed the same way. Empty only when
        ``may_be_empty`` (a distillation teacher gives the signal)."""
        from rlhf_core.rewards import RewardModelScorer
        from rlhf_core.rewards.ensemble import RewardEnsembleScorer

        if reward_funcs is None:
            reward_funcs = []
        items = (
            [reward_funcs]
            if callable(reward_funcs) or isinstance(reward_funcs, nn.Module)
            else list(reward_funcs)
        )
        if not items and not may_be_empty:
            raise ValueError("reward_funcs is empty: give at least one reward function or model")
        if processing_classes is None or not isinstance(processing_classes, (list, tuple)):
            processing_classes = [processing_classes] * len(items)
        if len(processing_classes) != len(items):
            raise ValueError(
                f"reward_processing_classes has {len(processing_classes)} entries but there are "
                f"{len(items)} reward sources: give one tokenizer (or None) per source"
            )
        out: list[Callable[..., Any]] = []
        cfg = self.config
        for i, (src, tok) in enumerate(zip(items, processing_classes, strict=True)):
            if isinstance(src, nn.Module) and getattr(src, "num_members", None) is not None:
                src.to(self.device).eval().requires_grad_(False)
                out.append(
                    RewardEnsembleScorer(
                        self.wrap_frozen(src),
                        tok if tok is not None else self.tokenizer,
                        reduce=cfg.ensemble_reduce,
                        lam=cfg.ensemble_lambda,
                    )
                )
            elif isinstance(src, nn.Module):
                src.to(self.device).eval().requires_grad_(False)
                out.append(RewardModelScorer(
                    self.wrap_frozen(src), tok if tok is not None else self.tokenizer,
                    policy_tokenizer=self.tokenizer,
                    chat_template_kwargs=cfg.chat_template_kwargs,
                ))  # fmt: skip
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

    def _reward_weights(self) -> list[float] | None:
        """The collector's weights: ``reward_weights`` (None = all 1), plus
        ``overlong_penalty_factor`` for the soft overlong punishment when it is on."""
        cfg = self.config
        if cfg.overlong_buffer_len is None:
            return cfg.reward_weights
        given = cfg.reward_weights
        base = [1.0] * (len(self.reward_sources) - 1) if given is None else list(given)
        return base + [cfg.overlong_penalty_factor]

    def collect(self, step: int, *, forward: bool = True) -> Rollout:
        """The step's rollout: its prompts (the same global draw on every rank) sampled,
        scored and checked, and with ``forward`` the no-grad logprobs (and values). With an
        engine: started, or synced when due, before sampling; asleep after."""
        self.last_rollout = None  # freed before the next one is sampled
        engine = self._prepare_engine(step)
        with self.timer.phase("generation"):
            roll = self.collector.sample(step, self.sampler.next(self.config.prompts_per_step))
        if engine is not None and hasattr(engine, "sleep"):
            engine.sleep()  # a no-op unless sleep mode is on (CUDA)
        self.last_rollout = roll
        with self.timer.phase("scoring"):
            self.collector.score(roll, trainer_state=self.trainer_state(step))
            self.check_scores(roll)
            self.check_scorable(roll, step)
            if forward:
                self.collector.forward(roll)
        return roll

    def trainer_state(self, step: int) -> TrainerState:
        """What reward functions get as ``trainer_state`` during step ``step`` (0-based), after
        its prompts were drawn."""
        s = self.sampler
        return TrainerState(global_step=step, max_steps=self.config.total_steps,
                            epoch=(s.epoch * s.n + s.position) / s.n)  # fmt: skip

    def check_scorable(self, roll: Rollout, step: int) -> None:
        """:func:`rlhf_core.rewards.check_scorable_step` over every rank's samples: a step in
        which all are unscorable stops (every rank, with the same counts) unless
        ``allow_unscorable_steps``."""
        # one part per reward source; "<source>/<sub>" parts (an ensemble's members and
        # disagreement) belong to their source. The collector's weights: reward_weights plus
        # the overlong punishment's factor
        names = [k for k in roll.score_parts if "/" not in k]
        weights = self.collector.reward_weights or [1.0] * len(names)
        counts = [len(roll.scores), int(np.isnan(roll.scores).sum())] + [
            int(np.isnan(roll.score_parts[k]).sum()) if w != 0 else 0
            for k, w in zip(names, weights, strict=True)
        ]
        total = P.all_reduce_sum(np.asarray(counts, dtype=np.int64), self.dist)
        check_scorable_step(
            int(total[0]), int(total[1]), {k: int(c) for k, c in zip(names, total[2:], strict=True)},
            allow=self.config.allow_unscorable_steps, step=step + 1,
        )  # fmt: skip

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

    # ---- the engine -------------------------------------------------------------------------
    def _prepare_engine(self, step: int) -> RolloutBackend | None:
        """Start the engine (first step), sync it when it is ``sync_every`` steps behind, hand
        it to the collector; None when the policy samples itself."""
        cfg = self.config
        self._engine_metrics = {}
        if self.backend is None and cfg.generation_backend == "vllm":
            from rlhf_core.generation import make_backend

            with self.timer.phase("engine_start"):
                self.backend = make_backend(
                    "vllm", self.policy, self.tokenizer, vllm=cfg.vllm_config(seed=cfg.seed)
                )
            self._owns_backend = True
            self._engine_step = step  # started from the weights of this step
        self.collector.backend = self.backend
        if not self.collector.samples_from_engine:
            return None
        engine = self.backend
        assert engine is not None
        due = cfg.sync_every > 0 and step - (self._engine_step or 0) >= cfg.sync_every
        if self._engine_step is None or due:
            with self.timer.phase("weight_sync"):
                engine.sync_weights(self.policy)
            self._engine_step = step
        self._engine_metrics["weight_sync/lag_steps"] = float(step - self._engine_step)
        return engine

    def close_backend(self) -> None:
        """Close the engine this trainer started (a no-op otherwise); the next step starts a
        new one."""
        if self._owns_backend and self.backend is not None:
            self.backend.close()
            self.backend = None
            self._owns_backend = False
            self._engine_step = None
        self.collector.backend = self.backend

    def train(self, *, stop_at_step: int | None = None) -> TrainResult:
        """:meth:`rlhf_core.trainers.loop.Trainer.train`, then the engine is closed."""
        try:
            return super().train(stop_at_step=stop_at_step)
        finally:
            self.close_backend()

    def engine_metrics(self, roll: Rollout) -> dict[str, float]:
        """What a rollout sampled by an engine logs: ``weight_sync/lag_steps`` (steps between
        the policy's weights and the engine's) and, once the trainer's logprobs are known, the
        mismatch metrics of :func:`rlhf_core.losses.correction.mismatch_metrics` over the
        global rollout (the correction options of the config, TRL's defaults where it has
        none). Empty when the policy sampled itself."""
        out = dict(self._engine_metrics)
        if roll.rollout_logprobs and roll.logprobs:
            out.update(self.mismatch_metrics(roll))
        return out

    def mismatch_metrics(self, roll: Rollout) -> dict[str, float]:
        """:func:`rlhf_core.losses.correction.mismatch_metrics` of the global rollout: the
        trainer's logprobs against the engine's, every response token."""
        lengths = gather(roll.response_lengths, self.dist)
        ours = gather(np.concatenate(roll.logprobs), self.dist)
        theirs = gather(np.concatenate(roll.rollout_logprobs), self.dist)
        mask = np.arange(int(lengths.max()))[None, :] < lengths[:, None]  # (N, T)
        old = np.zeros(mask.shape)
        eng = np.zeros(mask.shape)
        old[mask], eng[mask] = ours, theirs  # row-major: the ragged order
        cfg = self.config
        return LC.mismatch_metrics(
            torch.from_numpy(old),
            torch.from_numpy(eng),
            torch.from_numpy(mask),
            mode=getattr(cfg, "vllm_importance_sampling_mode", "sequence_mask"),
            clip_max=getattr(cfg, "vllm_importance_sampling_clip_max", 3.0),
            clip_min=getattr(cfg, "vllm_importance_sampling_clip_min", None),
        )

    # ---- evaluation -------------------------------------------------------------------------
    def evaluation_due(self, step: int) -> bool:
        """Every ``eval_steps`` steps and at ``total_steps``, when there are eval prompts."""
        cfg = self.config
        return self.eval_collector is not None and (
            step == cfg.total_steps or bool(cfg.eval_steps and step % cfg.eval_steps == 0)
        )

    def evaluate(self) -> dict[str, float]:
        """The policy on the held-out prompts: :func:`rlhf_core.rollout.rollout_metrics`
        (``reward/mean`` (the combined reward) and ``reward/<source>``, ``kl``,
        ``response_length/*``, ...) and, where the prompts have an ``answer`` column,
        ``accuracy`` (the share of completions whose final answer matches,
        :func:`rlhf_core.rewards.exact_match_reward`). The same prompts and seeds every time."""
        col = self.eval_collector
        if col is None:
            raise ValueError("no eval prompts: pass eval_dataset to the trainer")
        n, size = len(col.prompt_texts), self.config.prompts_per_step
        parts = []
        for chunk, first in enumerate(range(0, n, size)):
            roll = col.sample(chunk, np.arange(first, min(first + size, n), dtype=np.int64))
            col.score(roll)
            col.forward(roll)
            roll.padded = {}
            parts.append(roll)
        roll = concat_rollouts(parts)
        metrics = rollout_metrics(roll, self.dist)
        answers = col.prompt_columns.get("answer")
        if answers is not None:
            rows = [answers[i] for i in roll.prompt_index]
            hit = np.asarray(
                exact_match_reward([], roll.texts, rows), dtype=np.float64
            )  # None (no answer) -> NaN
            hit = gather(hit, self.dist)
            if np.isfinite(hit).any():
                metrics["accuracy"] = float(np.nanmean(hit))
        return metrics

    # ---- logged samples ---------------------------------------------------------------------
    def sequence_advantages(self) -> np.ndarray | None:
        """float64 (N,): the advantage of each completion of :attr:`last_rollout` (None for a
        trainer without advantages)."""
        return None

    def local_sample_rows(self) -> list[dict[str, Any]]:
        """This rank's rows of :attr:`last_rollout` (:meth:`rlhf_core.rollout.Rollout.
        sample_rows` with :meth:`sequence_advantages`)."""
        if self.last_rollout is None:
            return []
        return self.last_rollout.sample_rows(self.collector.prompt_texts,
                                             self.sequence_advantages())  # fmt: skip

    def sample_rows(self) -> list[dict[str, Any]]:
        """Every rank's rows of the latest rollout, in rank order (a collective)."""
        rows = self.local_sample_rows()
        if not self.dist.is_distributed:
            return rows
        return [r for part in P.all_gather_object(rows, self.dist) for r in part]
