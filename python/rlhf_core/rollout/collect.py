"""The rollout collector: a step's prompts, sampled completions, rewards and no-grad forwards.

One step of a trainer that samples from its policy::

    sample    the step's prompts (drawn by the trainer's seeded sampler; this rank keeps its
              block), num_samples completions of each (rlhf_core.generation.generate with
              the config's generation_backend, or the trainer's engine: then the engine's
              logprobs of the sampled tokens come along as Rollout.rollout_logprobs)
    score     every reward source, combined by rlhf_core.rewards.combine_rewards and called
              by keyword as TRL calls them (prompts and completions as conversations when
              the prompts are; completion_ids, trainer_state, log_metric, the dataset's
              columns); reward models score the exact sampled token ids when they share the
              policy's tokenizer, the texts re-encoded otherwise; missing_eos_penalty
    forward   without grad, over the whole rollout in micro-batches: the rollout policy's and
              the frozen reference's logprobs (when there is a reference), and a value model's
              values when there is one

A different way of sampling (dynamic sampling that refills the batch, another backend) is a
change here, behind :meth:`RolloutCollector.sample`; the trainers only see
:class:`rlhf_core.rollout.Rollout`. An engine (:attr:`RolloutCollector.backend`, e.g. vLLM) is
the trainer's to create, sync and close; the collector only samples with it.

Several processes: every rank draws the same global prompts and keeps a contiguous block of
whole prompts (all G samples of a prompt on one rank, so group statistics stay local); group
ids are global prompt positions. With ``per_prompt_seeds`` a prompt's samples do not depend on
the rank that draws them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from rlhf_core import parallel as D
from rlhf_core.generation import Completions, LocalBackend, RolloutBackend
from rlhf_core.rewards import combine_rewards
from rlhf_core.rollout.batch import PromptTable, Rollout
from rlhf_core.rollout.inputs import (
    iter_micro_batches,
    logprobs_and_entropy,
    logprobs_of,
    pad_sequences,
)

__all__ = ["RolloutCollector"]


class RolloutCollector:
    """Samples, scores and runs the no-grad forwards of one step's rollout.

    Args:
        config: a :class:`rlhf_core.trainers.RolloutConfig` (sampling fields,
            ``reward_weights``, ``missing_eos_penalty``, ``micro_batch_size``, ``seed``).
        policy: the policy being trained (wrapped as the trainer trains it).
        reference: the frozen reference; None = no reference logprobs (nothing needs them).
        tokenizer: the policy's tokenizer (its pad token pads the batches).
        prompt_texts, prompt_columns: the prompt table (:func:`rlhf_core.rollout.prompt_table`).
        prompt_messages: the conversation of each conversational prompt, None for a plain one
            (:attr:`rlhf_core.rollout.PromptTable.messages`); None = every prompt is plain.
            Reward functions receive a conversational prompt as its messages and its
            completions as ``[{"role": "assistant", "content": text}]``.
        reward_sources: reward functions (reward models already wrapped as
            :class:`rlhf_core.rewards.RewardModelScorer`), weighted by ``reward_weights``
            and combined by ``config.reward_none_policy``.
        reward_weights: one weight per source; None = ``config.reward_weights``.
        dist: the process group (:class:`rlhf_core.parallel.DistContext`).
        device: where the forwards run.
        autocast: a context for every forward (the trainer's bf16 autocast on CUDA).
        lockstep: every forward is a collective (FSDP2 over several processes): generation then
            keeps all ranks in step.
        step_seed: ``(seed, step, purpose[, index]) -> int``, the trainer's seed derivation.
        value_model: optional; its values (B, T-1) become ``Rollout.values``.
        entropies: also keep the rollout policy's next-token entropies
            (``Rollout.entropies``; the top-entropy token selection reads them).
        teacher: a frozen distillation teacher (same tokenizer); its logprobs of the sampled
            tokens become ``Rollout.teacher_logprobs``.

    Attributes:
        backend: None (sample from ``policy`` with ``config.generation_backend``) or a
            :class:`rlhf_core.generation.RolloutBackend` to sample with (set by the trainer: a
            vLLM engine, or a stand-in with its own weights in tests).
    """

    def __init__(
        self,
        config: Any,
        *,
        policy: nn.Module,
        reference: nn.Module | None,
        tokenizer: Any,
        prompt_texts: list[str],
        prompt_columns: dict[str, list[Any]],
        reward_sources: Sequence[Callable[..., Any]],
        dist: D.DistContext,
        reward_weights: Sequence[float] | None = None,
        device: torch.device,
        autocast: Callable[[], AbstractContextManager[Any]],
        lockstep: bool,
        step_seed: Callable[..., int],
        value_model: nn.Module | None = None,
        prompt_messages: Sequence[Any] | None = None,
        entropies: bool = False,
        teacher: nn.Module | None = None,
    ) -> None:
        self.config = config
        self.entropies = entropies
        self.teacher = teacher
        self.policy = policy
        self.reference = reference
        self.tokenizer = tokenizer
        self.prompt_texts = prompt_texts
        self.prompt_columns = prompt_columns
        self.prompts = PromptTable(
            prompt_texts,
            prompt_columns,
            list(prompt_messages) if prompt_messages is not None else [None] * len(prompt_texts),
        )
        if len(self.prompts.messages) != len(prompt_texts):
            raise ValueError(
                f"prompt_messages has {len(self.prompts.messages)} entries, prompt_texts has "
                f"{len(prompt_texts)}"
            )
        self.prompt_ids = [
            np.asarray(tokenizer(p, add_special_tokens=True)["input_ids"], dtype=np.int64)
            for p in prompt_texts
        ]
        for i, ids in enumerate(self.prompt_ids):
            if ids.size == 0:
                raise ValueError(f"prompts[{i}] encodes to no tokens")
        if "completion_ids" in prompt_columns:
            raise ValueError(
                "the prompts have a column named 'completion_ids': that name is reserved for "
                "the sampled token ids handed to reward functions; rename the column"
            )
        self.reward_sources = list(reward_sources)
        self.reward_weights = config.reward_weights if reward_weights is None else reward_weights
        self.dist = dist
        self.device = device
        self.autocast = autocast
        self.lockstep = lockstep
        self.step_seed = step_seed
        self.value_model = value_model
        self.backend: RolloutBackend | None = None

    @property
    def samples_from_engine(self) -> bool:
        """True when an engine other than the trained model samples (its backend holds its
        own weights): the rollout then carries the engine's logprobs."""
        return self.backend is not None and not isinstance(self.backend, LocalBackend)

    # ---- sample -----------------------------------------------------------------------------
    def sample(self, step: int, prompt_indices: np.ndarray, *, gen_round: int = 0) -> Rollout:
        """``num_samples`` completions of each prompt of this rank's block of the step's global
        prompt list ``prompt_indices`` (int64, the same on every rank). Group ids are positions
        in that list.

        ``gen_round``: the generation round of the step (dynamic sampling draws several): round
        ``r`` continues the step's prompt list, so its group ids and per-prompt seeds are
        those of positions ``r·P + j`` (P prompts per round), and its sampling seed is its
        own. Round 0 is what a step without rounds samples."""
        cfg = self.config
        mine = D.shard_indices(len(prompt_indices), self.dist.rank, self.dist.world_size)
        pidx = prompt_indices[mine]
        first = int(mine[0]) if len(mine) else 0
        first += gen_round * len(prompt_indices)
        if cfg.per_prompt_seeds:
            # seeded by each prompt's global position: the same samples whichever rank draws
            # them and whatever else is sampled
            seeds = [self.step_seed(cfg.seed, step, 1, index=first + j) for j in range(len(pidx))]
            if self.samples_from_engine:  # one engine call, one seed per request
                comp = self._generate(list(pidx), None, prompt_seeds=seeds)
            else:  # one call per prompt
                comp = Completions.concatenate(
                    [self._generate([i], s) for i, s in zip(pidx, seeds, strict=True)]
                )
        else:
            # rank 0 keeps the run's seed, other ranks draw independent streams
            base = D.rank_seed(cfg.seed, self.dist.rank)
            seed = self.step_seed(base, step, 1, index=gen_round if gen_round else None)
            comp = self._generate(list(pidx), seed)
        prompt_ids, response_ids = comp.prompt_ids, comp.response_ids
        truncated, group_ids, texts = comp.truncated, comp.group_ids, comp.texts
        empty = [i for i, r in enumerate(response_ids) if len(r) == 0]
        if empty:
            raise RuntimeError(f"generation returned empty responses at rows {empty[:5]}")
        return Rollout(
            prompt_ids=prompt_ids,
            response_ids=response_ids,
            group_ids=group_ids + first,
            truncated=truncated,
            texts=texts,
            prompt_index=pidx[group_ids],
            scores=np.zeros(0),
            score_parts={},
            padded={},
            rollout_logprobs=list(comp.logprobs or []) if self.samples_from_engine else [],
            backend=comp.backend,
        )

    def _generate(
        self, prompts: list[int], seed: int | None, prompt_seeds: list[int] | None = None
    ) -> Completions:
        from rlhf_core.generation import generate

        cfg = self.config
        ids: list[Any] = [self.prompt_ids[i] for i in prompts]  # int64 (P,) arrays
        backend: str | RolloutBackend = (
            self.backend
            if self.backend is not None
            else getattr(cfg, "generation_backend", "auto")
        )
        return generate(
            self.policy,
            self.tokenizer,
            ids,
            num_samples=cfg.num_samples,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            seed=seed,
            batch_size=cfg.generation_batch_size,
            fast=cfg.fast_generation,
            synced_gpus=True if self.lockstep else None,
            prompt_seeds=prompt_seeds,
            return_logprobs=self.samples_from_engine,
            generation_backend=backend,
        )

    # ---- score ------------------------------------------------------------------------------
    def score(self, roll: Rollout, *, trainer_state: Any = None) -> None:
        """``roll.scores`` (float64 (N,), the weighted sum of the reward sources, NaN =
        unscorable, minus ``missing_eos_penalty`` for truncated completions),
        ``roll.score_parts`` (each source's raw scores) and ``roll.reward_metrics`` (what the
        functions logged). ``trainer_state`` is handed to the reward functions
        (:class:`rlhf_core.rewards.TrainerState`). Without reward sources (distillation
        alone: the teacher's KL is the signal) every score is 0."""
        if not self.reward_sources:
            roll.scores, roll.score_parts, roll.reward_metrics = np.zeros(len(roll)), {}, {}
            return
        idx = roll.prompt_index
        columns = {k: [v[i] for i in idx] for k, v in self.prompt_columns.items()}
        prompts = [self.prompts.reward_prompt(i) for i in idx]
        completions: list[Any] = [
            t if self.prompts.messages[i] is None else [{"role": "assistant", "content": t}]
            for i, t in zip(idx, roll.texts, strict=True)
        ]
        logged: dict[str, list[float]] = {}

        def log_metric(name: str, value: float) -> None:
            logged.setdefault(str(name), []).append(float(value))

        total, parts = combine_rewards(
            self.reward_sources,
            self.reward_weights,
            prompts,
            completions,
            return_components=True,
            sequences=roll.sequences(),  # reward models score the exact sampled tokens
            model_context=self.autocast,
            none_policy=self.config.reward_none_policy,
            completion_ids=[r.tolist() for r in roll.response_ids],
            trainer_state=trainer_state,
            log_metric=log_metric,
            **columns,
        )
        penalty = self.config.missing_eos_penalty
        if penalty:
            total = np.where(np.asarray(roll.truncated, dtype=bool), total - penalty, total)
        roll.scores, roll.score_parts = total, parts
        roll.reward_metrics = logged

    # ---- forward ----------------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, roll: Rollout) -> None:
        """``roll.padded`` and, for every response token, the rollout policy's and (when there
        is one) the reference's logprobs, and the value model's values, without grad."""
        cfg = self.config
        seqs = roll.sequences()
        roll.padded = pad_sequences(
            seqs, [len(p) for p in roll.prompt_ids], self.tokenizer.pad_token_id,
            device=self.device,
        )  # fmt: skip
        old: list[torch.Tensor] = []
        ref: list[torch.Tensor] = []
        val: list[torch.Tensor] = []
        ent: list[torch.Tensor] = []
        tea: list[torch.Tensor] = []
        # no gradient: DDP's wrapper (and its collectives) is not needed; FSDP2 runs the
        # sharded model itself, the same number of micro-batches on every rank
        policy = D.unwrap_model(self.policy)
        self.policy.eval()
        try:
            # widths from the host-side lengths; per-token results stay on the device, padded,
            # until one copy to the host after the loop (no sync per micro-batch)
            for mb in iter_micro_batches(
                roll.padded, cfg.micro_batch_size, lengths=[len(x) for x in seqs]
            ):
                with self.autocast():
                    if self.entropies:
                        lp, h = logprobs_and_entropy(
                            policy, mb["input_ids"], mb["attention_mask"],
                            temperature=cfg.temperature,
                        )  # fmt: skip
                        ent.append(h.float())
                    else:
                        lp = logprobs_of(
                            policy, mb["input_ids"], mb["attention_mask"],
                            temperature=cfg.temperature,
                        )  # fmt: skip
                    if self.reference is not None:
                        with torch.inference_mode():
                            rlp = logprobs_of(
                                self.reference,
                                mb["input_ids"],
                                mb["attention_mask"],
                                temperature=cfg.temperature,
                            )
                        ref.append(rlp.float())  # an inference tensor: read-only use below
                    if self.teacher is not None:
                        with torch.inference_mode():
                            tea.append(
                                logprobs_of(
                                    self.teacher, mb["input_ids"], mb["attention_mask"],
                                    temperature=cfg.temperature,
                                ).float()
                            )  # fmt: skip
                    v = self._values(mb)
                old.append(lp.float())
                if v is not None:
                    val.append(v.float())
        finally:
            self.policy.train()
        mask = roll.padded["loss_mask"].cpu().numpy()  # (B, T-1) bool; no copy on CPU
        split = np.cumsum(roll.response_lengths)[:-1]

        def response_tokens(parts: list[torch.Tensor]) -> list[np.ndarray]:
            # micro-batches are (b, w-1) with their own widths: right-pad to T-1, one copy
            # to the host, then the row-major boolean selection there (the order of
            # ``x[mask]`` on the device)
            t1 = mask.shape[1]
            full = torch.cat([F.pad(x, (0, t1 - x.shape[1])) for x in parts])
            return cast(list[np.ndarray], np.split(full.cpu().numpy()[mask], split))

        roll.logprobs = response_tokens(old)
        if ref:
            roll.ref_logprobs = response_tokens(ref)
        if val:
            roll.values = response_tokens(val)
        if ent:
            roll.entropies = response_tokens(ent)
        if tea:
            roll.teacher_logprobs = response_tokens(tea)

    def _values(self, micro: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """The value model's values (B, T-1), aligned with the logprobs: the value of the state
        before token ``j+1``."""
        if self.value_model is None:
            return None
        self.value_model.eval()
        try:
            model = D.unwrap_model(self.value_model)  # no grad: no DDP wrapper needed
            v = model(micro["input_ids"], micro["attention_mask"])  # (B, T)
        finally:
            self.value_model.train()
        return cast(torch.Tensor, v)[:, :-1]
