"""The config dataclasses every trainer builds on.

- :class:`TrainerConfig`: run folder, steps, optimiser, schedule, checkpoints, logging,
  device, parallelism, LoRA, chat-template options; every trainer's config subclasses it.
- :class:`GenerationFields`: which rollout backend samples (``generation_backend``) and the
  vLLM engine's settings; in every :class:`RolloutConfig` and in the CLI's ``label`` / ``eval``.
- :class:`RolloutConfig`: what a trainer that samples from its policy adds (batch of
  completions, sampling, reward weights, weight sync, the reference); best-of-N and the
  policy-gradient trainers.
- :class:`RLConfig`: the policy-gradient fields (epochs, minibatches, clipping, aggregation,
  KL, entropy, rollout/trainer mismatch correction); PPO, GRPO, RLOO, REINFORCE++.

Every field carries ``metadata["help"]`` (the CLI builds its flags from them) and every
``__post_init__`` rejects a bad value with a message naming the field, its value and the fix.
One concern, several classes: the file is long because the fields are documented one by one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from rlhf_core import losses as L
from rlhf_core import losses_correction as LC
from rlhf_core.errors import check_field
from rlhf_core.monitor.tracking import REPORT_TO
from rlhf_core.trainers.generation_fields import GenerationFields

__all__ = ["GenerationFields", "LR_SCHEDULERS", "RLConfig", "RolloutConfig", "TrainerConfig"]

#: ``lr_scheduler`` values: rlhf-core's three, then every ``transformers`` schedule that
#: follows the step count (``transformers.SchedulerType`` without the loss-driven
#: ``reduce_lr_on_plateau`` and ``greedy``); see :func:`rlhf_core.trainers.optim.build_scheduler`
LR_SCHEDULERS = (
    "constant",
    "linear",
    "cosine",
    "constant_with_warmup",
    "cosine_with_restarts",
    "polynomial",
    "inverse_sqrt",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
)


@dataclass
class TrainerConfig:
    """Fields shared by every trainer: run folder, steps, optimiser, schedule, checkpoints,
    logging and device. Trainer configs subclass it."""

    run_dir: str = field(
        default="runs/run",
        metadata={"help": "folder for metrics.jsonl, TensorBoard events, checkpoints, dumps"},
    )
    seed: int = field(
        default=0, metadata={"help": "seed of every random choice (data order, sampling)"}
    )
    total_steps: int = field(
        default=100, metadata={"help": "number of training steps (one step = one update round)"}
    )
    learning_rate: float = field(default=1e-5, metadata={"help": "peak AdamW learning rate"})
    lr_scheduler: str = field(
        default="constant",
        metadata={
            "help": "learning-rate schedule over total_steps (TRL: lr_scheduler_type), stepped "
            "once per trainer step: constant, linear, cosine (after the warm-up), or any "
            "schedule of transformers.get_scheduler: " + ", ".join(LR_SCHEDULERS[3:])
        },
    )
    lr_scheduler_kwargs: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "extra arguments of a transformers schedule, e.g. {min_lr_rate = 0.1} for "
            "cosine_with_min_lr, {num_decay_steps = 20} for warmup_stable_decay"
        },
    )
    warmup_steps: int = field(
        default=0,
        metadata={
            "help": "steps of linear warm-up to learning_rate (step s of the warm-up uses "
            "(s + 1) / (warmup_steps + 1) of it, so no step runs at 0)"
        },
    )
    warmup_ratio: float = field(
        default=0.0,
        metadata={
            "help": "warm-up as a share of total_steps, in [0, 1): ceil(warmup_ratio × "
            "total_steps) steps (when warmup_steps is 0)"
        },
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW decoupled weight decay"})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2"})
    adam_eps: float = field(default=1e-8, metadata={"help": "AdamW epsilon"})
    max_grad_norm: float | None = field(
        default=1.0, metadata={"help": "clip the global gradient norm to this; none = no clip"}
    )
    save_every: int = field(
        default=0,
        metadata={"help": "save a checkpoint every this many steps (0 = only at the end)"},
    )
    keep_last: int = field(default=2, metadata={"help": "checkpoints to keep (older ones removed)"})
    resume: bool = field(
        default=True,
        metadata={
            "help": "continue from the latest checkpoint in run_dir when there is one (false: "
            "refuse a run_dir that already holds checkpoints)"
        },
    )
    resume_last_good: bool = field(
        default=False,
        metadata={
            "help": "when the latest checkpoint is damaged (a file truncated or changed: its "
            "SHA-256 does not match), continue from the newest intact one instead of "
            "stopping; the damaged one is moved aside as damaged_step_N"
        },
    )
    progress_bar: bool = field(default=True, metadata={"help": "show a tqdm progress bar"})
    tensorboard: bool = field(
        default=True,
        metadata={
            "help": "also write TensorBoard events when the tensorboard package is installed "
            "(an alias that adds 'tensorboard' to report_to without requiring the package; "
            "report_to = ['none'] turns it off too)"
        },
    )
    report_to: list[str] = field(
        default_factory=list,
        metadata={
            "help": "experiment trackers that get the metrics besides metrics.jsonl (always "
            "written): any of " + ", ".join(REPORT_TO) + ", or ['none']; each an extra "
            "(pip install 'rlhf-core[wandb]'). CLI: --report_to wandb trackio, or wandb,trackio"
        },
    )
    run_name: str | None = field(
        default=None,
        metadata={"help": "the run's name in the trackers; none = the run_dir folder's name"},
    )
    logging_steps: int = field(
        default=1,
        metadata={
            "help": "send metrics to the trackers, fire on_log and log completions every this "
            "many steps (evaluations and the last step always); metrics.jsonl gets every step"
        },
    )
    device: str = field(
        default="auto", metadata={"help": "'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1'"}
    )
    bf16: bool = field(
        default=True, metadata={"help": "bf16 autocast for forward passes on CUDA (no-op on CPU)"}
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "recompute each transformer layer's activations in the backward pass "
            "instead of keeping them (HF gradient checkpointing, non-reentrant) for the trained "
            "models: less memory, about one more forward of compute"
        },
    )
    parallel: Literal["ddp", "fsdp2"] = field(
        default="ddp",
        metadata={
            "help": "under torchrun: 'ddp' (a full replica per process) or 'fsdp2' (parameters, "
            "gradients and optimizer state sharded over processes); ignored with one process"
        },
    )
    lora_r: int = field(
        default=0,
        metadata={
            "help": "LoRA rank of the policy's adapters (through peft); 0 = full fine-tuning. "
            "With LoRA only the adapters train and the reference is the policy with its "
            "adapters disabled (no copy). The reward trainer trains adapters on the reward "
            "model's body and its score head in full"
        },
    )
    lora_alpha: float = field(
        default=16.0, metadata={"help": "LoRA scale α (the update is scaled by α / r); > 0"}
    )
    lora_dropout: float = field(
        default=0.0, metadata={"help": "dropout on the LoRA adapters' input, in [0, 1)"}
    )
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "module names that get adapters; none = the attention and MLP projections "
            "(q/k/v/o_proj, gate/up/down_proj); ['all-linear'] = every linear layer but the "
            "LM head"
        },
    )
    use_rslora: bool = field(
        default=False,
        metadata={"help": "rank-stabilised LoRA: scale the update by lora_alpha / sqrt(lora_r)"},
    )
    use_dora: bool = field(
        default=False,
        metadata={"help": "DoRA: weight-decomposed LoRA (a magnitude vector per adapted layer)"},
    )
    lora_modules_to_save: list[str] | None = field(
        default=None,
        metadata={
            "help": "modules trained in full next to the adapters and saved with them (e.g. "
            "['lm_head']); none = only the adapters (the reward model's score head always)"
        },
    )
    chat_template_kwargs: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "extra variables of the tokenizer's chat template when conversations are "
            "rendered, e.g. {enable_thinking = false}"
        },
    )

    def __post_init__(self) -> None:
        check_field(self.total_steps >= 1, "total_steps", self.total_steps, "expected >= 1")
        if isinstance(self.report_to, str):  # report_to="wandb" or "wandb,trackio"
            self.report_to = [p.strip() for p in self.report_to.split(",") if p.strip()]
        check_field(
            isinstance(self.report_to, (list, tuple))
            and all(r in (*REPORT_TO, "none") for r in self.report_to)
            and ("none" not in self.report_to or len(self.report_to) == 1),
            "report_to",
            self.report_to,
            f"expected a list of {', '.join(REPORT_TO)}, or ['none'] alone "
            "(e.g. ['wandb', 'tensorboard'])",
        )
        check_field(self.logging_steps >= 1, "logging_steps", self.logging_steps, "expected >= 1")
        check_field(
            self.learning_rate >= 0,
            "learning_rate",
            self.learning_rate,
            "expected >= 0 (e.g. 1e-5)",
        )
        check_field(
            self.lr_scheduler in LR_SCHEDULERS,
            "lr_scheduler",
            self.lr_scheduler,
            f"expected one of {', '.join(LR_SCHEDULERS)}",
        )
        check_field(
            self.lr_scheduler in LR_SCHEDULERS[3:] or not self.lr_scheduler_kwargs,
            "lr_scheduler_kwargs",
            self.lr_scheduler_kwargs,
            f"the {self.lr_scheduler!r} schedule takes no extra arguments; they are for the "
            "transformers schedules",
        )
        check_field(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, "expected >= 0")
        check_field(
            0 <= self.warmup_ratio < 1, "warmup_ratio", self.warmup_ratio, "expected in [0, 1)"
        )
        check_field(
            self.warmup_ratio == 0 or self.warmup_steps == 0,
            "warmup_ratio",
            self.warmup_ratio,
            f"set warmup_steps ({self.warmup_steps}) or warmup_ratio, not both",
        )
        check_field(self.weight_decay >= 0, "weight_decay", self.weight_decay, "expected >= 0")
        for name in ("adam_beta1", "adam_beta2"):
            v = getattr(self, name)
            check_field(0 <= v < 1, name, v, "expected in [0, 1)")
        check_field(self.adam_eps > 0, "adam_eps", self.adam_eps, "expected > 0 (e.g. 1e-8)")
        check_field(
            self.max_grad_norm is None or self.max_grad_norm > 0,
            "max_grad_norm",
            self.max_grad_norm,
            "expected > 0, or none to disable clipping",
        )
        check_field(
            self.save_every >= 0, "save_every", self.save_every, "expected >= 0 (0 = at the end)"
        )
        check_field(self.keep_last >= 1, "keep_last", self.keep_last, "expected >= 1")
        check_field(
            self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
            "device",
            self.device,
            "expected 'auto', 'cpu', 'cuda' or 'cuda:N'",
        )
        check_field(
            self.parallel in ("ddp", "fsdp2"),
            "parallel",
            self.parallel,
            "expected 'ddp' or 'fsdp2'",
        )
        check_field(self.lora_r >= 0, "lora_r", self.lora_r, "expected >= 0 (0 = no LoRA)")
        check_field(
            self.lora_alpha > 0, "lora_alpha", self.lora_alpha, "expected > 0 (e.g. 2 * lora_r)"
        )
        check_field(
            0 <= self.lora_dropout < 1, "lora_dropout", self.lora_dropout, "expected in [0, 1)"
        )
        targets = self.lora_target_modules
        check_field(
            targets is None
            or (len(targets) > 0 and all(isinstance(t, str) and t for t in targets)),
            "lora_target_modules",
            targets,
            "expected none or a non-empty list of module names (e.g. ['q_proj', 'v_proj'])",
        )
        saved = self.lora_modules_to_save
        check_field(
            saved is None or all(isinstance(t, str) and t for t in saved),
            "lora_modules_to_save",
            saved,
            "expected none or a list of module names (e.g. ['lm_head'])",
        )


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
        from rlhf_core.reward_ensemble import ENSEMBLE_REDUCTIONS

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
            f"expected in [1, max_new_tokens={self.max_new_tokens}] or none (DAPO: 4096 of "
            "20480)",
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
    importance_sampling_level: str = field(
        default="token",
        metadata={
            "help": "ratio of the policy loss: 'token' (PPO), 'sequence' (GSPO: the "
            "length-normalised sequence ratio; GSPO clips it with clip_low=3e-4, "
            "clip_high=4e-4) or 'sequence_token' (GSPO-token: per-token gradients); TRL's name"
        },
    )
    sapo_temperature_pos: float = field(
        default=1.0,
        metadata={"help": "SAPO gate temperature τ for positive advantages (loss_type='sapo')"},
    )
    sapo_temperature_neg: float = field(
        default=1.05,
        metadata={"help": "SAPO gate temperature τ for other advantages (loss_type='sapo')"},
    )
    cispo_ratio_max: float | None = field(
        default=None,
        metadata={
            "help": "CISPO (loss_type='cispo') weight cap as an absolute ratio, with no lower "
            "bound: TRL's epsilon_high for cispo (ScaleRL: 5.0); none = verl's bounds "
            "[1 - clip_low, 1 + clip_high] (clip_low >= 1: no lower bound)"
        },
    )
    top_entropy_quantile: float = field(
        default=1.0,
        metadata={
            "help": "train the policy loss only on this fraction of each minibatch's tokens, "
            "those of highest entropy (TRL; the paper uses 0.2; 1 = every token); the "
            "normaliser still counts every token"
        },
    )
    clip_cov_ratio: float = field(
        default=0.0,
        metadata={
            "help": "Clip-Cov (verl loss_mode=clip_cov, 2e-4 there): take this fraction of "
            "tokens, drawn among those with clip_cov_lb < cov < clip_cov_ub, out of the "
            "gradient; 0 = off"
        },
    )
    clip_cov_lb: float = field(
        default=1.0, metadata={"help": "Clip-Cov: lower bound of the covariance (verl: 1)"}
    )
    clip_cov_ub: float = field(
        default=5.0, metadata={"help": "Clip-Cov: upper bound of the covariance (verl: 5)"}
    )
    kl_cov_ratio: float = field(
        default=0.0,
        metadata={
            "help": "KL-Cov (verl loss_mode=kl_cov, 2e-4 there): unclipped policy gradient "
            "plus ppo_kl_coef·|log r| on this fraction of tokens, those of largest "
            "covariance; 0 = off"
        },
    )
    ppo_kl_coef: float = field(
        default=1.0, metadata={"help": "KL-Cov's coefficient of |log r| (verl code: 1.0)"}
    )
    dynamic_sampling: bool = field(
        default=False,
        metadata={
            "help": "DAPO dynamic sampling: drop groups whose rewards are all equal (std <= "
            "dynamic_sampling_min_std; groups of one are kept) and sample more rounds of "
            "prompts until rollout_batch_size completions of informative groups are held"
        },
    )
    max_num_gen_batches: int = field(
        default=10,
        metadata={
            "help": "dynamic sampling: most generation rounds per step (verl's name; 0 = no "
            "limit); when they run out the batch is completed with dropped groups"
        },
    )
    dynamic_sampling_min_std: float = field(
        default=0.0,
        metadata={"help": "dynamic sampling: keep a group when its reward std is above this"},
    )
    teacher_kl_coef: float = field(
        default=1.0,
        metadata={
            "help": "on-policy distillation (with a teacher model): λ of the per-token "
            "advantage −λ·(log π − log π_teacher) added to the task advantage (slime: 1.0)"
        },
    )
    teacher_kl_clamp: float | None = field(
        default=10.0,
        metadata={
            "help": "on-policy distillation: clamp log π − log π_teacher to ±this (verl: 10); "
            "none = off"
        },
    )

    @property
    def policy_objective(self) -> str:
        """The objective on the ratio: ``"ppo"`` (clipped surrogate; Clip-Cov and KL-Cov are
        its covariance variants), ``"cispo"`` or ``"sapo"`` (set by ``loss_type`` in the
        GRPO family)."""
        return "ppo"

    def cispo_bounds(self) -> tuple[float | None, float]:
        """(ratio_min, ratio_max) of CISPO's weight: ``(None, cispo_ratio_max)`` (TRL's
        spelling) or ``(1 − clip_low, 1 + clip_high)`` (verl's)."""
        if self.cispo_ratio_max is not None:
            return None, self.cispo_ratio_max
        high = self.clip_low if self.clip_high is None else self.clip_high
        return L.cispo_bounds(self.clip_low, high)
    vllm_importance_sampling_correction: bool = field(
        default=True,
        metadata={
            "help": "when the rollout comes from an engine (generation_backend 'vllm'), weight "
            "the clipped per-token loss by the detached ratio trainer / engine logprob, "
            "truncated or masked by vllm_importance_sampling_mode (TRL's default: on; the "
            "mismatch metrics are logged either way). No effect with the local backends"
        },
    )
    vllm_importance_sampling_mode: str = field(
        default="sequence_mask",
        metadata={
            "help": f"one of {', '.join(LC.CORRECTION_MODES)}: token_truncate = TIS, token_mask "
            "= IcePop (with both bounds), sequence_truncate / sequence_mask = the product ratio "
            "of the sequence truncated / masked (MIS; TRL's default), geometric_mask = token "
            "ratios of sequences whose geometric-mean ratio is within the bounds"
        },
    )
    vllm_importance_sampling_clip_max: float | None = field(
        default=3.0, metadata={"help": "C_max of the weights (TRL: 3.0); none = no upper bound"}
    )
    vllm_importance_sampling_clip_min: float | None = field(
        default=None, metadata={"help": "C_min of the weights (TRL: none = no lower bound)"}
    )
    vllm_importance_sampling_denominator: str = field(
        default="original",
        metadata={
            "help": "tokens whose weight a mask mode set to 0: still counted in the loss's "
            "token / sequence counts ('original', AReaL and slime) or left out of them "
            "('kept', as verl's rejection sampling)"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_field(
            self.vllm_importance_sampling_mode in LC.CORRECTION_MODES,
            "vllm_importance_sampling_mode",
            self.vllm_importance_sampling_mode,
            f"expected one of {LC.CORRECTION_MODES}",
        )
        check_field(
            self.vllm_importance_sampling_denominator in LC.DENOMINATORS,
            "vllm_importance_sampling_denominator",
            self.vllm_importance_sampling_denominator,
            f"expected one of {LC.DENOMINATORS}",
        )
        hi, lo = self.vllm_importance_sampling_clip_max, self.vllm_importance_sampling_clip_min
        for name, v in (("vllm_importance_sampling_clip_max", hi),
                        ("vllm_importance_sampling_clip_min", lo)):  # fmt: skip
            check_field(v is None or (math.isfinite(v) and v >= 0), name, v,
                        "expected a finite ratio >= 0, or none (no bound)")  # fmt: skip
        check_field(
            hi is not None or lo is not None,
            "vllm_importance_sampling_clip_max",
            hi,
            "give at least one bound (clip_max, e.g. TRL's 3.0, and/or clip_min)",
        )
        check_field(
            hi is None or lo is None or lo <= hi,
            "vllm_importance_sampling_clip_min",
            lo,
            f"expected <= vllm_importance_sampling_clip_max={hi}",
        )
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
        self._check_policy_loss_fields()
        check_field(
            self.max_num_gen_batches >= 0,
            "max_num_gen_batches",
            self.max_num_gen_batches,
            "expected >= 0 (0 = no limit; the DAPO recipe uses 10)",
        )
        check_field(
            math.isfinite(self.dynamic_sampling_min_std) and self.dynamic_sampling_min_std >= 0,
            "dynamic_sampling_min_std",
            self.dynamic_sampling_min_std,
            "expected a finite value >= 0 (0 = drop groups whose rewards are all equal)",
        )
        check_field(
            math.isfinite(self.teacher_kl_coef) and self.teacher_kl_coef >= 0,
            "teacher_kl_coef",
            self.teacher_kl_coef,
            "expected a finite value >= 0 (slime: 1.0)",
        )
        check_field(
            self.teacher_kl_clamp is None or self.teacher_kl_clamp > 0,
            "teacher_kl_clamp",
            self.teacher_kl_clamp,
            "expected > 0 (e.g. 10) or none",
        )
        if self.dynamic_sampling:
            check_field(
                self.num_samples >= 2,
                "num_samples",
                self.num_samples,
                "dynamic_sampling drops groups whose rewards are all equal; with one sample per "
                "prompt every group is kept: use num_samples >= 2",
            )

    def _check_policy_loss_fields(self) -> None:
        check_field(
            self.importance_sampling_level in L.IMPORTANCE_SAMPLING_LEVELS,
            "importance_sampling_level",
            self.importance_sampling_level,
            f"expected one of {L.IMPORTANCE_SAMPLING_LEVELS}",
        )
        for name in ("sapo_temperature_pos", "sapo_temperature_neg"):
            v = getattr(self, name)
            check_field(v > 0, name, v, "expected > 0 (TRL: 1.0 and 1.05)")
        check_field(
            self.cispo_ratio_max is None or self.cispo_ratio_max > 0,
            "cispo_ratio_max",
            self.cispo_ratio_max,
            "expected > 0 (e.g. 5.0) or none",
        )
        check_field(
            0 <= self.top_entropy_quantile <= 1,
            "top_entropy_quantile",
            self.top_entropy_quantile,
            "expected in [0, 1] (1 = every token; the paper uses 0.2)",
        )
        for name in ("clip_cov_ratio", "kl_cov_ratio"):
            v = getattr(self, name)
            check_field(0 <= v <= 1, name, v, "expected in [0, 1] (0 = off; verl: 2e-4)")
        check_field(
            self.clip_cov_lb < self.clip_cov_ub,
            "clip_cov_lb",
            self.clip_cov_lb,
            f"expected below clip_cov_ub={self.clip_cov_ub} (verl: 1 and 5)",
        )
        check_field(self.ppo_kl_coef >= 0, "ppo_kl_coef", self.ppo_kl_coef, "expected >= 0")
        covariance = [n for n in ("clip_cov_ratio", "kl_cov_ratio") if getattr(self, n) > 0]
        check_field(
            len(covariance) < 2,
            "kl_cov_ratio",
            self.kl_cov_ratio,
            "Clip-Cov and KL-Cov are two different losses: set one of clip_cov_ratio and "
            "kl_cov_ratio, the other 0",
        )
        if covariance:
            check_field(
                self.policy_objective == "ppo" and self.importance_sampling_level == "token",
                covariance[0],
                getattr(self, covariance[0]),
                "Clip-Cov and KL-Cov are token-level variants of the clipped surrogate: use "
                "them with importance_sampling_level='token' and a PPO-clip loss_type",
            )
        if self.policy_objective != "ppo":
            check_field(
                self.dual_clip is None,
                "dual_clip",
                self.dual_clip,
                f"the dual clip bounds the clipped surrogate; loss '{self.policy_objective}' "
                "has none (verl applies it to neither CISPO nor SAPO): set dual_clip to none",
            )

    @property
    def needs_reference(self) -> bool:
        """The reference is built when the KL is optimised (``kl_coef`` > 0) or logged
        (``track_kl``)."""
        return self.kl_coef > 0 or self.track_kl
