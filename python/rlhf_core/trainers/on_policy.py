"""The on-policy loop shared by PPO, GRPO, RLOO and REINFORCE++.

One training step::

    generation   draw prompts (seeded, resumable), sample completions from the policy
    scoring      reward functions / reward models -> one score per completion (NaN =
                 unscorable); forward passes without grad for the rollout policy's logprobs,
                 the frozen reference's logprobs (and the value model's values, PPO)
    bookkeeping  RolloutBuffer (Rust): add the ragged rollout, compute advantages
    training     ppo_epochs x shuffled minibatches from the buffer, split into micro-batches;
                 losses from rlhf_core.losses normalised by the minibatch's global token /
                 sequence counts; one optimizer step per minibatch

Subclasses choose the advantage estimator (:meth:`OnPolicyTrainer.compute_advantages`) and may
add a value model (:meth:`OnPolicyTrainer.rollout_values`, :meth:`OnPolicyTrainer.loss`).

Token alignment: every per-token tensor here is ``(B, T-1)`` and aligned with
:func:`rlhf_core.models.token_logprobs` (column ``j`` is about token ``j+1``), the same
alignment as the buffer's materialised ``response_mask``.

Several processes (``torchrun``): every rank draws the same global prompts and keeps a
contiguous block of whole prompts (all G samples of a prompt on one rank, so group statistics
stay local); group ids are global prompt positions. The buffer holds the rank's rollout;
what spans the batch (batch-scaled group advantages, token whitening, advantage and rollout
metrics) is reduced over ranks, minibatches are ``minibatch_size / world_size`` local rows,
losses use the global token / sequence counts and ``× world_size`` before ``backward`` (DDP and
FSDP2 average gradients). With ``per_prompt_seeds`` a prompt's samples do not depend on the
rank that draws them, so the whole step equals a single-process step on the same prompts
(when each optimizer step sees the whole rollout; with smaller minibatches each rank shuffles
its own rows). See ``docs/scaling.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from rlhf_core import distributed as D
from rlhf_core import losses as L
from rlhf_core.trainers.base import (
    Trainer,
    TrainerConfig,
    check_field,
    iter_micro_batches,
    logprobs_and_entropy,
    logprobs_of,
    pad_sequences,
    step_seed,
)

__all__ = [
    "RolloutConfig",
    "RLConfig",
    "RolloutTrainer",
    "OnPolicyTrainer",
    "RewardSource",
    "Rollout",
    "prompt_table",
]

RewardSource = Callable[..., Any] | nn.Module


@dataclass
class RolloutConfig(TrainerConfig):
    """Fields of every trainer that samples from its policy (on-policy RL, best-of-N)."""

    rollout_batch_size: int = field(
        default=32,
        metadata={"help": "completions generated per step (prompts per step × num_samples)"},
    )
    num_samples: int = field(
        default=1, metadata={"help": "completions per prompt (G, the group of group methods)"}
    )
    max_new_tokens: int = field(
        default=64,
        metadata={
            "help": "most tokens per completion; also the constant L of seq-mean-token-sum-norm"
        },
    )
    temperature: float = field(
        default=1.0,
        metadata={"help": "sampling temperature (> 0); logprobs in the loss use it too"},
    )
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass (1 = off)"})
    top_k: int = field(default=0, metadata={"help": "top-k sampling (0 = off)"})
    generation_batch_size: int | None = field(
        default=None, metadata={"help": "rows per generate call; none = all at once"}
    )
    fast_generation: bool = field(
        default=True,
        metadata={
            "help": "on CUDA, sample with rlhf_core's decode loop (static KV cache, decode "
            "step compiled into CUDA-graph replay; the first step compiles, tens of seconds); "
            "falls back to HF generate with a warning; no effect on the CPU"
        },
    )
    per_prompt_seeds: bool = field(
        default=False,
        metadata={
            "help": "sample each prompt's completions in their own generate call, seeded from "
            "(seed, step, position of the prompt in the step): samples then do not depend on "
            "the number of processes, generation_batch_size or the other prompts (slower: one "
            "call per prompt)"
        },
    )
    micro_batch_size: int | None = field(
        default=None,
        metadata={"help": "sequences per forward/backward (accumulation); none = minibatch"},
    )
    reward_weights: list[float] | None = field(
        default=None, metadata={"help": "weight of each reward source; none = all 1"}
    )
    missing_eos_penalty: float = field(
        default=0.0,
        metadata={
            "help": "subtracted from the score of every completion that hit max_new_tokens "
            "without an EOS (0 = off; >= 0), so that a reward model cannot be gamed by "
            "never finishing"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_field(
            math.isfinite(self.missing_eos_penalty) and self.missing_eos_penalty >= 0,
            "missing_eos_penalty",
            self.missing_eos_penalty,
            "expected a finite value >= 0 (0 = off)",
        )
        check_field(self.num_samples >= 1, "num_samples", self.num_samples, "expected >= 1 sample")
        check_field(
            self.rollout_batch_size >= 1,
            "rollout_batch_size",
            self.rollout_batch_size,
            "expected >= 1",
        )
        if self.rollout_batch_size % self.num_samples:
            k = self.num_samples
            fix = (self.rollout_batch_size // k + 1) * k
            raise ValueError(
                f"rollout_batch_size={self.rollout_batch_size} is not divisible by "
                f"num_samples={k}: each prompt gets {k} samples, so set rollout_batch_size to "
                f"a multiple of {k} (e.g. {fix})"
            )
        check_field(
            self.max_new_tokens >= 1, "max_new_tokens", self.max_new_tokens, "expected >= 1"
        )
        check_field(self.temperature > 0, "temperature", self.temperature, "expected > 0")
        check_field(0 < self.top_p <= 1, "top_p", self.top_p, "expected in (0, 1]")
        check_field(self.top_k >= 0, "top_k", self.top_k, "expected >= 0 (0 = off)")
        check_field(
            self.generation_batch_size is None or self.generation_batch_size >= 1,
            "generation_batch_size",
            self.generation_batch_size,
            "expected >= 1 or none",
        )
        check_field(
            self.micro_batch_size is None or self.micro_batch_size >= 1,
            "micro_batch_size",
            self.micro_batch_size,
            "expected >= 1 or none",
        )

    @property
    def prompts_per_step(self) -> int:
        return self.rollout_batch_size // self.num_samples


@dataclass
class RLConfig(RolloutConfig):
    """Fields shared by the policy-gradient trainers (PPO, GRPO, RLOO, REINFORCE++)."""

    ppo_epochs: int = field(
        default=1,
        metadata={"help": "passes over each rollout batch (μ, 'num_iterations' in GRPO)"},
    )
    minibatch_size: int | None = field(
        default=None,
        metadata={"help": "sequences per optimizer step; none = rollout_batch_size"},
    )
    clip_low: float = field(default=0.2, metadata={"help": "PPO clip ε_low"})
    clip_high: float | None = field(
        default=None, metadata={"help": "PPO clip ε_high (DAPO clip-higher); none = clip_low"}
    )
    dual_clip: float | None = field(
        default=None,
        metadata={"help": "dual-clip bound c > 1 for negative advantages (e.g. 3); none = off"},
    )
    log_ratio_clamp: float | None = field(
        default=20.0, metadata={"help": "clamp log π/π_old to ±this before exp; none = off"}
    )
    aggregation: str = field(
        default="token-mean",
        metadata={"help": f"loss aggregation, one of {', '.join(L.AGGREGATIONS)}"},
    )
    kl_coef: float = field(
        default=0.0, metadata={"help": "β, weight of the KL to the reference (>= 0)"}
    )
    kl_estimator: str = field(
        default="k3", metadata={"help": f"KL estimator, one of {', '.join(L.KL_ESTIMATORS)}"}
    )
    kl_in_reward: bool = field(
        default=False,
        metadata={"help": "KL as a per-token reward penalty (true) or a loss term (false)"},
    )
    kl_clamp: float | None = field(
        default=10.0,
        metadata={"help": "clamp each per-token KL estimate to ±this (OpenRLHF: 10); none = off"},
    )
    entropy_coef: float = field(
        default=0.0, metadata={"help": "entropy bonus coefficient (>= 0; entropy is logged)"}
    )
    mask_truncated: bool = field(
        default=False,
        metadata={"help": "leave completions without EOS out of the loss (DAPO overlong mask)"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_field(self.ppo_epochs >= 1, "ppo_epochs", self.ppo_epochs, "expected >= 1")
        if self.minibatch_size is not None:
            check_field(
                self.minibatch_size >= 1 and self.rollout_batch_size % self.minibatch_size == 0,
                "minibatch_size",
                self.minibatch_size,
                f"expected a divisor of rollout_batch_size={self.rollout_batch_size} "
                "(every optimizer step sees the same number of sequences)",
            )
        check_field(self.clip_low >= 0, "clip_low", self.clip_low, "expected >= 0 (e.g. 0.2)")
        check_field(
            self.clip_high is None or self.clip_high >= 0,
            "clip_high",
            self.clip_high,
            "expected >= 0 (e.g. 0.28) or none",
        )
        check_field(
            self.dual_clip is None or self.dual_clip > 1,
            "dual_clip",
            self.dual_clip,
            "expected > 1 (e.g. 3.0) or none",
        )
        check_field(
            self.log_ratio_clamp is None or self.log_ratio_clamp > 0,
            "log_ratio_clamp",
            self.log_ratio_clamp,
            "expected > 0 (e.g. 20) or none",
        )
        check_field(
            self.aggregation in L.AGGREGATIONS,
            "aggregation",
            self.aggregation,
            f"unknown loss aggregation; expected one of {L.AGGREGATIONS}",
        )
        check_field(
            self.kl_coef >= 0,
            "kl_coef",
            self.kl_coef,
            "the KL coefficient beta must be >= 0 (0 disables the KL term)",
        )
        check_field(
            self.kl_estimator in L.KL_ESTIMATORS,
            "kl_estimator",
            self.kl_estimator,
            f"expected one of {L.KL_ESTIMATORS}",
        )
        check_field(
            self.kl_clamp is None or self.kl_clamp > 0,
            "kl_clamp",
            self.kl_clamp,
            "expected > 0 (e.g. 10) or none",
        )
        check_field(self.entropy_coef >= 0, "entropy_coef", self.entropy_coef, "expected >= 0")


def prompt_table(prompts: Any) -> tuple[list[str], dict[str, list[Any]]]:
    """Prompt texts and the extra columns (for reward functions) from a
    :class:`rlhf_core.data.PromptDataset`, a list of strings, or a list of mappings with a
    ``prompt`` key (every other key becomes a column; all rows must have the same keys)."""
    if hasattr(prompts, "prompts") and hasattr(prompts, "columns"):
        return [str(p) for p in prompts.prompts], {
            k: list(v) for k, v in dict(prompts.columns).items()
        }
    texts: list[str] = []
    columns: dict[str, list[Any]] = {}
    keys: set[str] | None = None
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            row_keys: set[str] = set()
            texts.append(p)
        elif isinstance(p, Mapping):
            if "prompt" not in p:
                raise ValueError(f"prompts[{i}] has no 'prompt' key (keys: {sorted(p)})")
            texts.append(str(p["prompt"]))
            row_keys = {str(k) for k in p if k != "prompt"}
            for k in row_keys:
                columns.setdefault(k, []).append(p[k])
        else:
            raise ValueError(
                f"prompts[{i}] is a {type(p).__name__}; expected a string or a mapping with "
                "'prompt'"
            )
        if keys is None:
            keys = row_keys
        elif row_keys != keys:
            raise ValueError(
                f"prompts[{i}] has columns {sorted(row_keys)} but earlier rows have "
                f"{sorted(keys)}: every row needs the same columns"
            )
    if not texts:
        raise ValueError("prompts is empty")
    return texts, columns


@dataclass
class Rollout:
    """One step's sampled completions and everything computed about them.

    Ragged per-token arrays are float32 (R_i,) per sequence (aligned with response tokens);
    ``padded`` is the model input of the whole rollout (``input_ids``, ``attention_mask``,
    ``loss_mask`` (N, T-1) marking response tokens)."""

    prompt_ids: list[np.ndarray]
    response_ids: list[np.ndarray]
    group_ids: np.ndarray
    truncated: np.ndarray
    texts: list[str]
    prompt_index: np.ndarray
    scores: np.ndarray
    score_parts: dict[str, np.ndarray]
    padded: dict[str, torch.Tensor]
    logprobs: list[np.ndarray] = field(default_factory=list)
    ref_logprobs: list[np.ndarray] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)

    @property
    def response_lengths(self) -> np.ndarray:
        return np.array([len(r) for r in self.response_ids], dtype=np.int64)


class RolloutTrainer(Trainer):
    """Base of the trainers that sample from their policy: prompts, reward sources, the frozen
    reference, generation, scoring and the no-grad forward passes over a rollout.

    Args:
        config: a :class:`RolloutConfig` subclass.
        policy: an HF causal LM (trained in place; moved to the config's device).
        tokenizer: its tokenizer (pad and EOS tokens).
        prompts: a :class:`rlhf_core.data.PromptDataset`, strings, or mappings with
            ``prompt`` plus extra columns handed to reward functions (e.g. ``answer``).
        reward_funcs: one reward source or a list: functions
            ``fn(prompts, completions, **columns) -> list[float | None]`` and/or
            :class:`rlhf_core.models.RewardModel` instances (frozen; scored on token ids),
            weighted by ``config.reward_weights``.
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
        self.prompt_texts, self.prompt_columns = prompt_table(prompts)
        self.prompt_ids = [
            np.asarray(tokenizer(p, add_special_tokens=True)["input_ids"], dtype=np.int64)
            for p in self.prompt_texts
        ]
        for i, ids in enumerate(self.prompt_ids):
            if ids.size == 0:
                raise ValueError(f"prompts[{i}] encodes to no tokens")
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
        self.setup_optimization(self.policy, len(self.prompt_texts))

    # ---- rewards ----------------------------------------------------------------------------
    def _reward_sources(
        self, reward_funcs: RewardSource | Sequence[RewardSource]
    ) -> list[Callable[..., Any]]:
        from rlhf_core.rewards import RewardModelScorer

        items = (
            [reward_funcs]
            if callable(reward_funcs) or isinstance(reward_funcs, nn.Module)
            else list(reward_funcs)
        )
        if not items:
            raise ValueError("reward_funcs is empty: give at least one reward function or model")
        out: list[Callable[..., Any]] = []
        for i, src in enumerate(items):
            if isinstance(src, nn.Module):
                src.to(self.device).eval().requires_grad_(False)
                out.append(RewardModelScorer(self.wrap_frozen(src), self.tokenizer))
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

    def score(
        self, prompts: list[str], sequences: list[np.ndarray], texts: list[str], columns: dict
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Weighted sum of the reward sources: float64 (N,) (NaN where any source with a
        non-zero weight returned None) and each source's raw scores by name. A source with
        weight 0 is only logged (e.g. a gold reward watched while a proxy is optimised)."""
        from rlhf_core.rewards import (
            RewardModelScorer,
            call_reward_function,
            reward_function_name,
        )

        weights = self.config.reward_weights or [1.0] * len(self.reward_sources)
        total = np.zeros(len(texts), dtype=np.float64)
        parts: dict[str, np.ndarray] = {}
        for src, w in zip(self.reward_sources, weights, strict=True):
            if isinstance(src, RewardModelScorer):
                with self.autocast():  # like every other forward (bf16 on CUDA)
                    s = src.score_ids(sequences)  # the exact sampled tokens
            else:
                s = call_reward_function(src, prompts, texts, **columns)
            if w != 0:  # a weight-0 source is tracked (logged), not optimised
                total += float(w) * s
            name, k = reward_function_name(src), 0
            key = name
            while key in parts:
                k += 1
                key = f"{name}_{k}"
            parts[key] = s
        return total, parts

    def generate(self, step: int) -> Rollout:
        """Draw the step's prompts (the same global draw on every rank; this rank keeps its
        block) and sample ``num_samples`` completions of each. Group ids are positions in the
        step's global prompt list."""
        from rlhf_core.generation import generate

        cfg = self.config
        global_idx = self.sampler.next(cfg.prompts_per_step)
        mine = self.shard(len(global_idx))
        pidx = global_idx[mine]
        first = int(mine[0]) if len(mine) else 0
        if cfg.per_prompt_seeds:
            comp = self._generate_per_prompt(step, pidx, first)
        else:
            comp = generate(
                self.policy,
                self.tokenizer,
                [self.prompt_ids[i] for i in pidx],
                num_samples=cfg.num_samples,
                max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                top_k=cfg.top_k,
                # rank 0 keeps the run's seed, other ranks draw independent streams
                seed=step_seed(D.rank_seed(cfg.seed, self.dist.rank), step, 1),
                batch_size=cfg.generation_batch_size,
                fast=cfg.fast_generation,
                synced_gpus=True if self.lockstep_forwards else None,
            )
        empty = [i for i, r in enumerate(comp.response_ids) if len(r) == 0]
        if empty:
            raise RuntimeError(f"generation returned empty responses at rows {empty[:5]}")
        return Rollout(
            prompt_ids=comp.prompt_ids,
            response_ids=comp.response_ids,
            group_ids=comp.group_ids + first,
            truncated=comp.truncated,
            texts=comp.texts,
            prompt_index=pidx[comp.group_ids],
            scores=np.zeros(0),
            score_parts={},
            padded={},
        )

    def _generate_per_prompt(self, step: int, pidx: np.ndarray, first: int) -> Any:
        """One generate call per prompt, seeded by the prompt's global position
        ``first + j`` in the step: the samples of a prompt are the same whichever rank draws
        them and whatever else is sampled."""
        from rlhf_core.generation import Completions, generate

        cfg = self.config
        parts = [
            generate(
                self.policy,
                self.tokenizer,
                [self.prompt_ids[i]],
                num_samples=cfg.num_samples,
                max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                top_k=cfg.top_k,
                seed=step_seed(cfg.seed, step, 1, index=first + j),
                batch_size=cfg.generation_batch_size,
                fast=cfg.fast_generation,
                synced_gpus=True if self.lockstep_forwards else None,
            )
            for j, i in enumerate(pidx)
        ]
        return Completions(
            prompt_ids=[p for c in parts for p in c.prompt_ids],
            response_ids=[r for c in parts for r in c.response_ids],
            truncated=np.concatenate([c.truncated for c in parts]).astype(bool),
            group_ids=np.repeat(np.arange(len(parts), dtype=np.int64), cfg.num_samples),
            texts=[t for c in parts for t in c.texts],
            prompts=[t for c in parts for t in c.prompts],
        )

    def score_rollout(self, roll: Rollout) -> None:
        idx = roll.prompt_index
        prompts = [self.prompt_texts[i] for i in idx]
        columns = {k: [v[i] for i in idx] for k, v in self.prompt_columns.items()}
        seqs = [
            np.concatenate([p, r]) for p, r in zip(roll.prompt_ids, roll.response_ids, strict=True)
        ]
        roll.scores, roll.score_parts = self.score(prompts, seqs, roll.texts, columns)
        penalty = self.config.missing_eos_penalty
        if penalty:
            truncated = np.asarray(roll.truncated, dtype=bool)
            roll.scores = np.where(truncated, roll.scores - penalty, roll.scores)
        infinite = bool(np.isinf(roll.scores).any())
        # with several processes every rank checks, so that all stop when one finds an inf
        if infinite or self.dist.is_distributed:
            # None / NaN means unscorable and is fine; an infinite reward is a bug upstream
            self.check_finite(
                {
                    f"reward/{k}": np.nan_to_num(v, nan=0.0, posinf=np.inf, neginf=-np.inf)
                    for k, v in roll.score_parts.items()
                }
                if infinite
                else {},
                {
                    "prompt_ids": roll.prompt_ids,
                    "response_ids": roll.response_ids,
                    "completions": roll.texts,
                }
                if infinite
                else None,
            )

    @torch.no_grad()
    def forward_rollout(self, roll: Rollout) -> None:
        """Logprobs of the rollout policy and the reference (and values, via
        :meth:`rollout_values`) for every response token, without grad."""
        cfg = self.config
        seqs = [
            np.concatenate([p, r]) for p, r in zip(roll.prompt_ids, roll.response_ids, strict=True)
        ]
        roll.padded = pad_sequences(
            seqs,
            [len(p) for p in roll.prompt_ids],
            self.tokenizer.pad_token_id,
            device=self.device,
        )
        lengths = roll.response_lengths
        old: list[torch.Tensor] = []
        ref: list[torch.Tensor] = []
        val: list[torch.Tensor] = []
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
                    lp = logprobs_of(
                        policy,
                        mb["input_ids"],
                        mb["attention_mask"],
                        temperature=cfg.temperature,
                    )
                    with torch.inference_mode():
                        rlp = logprobs_of(
                            self.reference,
                            mb["input_ids"],
                            mb["attention_mask"],
                            temperature=cfg.temperature,
                        )
                    v = self.rollout_values(mb)
                old.append(lp.float())
                ref.append(rlp.float())  # an inference tensor: read-only use below
                if v is not None:
                    val.append(v.float())
        finally:
            self.policy.train()
        mask = roll.padded["loss_mask"].cpu().numpy()  # (B, T-1) bool; no copy on CPU
        split = np.cumsum(lengths)[:-1]

        def response_tokens(parts: list[torch.Tensor]) -> list[np.ndarray]:
            # micro-batches are (b, w-1) with their own widths: right-pad to T-1, one copy
            # to the host, then the row-major boolean selection there (the order of
            # ``x[mask]`` on the device)
            t1 = mask.shape[1]
            full = torch.cat([F.pad(x, (0, t1 - x.shape[1])) for x in parts])
            return np.split(full.cpu().numpy()[mask], split)

        roll.logprobs = response_tokens(old)
        roll.ref_logprobs = response_tokens(ref)
        if val:
            roll.values = response_tokens(val)

    def rollout_values(self, micro: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """Values (B, T-1) aligned with logprobs, for trainers with a value model."""
        return None

    def gather(self, x: np.ndarray) -> np.ndarray:
        """The 1-D per-sequence (or per-token) array ``x`` of every rank, in rank order, which
        is the single-process order of the global batch (``x`` itself for one process)."""
        out, _ = D.all_gather_ragged(np.asarray(x), self.dist)
        return out

    def rollout_metrics(self, roll: Rollout) -> dict[str, float]:
        """Reward, length and KL statistics of the global rollout (per-sequence values of every
        rank are gathered first, so the numbers are those of a single process)."""
        s = self.gather(roll.scores)
        finite = s[np.isfinite(s)]
        lengths = roll.response_lengths
        all_lengths = self.gather(lengths)
        metrics: dict[str, float] = {
            "reward/mean": float(finite.mean()) if finite.size else float("nan"),
            "reward/std": float(finite.std()) if finite.size else float("nan"),
            "reward/min": float(finite.min()) if finite.size else float("nan"),
            "reward/max": float(finite.max()) if finite.size else float("nan"),
            "reward/frac_unscorable": float(np.mean(~np.isfinite(s))),
            "response_length/mean": float(all_lengths.mean()),
            "response_length/min": float(all_lengths.min()),
            "response_length/max": float(all_lengths.max()),
            "response_length/frac_truncated": float(
                np.mean(self.gather(np.asarray(roll.truncated, dtype=bool)))
            ),
        }
        for name, part in roll.score_parts.items():
            part = self.gather(part)
            ok = part[np.isfinite(part)]
            metrics[f"reward/{name}"] = float(ok.mean()) if ok.size else float("nan")
        if not roll.logprobs:
            return metrics
        old = np.concatenate(roll.logprobs).astype(np.float64)
        ref = np.concatenate(roll.ref_logprobs).astype(np.float64)
        delta = old - ref
        seq_kl = np.add.reduceat(delta, np.concatenate([[0], np.cumsum(lengths)[:-1]]))
        seq_kl, delta = self.gather(seq_kl), self.gather(delta)
        metrics["kl"] = float(seq_kl.mean())  # Σ_t (log π − log π_ref), nats per sequence
        metrics["kl/k3_token_mean"] = float(np.mean(np.exp(-delta) + delta - 1.0))
        return metrics



class OnPolicyTrainer(RolloutTrainer):
    """Base of the policy-gradient trainers (PPO, GRPO, RLOO, REINFORCE++): the rollout goes
    into a :class:`rlhf_core.buffer.RolloutBuffer`, advantages come from its kernels, and the
    clipped surrogate is optimised over shuffled minibatches. See the module docstring.

    Arguments as :class:`RolloutTrainer`.
    """

    config: RLConfig

    def __init__(
        self,
        config: RLConfig,
        policy: nn.Module,
        tokenizer: Any,
        prompts: Any,
        reward_funcs: RewardSource | Sequence[RewardSource],
        *,
        reference: nn.Module | None = None,
    ) -> None:
        from rlhf_core.buffer import RolloutBuffer

        super().__init__(config, policy, tokenizer, prompts, reward_funcs, reference=reference)
        if config.minibatch_size is not None:
            self.check_divisible("minibatch_size", config.minibatch_size)
        self.buffer = RolloutBuffer()

    # ---- the step ---------------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, float]:
        with self.timer.phase("generation"):
            roll = self.generate(step)
        with self.timer.phase("scoring"):
            self.score_rollout(roll)
            self.forward_rollout(roll)
        with self.timer.phase("bookkeeping"):
            metrics = self.rollout_metrics(roll)
            metrics.update(self.fill_buffer(roll))
        with self.timer.phase("training"):
            metrics.update(self.update(step))
            self.scheduler.step()
        metrics.update(self.after_update(metrics))
        return metrics

    def loss_mask(self, roll: Rollout) -> list[np.ndarray] | None:
        """Per-token bool masks of the tokens that count in the loss, or None (all count).
        With ``mask_truncated``, completions that hit ``max_new_tokens`` drop out entirely."""
        if not self.config.mask_truncated:
            return None
        return [
            np.full(len(r), not t, dtype=bool)
            for r, t in zip(roll.response_ids, roll.truncated, strict=True)
        ]

    def fill_buffer(self, roll: Rollout) -> dict[str, float]:
        """Put the rollout into the buffer and compute advantages; return their metrics."""
        self.buffer.clear()
        fields: dict[str, Any] = dict(
            prompt_ids=roll.prompt_ids,
            response_ids=roll.response_ids,
            logprobs=roll.logprobs,
            ref_logprobs=roll.ref_logprobs,
            scores=roll.scores,
            group_ids=roll.group_ids,
            truncated=roll.truncated,
        )
        if roll.values:
            fields["values"] = roll.values
        mask = self.loss_mask(roll)
        if mask is not None:
            fields["loss_mask"] = mask
        fields.update(self.extra_buffer_fields(roll))
        self.buffer.add(**fields)
        return self.compute_advantages(roll)

    def extra_buffer_fields(self, roll: Rollout) -> dict[str, Any]:
        """Fields that replace or extend the defaults of :meth:`fill_buffer` (e.g. scores with
        a KL penalty subtracted)."""
        return {}

    def compute_advantages(self, roll: Rollout) -> dict[str, float]:
        raise NotImplementedError

    # ---- advantages over several processes ----------------------------------------------------
    def _valid_tokens(self) -> np.ndarray:
        """bool (num_response_tokens,): the tokens the buffer's estimators train on —
        ``loss_mask`` (if held) and the sequence's score not NaN."""
        buf = self.buffer
        valid = (
            buf.field("loss_mask").astype(bool)
            if "loss_mask" in buf.token_fields
            else np.ones(buf.num_response_tokens, dtype=bool)
        )
        if "scores" in buf.sequence_fields:
            nan = np.isnan(buf.field("scores").astype(np.float64))
            if nan.any():
                valid &= ~np.repeat(nan, buf.lengths("response"))
        return valid

    def _valid_counts(self, valid: np.ndarray) -> np.ndarray:
        """int64 (N,) number of valid tokens of each sequence."""
        c = np.concatenate([[0], np.cumsum(valid, dtype=np.int64)])
        off = self.buffer.offsets("response")
        return c[off[1:]] - c[off[:-1]]

    def whiten_advantages_globally(self, estimator: str, eps: float = 1e-8) -> None:
        """Whiten the buffer's advantages (computed with ``whiten="none"``) with the mean and
        variance of the valid tokens of **every rank**, as the buffer's ``whiten="token"``
        does for a single process: per-token advantages with the unbiased variance, masked
        tokens 0; per-sequence advantages weighted by their number of valid tokens
        (population variance)."""
        buf = self.buffer
        info = buf.advantages_info or {}
        adv = buf.field("advantages")
        valid = self._valid_tokens()
        if info.get("level") == "token":
            white = D.global_masked_whiten(adv, valid, self.dist, ddof=1, eps=eps)
            returns = buf.field("returns") if info.get("has_returns") else None
            buf.set_advantages(white, returns=returns, estimator=estimator)
            return
        counts = self._valid_counts(valid)
        mom = D.global_masked_moments(
            np.repeat(adv.astype(np.float64), counts), None, self.dist, ddof=0
        )
        white = np.where(
            counts > 0, (adv.astype(np.float64) - mom.mean) / np.sqrt(mom.var + eps), 0.0
        )
        buf.set_advantages(white.astype(adv.dtype), estimator=estimator)

    def global_advantage_stats(self, local: Mapping[str, float]) -> dict[str, float]:
        """The buffer's advantage statistics (``mean``, ``std`` (ddof 0), ``min``, ``max`` over
        valid tokens, or over sequences with a valid token for per-sequence advantages; group
        counts and ``frac_zero_std``) over every rank's rollout."""
        buf = self.buffer
        adv = buf.field("advantages").astype(np.float64)
        valid = self._valid_tokens()
        if (buf.advantages_info or {}).get("level") == "sequence":
            valid = self._valid_counts(valid) > 0
        out: dict[str, float] = {}
        mom = D.global_masked_moments(adv, valid, self.dist, ddof=0)
        if mom.count > 0:
            have = bool(valid.any())
            lo = D.all_reduce_min(float(adv[valid].min()) if have else np.inf, self.dist)
            hi = D.all_reduce_max(float(adv[valid].max()) if have else -np.inf, self.dist)
            out.update(mean=float(mom.mean), std=float(np.sqrt(mom.var)), min=lo, max=hi)
        keys = ("num_groups", "num_nan", "num_singleton", "num_zero_std")
        if all(k in local for k in keys):
            sums = D.all_reduce_sum(np.array([local[k] for k in keys], dtype=np.float64), self.dist)
            out.update(zip(keys, (float(v) for v in sums), strict=True))
            out["frac_zero_std"] = out["num_zero_std"] / out["num_groups"] if sums[0] else 0.0
        return out

    # ---- the update -------------------------------------------------------------------------
    def update(self, step: int) -> dict[str, float]:
        """ppo_epochs × minibatches; one optimizer step per minibatch. Returns metrics averaged
        over the optimizer steps (``*_min`` / ``*_max``: extremes).

        With several processes each rank iterates over ``minibatch_size / world_size`` of its
        own rows per minibatch; token counts, the loss scale and metrics are global."""
        cfg = self.config
        mbs = (cfg.minibatch_size or cfg.rollout_batch_size) // self.world_size
        sums: dict[str, float] = {}
        n_steps = 0
        self.policy.train()
        for mb in self.buffer.minibatches(
            batch_size=mbs, epochs=cfg.ppo_epochs, seed=step_seed(cfg.seed, step, 2)
        ):
            padded = mb.to_padded(pad_token_id=self.tokenizer.pad_token_id, device=self.device)
            batch = {k: v for k, v in padded.items() if isinstance(v, torch.Tensor)}
            # counts of the global minibatch: the same on every rank, so is the skip below
            n_tok, n_seq = D.global_token_counts(batch["response_mask"], self.dist)
            if n_tok == 0:
                continue  # every sequence masked out (e.g. all truncated)
            # dumped on a non-finite loss; scores may be NaN by design (unscorable), so they
            # ride along unchecked
            self._last_batch = {k: v for k, v in batch.items() if k != "scores"}
            if "scores" in batch:
                self._last_batch["unchecked"] = {"scores": batch["scores"]}
            totals: dict[str, torch.Tensor] = {}
            micros = list(iter_micro_batches(batch, cfg.micro_batch_size, lengths=mb.lengths))
            for i, micro in enumerate(micros):
                # gradients are synchronised once, in the last micro-batch's backward
                with self.no_sync(*self.synced_models(), enabled=i < len(micros) - 1):
                    out = self.loss(micro, n_tok, n_seq)
                    self.backward(out.loss)
                L.merge_metrics(totals, out.metrics)
            mb_metrics = self.reduce_metrics(totals)
            mb_metrics.update(self.optimizer_steps(mb_metrics))
            n_steps += 1
            for k, v in mb_metrics.items():
                if k.endswith("_min"):
                    sums[k] = min(sums.get(k, v), v)
                elif k.endswith("_max"):
                    sums[k] = max(sums.get(k, v), v)
                else:
                    sums[k] = sums.get(k, 0.0) + v
        out_metrics = {
            k: (v if k.endswith(("_min", "_max")) else v / max(n_steps, 1)) for k, v in sums.items()
        }
        out_metrics["optimizer_steps"] = float(n_steps)
        return out_metrics

    def synced_models(self) -> list[nn.Module]:
        """The (wrapped) models whose gradients the loss's backward synchronises."""
        return [self.policy]

    def optimizer_steps(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """Clip, check and step the optimizer(s); return their metrics."""
        return {"grad_norm": self.optimizer_step(self.optimizer, self.params, metrics)}

    def policy_loss(
        self, micro: Mapping[str, torch.Tensor], n_tok: int, n_seq: int
    ) -> L.LossOutput:
        """Clipped surrogate + (KL in the loss) + entropy bonus for one micro-batch."""
        cfg = self.config
        with self.autocast():
            logp, ent = logprobs_and_entropy(
                self.policy,
                micro["input_ids"],
                micro["attention_mask"],
                temperature=cfg.temperature,
            )
        mask = micro["response_mask"]
        kw: dict[str, Any] = dict(
            aggregation=cfg.aggregation,
            num_tokens=n_tok,
            num_seqs=n_seq,
            max_len=cfg.max_new_tokens,
        )
        out = L.ppo_policy_loss(
            logp,
            micro["old_logprobs"],
            micro["advantages"],
            mask,
            clip_low=cfg.clip_low,
            clip_high=cfg.clip_high,
            dual_clip=cfg.dual_clip,
            log_ratio_clamp=cfg.log_ratio_clamp,
            **kw,
        )
        beta = self.current_kl_coef()
        if beta > 0 and not cfg.kl_in_reward:
            out = out + L.kl_penalty(
                logp,
                micro["ref_logprobs"],
                mask,
                coef=beta,
                estimator=cfg.kl_estimator,
                clamp=cfg.kl_clamp,
                **kw,
            )
        out = out + L.entropy_bonus(ent, mask, coef=cfg.entropy_coef, **kw)
        return out

    def current_kl_coef(self) -> float:
        """β used this step (PPO's adaptive controller overrides it)."""
        return self.config.kl_coef

    def loss(self, micro: Mapping[str, torch.Tensor], n_tok: int, n_seq: int) -> L.LossOutput:
        return self.policy_loss(micro, n_tok, n_seq)

    def after_update(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """Hook after the update (e.g. the KL controller); returns extra metrics."""
        return {}

    # ---- checkpoint -------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "buffer": self.buffer.state_dict()}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        super().load_extra_state(state)
        if "buffer" in state:
            self.buffer.load_state_dict(state["buffer"])
