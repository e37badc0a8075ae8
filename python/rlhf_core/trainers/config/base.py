"""TrainerConfig: the fields every trainer shares (see :mod:`rlhf_core.trainers.config`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from rlhf_core.errors import check_field
from rlhf_core.monitor.tracking import REPORT_TO

__all__ = ["LR_SCHEDULERS", "TrainerConfig"]

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
