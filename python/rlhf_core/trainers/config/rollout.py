"""RolloutConfig: what a trainer that samples from its policy adds (see
:mod:`rlhf_core.trainers.config`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from rlhf_core.errors import check_field
from rlhf_core.trainers.config.base import TrainerConfig
from rlhf_core.trainers.generation_fields import GenerationFields

__all__ = ["RolloutConfig"]


@dataclass
class RolloutConfig(GenerationFields, TrainerConfig):
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
    reward_none_policy: Literal["skip_function", "unscorable"] = field(
        default="skip_function",
        metadata={
            "help": "a reward function returning None for a sample: 'skip_function' (TRL's "
            "rule) leaves that function out of the sample's weighted sum, the sample being "
            "unscorable only when every function of non-zero weight returned None; "
            "'unscorable' makes the sample unscorable (zero advantage) at the first None"
        },
    )
    allow_unscorable_steps: bool = field(
        default=False,
        metadata={
            "help": "a step whose samples are all unscorable (reward_none_policy says when a "
            "sample is) is an error; true: a warning with the counts, and the step trains on "
            "zero advantages"
        },
    )
    missing_eos_penalty: float = field(
        default=0.0,
        metadata={
            "help": "subtracted from the score of every completion that hit max_new_tokens "
            "without an EOS (0 = off; >= 0), so that a reward model cannot be gamed by "
            "never finishing"
        },
    )
    overlong_buffer_len: int | None = field(
        default=None,
        metadata={
            "help": "DAPO's soft overlong punishment: completions longer than max_new_tokens - "
            "this get a penalty ramping from 0 to -overlong_penalty_factor at max_new_tokens "
            "(a reward source 'soft_overlong_punishment' added to the others); none = off"
        },
    )
    overlong_penalty_factor: float = field(
        default=1.0,
        metadata={"help": "α of the soft overlong punishment (its reward weight; >= 0)"},
    )
    ensemble_reduce: Literal["mean", "min", "mean_minus_std", "mean_minus_var"] = field(
        default="mean",
        metadata={
            "help": "how a reward ensemble's members make one reward: 'mean', 'min' (worst "
            "case, WCO), 'mean_minus_std' (mean - lambda * std) or 'mean_minus_var' (mean - "
            "lambda * variance, UWO); every member and the std across them are logged"
        },
    )
    ensemble_lambda: float = field(
        default=1.0,
        metadata={"help": "lambda of mean_minus_std / mean_minus_var (>= 0)"},
    )
    sync_every: int = field(
        default=1,
        metadata={
            "help": "generation_backend 'vllm': load the policy's weights into the engine "
            "before a step's generation when it is this many steps behind (1 = the latest "
            "weights every step, TRL's and verl's default; k = up to k - 1 steps stale); 0 = "
            "never (a diagnostic: the mismatch metrics then show the drift)"
        },
    )
    track_kl: bool = field(
        default=True,
        metadata={
            "help": "log the samples' KL to the reference ('kl', one more forward per step); "
            "false with a KL coefficient of 0 builds no reference model at all (saves its "
            "memory, as TRL does with beta = 0)"
        },
    )
    log_completions: bool = field(
        default=False,
        metadata={
            "help": "every logging_steps, write the step's completions (prompt, completion, "
            "each reward source's score, total reward, advantage) to run_dir/samples.jsonl "
            "and to the trackers as the table 'completions', and print a few"
        },
    )
    num_completions_to_print: int | None = field(
        default=4,
        metadata={
            "help": "completions printed on the console at each logged step with "
            "log_completions (0 = none; none = all)"
        },
    )
    eval_steps: int = field(
        default=0,
        metadata={
            "help": "evaluate on the eval prompts every this many steps, logged under eval/ "
            "(0 = only at the end of training); needs an eval dataset"
        },
    )
    num_generations_eval: int | None = field(
        default=None,
        metadata={"help": "completions per eval prompt; none = num_samples"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        from rlhf_core.rewards.ensemble import ENSEMBLE_REDUCTIONS

        check_field(
            self.ensemble_reduce in ENSEMBLE_REDUCTIONS,
            "ensemble_reduce",
            self.ensemble_reduce,
            f"expected one of {ENSEMBLE_REDUCTIONS}",
        )
        check_field(
            math.isfinite(self.ensemble_lambda) and self.ensemble_lambda >= 0,
            "ensemble_lambda",
            self.ensemble_lambda,
            "expected a finite value >= 0",
        )
        self.check_generation_fields()
        check_field(
            self.sync_every >= 0, "sync_every", self.sync_every, "expected >= 1, or 0 = never"
        )
        check_field(
            self.num_completions_to_print is None or self.num_completions_to_print >= 0,
            "num_completions_to_print",
            self.num_completions_to_print,
            "expected >= 0 (0 = print none) or none (print all)",
        )
        check_field(
            self.eval_steps >= 0, "eval_steps", self.eval_steps, "expected >= 0 (0 = at the end)"
        )
        check_field(
            self.num_generations_eval is None or self.num_generations_eval >= 1,
            "num_generations_eval",
            self.num_generations_eval,
            "expected >= 1 or none (= num_samples)",
        )
        check_field(
            math.isfinite(self.missing_eos_penalty) and self.missing_eos_penalty >= 0,
            "missing_eos_penalty",
            self.missing_eos_penalty,
            "expected a finite value >= 0 (0 = off)",
        )
        check_field(
            self.reward_none_policy in ("skip_function", "unscorable"),
            "reward_none_policy",
            self.reward_none_policy,
            "expected 'skip_function' or 'unscorable'",
        )
        check_field(
            self.reward_weights is None or all(math.isfinite(w) for w in self.reward_weights),
            "reward_weights",
            self.reward_weights,
            "every weight must be a finite number (0 tracks a source without optimising it)",
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
        check_field(
            self.overlong_buffer_len is None
            or 1 <= self.overlong_buffer_len <= self.max_new_tokens,
            "overlong_buffer_len",
            self.overlong_buffer_len,
            f"expected in [1, max_new_tokens={self.max_new_tokens}] or none (DAPO: 4096 of 20480)",
        )
        check_field(
            math.isfinite(self.overlong_penalty_factor) and self.overlong_penalty_factor >= 0,
            "overlong_penalty_factor",
            self.overlong_penalty_factor,
            "expected a finite value >= 0 (DAPO: 1.0)",
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

    @property
    def needs_reference(self) -> bool:
        """Whether the trainer builds the frozen reference: for the KL it logs
        (``track_kl``) or, in :class:`RLConfig`, optimises."""
        return self.track_kl

    @property
    def eval_generations(self) -> int:
        """Completions per eval prompt (``num_generations_eval``, else ``num_samples``)."""
        return self.num_generations_eval or self.num_samples
