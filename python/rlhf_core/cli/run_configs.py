"""What each command takes: one config dataclass per command, the trainer's config plus the
fields that say where the model, data and rewards come from (:mod:`rlhf_core.cli.run_fields`).

``rlhf-core <command> --help`` is generated from these fields (their ``help`` metadata, type
and default); :mod:`rlhf_core.cli.loading` turns their strings into models, data and reward
functions. Every ``__post_init__`` raises ``ValueError`` naming the field, its value and the fix
(:func:`rlhf_core.errors.check_field`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from rlhf_core.cli.run_fields import (
    DataFields,
    LoraExportFields,
    ModelFields,
    check_common,
    check_required,
    check_rewards,
    dataset_field,
    dataset_size_field,
    model_field,
    on_error_field,
    reference_field,
    reward_funcs_field,
    reward_model_field,
    tokenizer_field,
)
from rlhf_core.errors import check_field
from rlhf_core.trainers.best_of_n import BestOfNConfig
from rlhf_core.trainers.dpo import DPOConfig
from rlhf_core.trainers.generation_fields import GenerationFields
from rlhf_core.trainers.grpo import GRPOConfig, ReinforcePPConfig, RLOOConfig
from rlhf_core.trainers.ppo import PPOConfig
from rlhf_core.trainers.reward import RewardConfig
from rlhf_core.trainers.sft import SFTConfig

__all__ = [
    "SFTRunConfig",
    "RewardRunConfig",
    "DPORunConfig",
    "PPORunConfig",
    "GRPORunConfig",
    "RLOORunConfig",
    "ReinforcePPRunConfig",
    "BestOfNRunConfig",
    "LabelConfig",
    "EvalConfig",
]

# --------------------------------------------------------------------------------------------
# command configs (trainer configs + where the model and data come from)


@dataclass
class SFTRunConfig(LoraExportFields, DataFields, ModelFields, SFTConfig):
    """``rlhf-core sft``: :class:`~rlhf_core.trainers.SFTConfig` plus model and data."""

    run_dir: str = field(default="runs/sft", metadata={"help": "output folder of the run"})
    model: str = model_field()
    tokenizer: str | None = tokenizer_field()
    dataset: str = dataset_field(
        "supervised data: conversations (column messages; the loss on the assistant turns), "
        "prompt-completion pairs (prompt, completion) or plain text (text)"
    )
    dataset_size: int = dataset_size_field()
    data_on_error: str = on_error_field()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_common(self)
        check_required(self)


def _eval_split_field() -> Any:
    return field(
        default=None,
        metadata={
            "help": "split of eval_dataset (or, without one, of dataset) held out for "
            "evaluation (TRL: dataset_test_split); none = eval_fraction of dataset"
        },
    )


@dataclass
class RewardRunConfig(LoraExportFields, DataFields, ModelFields, RewardConfig):
    """``rlhf-core reward``: :class:`~rlhf_core.trainers.RewardConfig` plus model and data."""

    run_dir: str = field(default="runs/reward", metadata={"help": "output folder of the run"})
    model: str = model_field(
        what="body of the reward model (a policy: a fresh head is added; or a reward model "
        "to continue training)"
    )
    tokenizer: str | None = tokenizer_field()
    dataset: str = dataset_field("preference pairs (columns prompt, chosen, rejected)")
    eval_dataset: str | None = field(
        default=None,
        metadata={
            "help": "held-out pairs (file, folder or Hub id); none = eval_split of dataset, or "
            "eval_fraction of it"
        },
    )
    eval_split: str | None = _eval_split_field()
    dataset_size: int = dataset_size_field()
    data_on_error: str = on_error_field()
    ensemble: int = field(
        default=1,
        metadata={
            "help": "K reward heads on one shared body, trained jointly, each on its own "
            "bootstrap resample of the pairs (a reward ensemble; 1 = one reward model)"
        },
    )
    save_members: bool = field(
        default=False,
        metadata={
            "help": "with --ensemble: also save each member as a single reward-model folder "
            "(reward_model/members/member_<k>; the body is written K more times)"
        },
    )
    check_fraction: float = field(
        default=0.0,
        metadata={
            "help": "hold out this share of the training pairs and train an independent check "
            "model on it (RUN_DIR/check_model, for the RL commands' --check_model); 0 = none"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_common(self)
        check_required(self)
        check_field(self.ensemble >= 1, "ensemble", self.ensemble, "expected >= 1 members")
        check_field(
            0 <= self.check_fraction < 1,
            "check_fraction",
            self.check_fraction,
            "expected in [0, 1) (e.g. 0.5: half the pairs train the check model)",
        )


@dataclass
class DPORunConfig(LoraExportFields, DataFields, ModelFields, DPOConfig):
    """``rlhf-core dpo``: :class:`~rlhf_core.trainers.DPOConfig` plus model and data."""

    run_dir: str = field(default="runs/dpo", metadata={"help": "output folder of the run"})
    model: str = model_field()
    tokenizer: str | None = tokenizer_field()
    reference: str | None = reference_field()
    dataset: str = dataset_field("preference pairs (columns prompt, chosen, rejected)")
    eval_dataset: str | None = field(
        default=None,
        metadata={
            "help": "held-out pairs (file, folder or Hub id); none = eval_split of dataset, or "
            "eval_fraction of it"
        },
    )
    eval_split: str | None = _eval_split_field()
    dataset_size: int = dataset_size_field()
    data_on_error: str = on_error_field()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_common(self)
        check_required(self)


@dataclass
class _PromptRunFields(LoraExportFields, DataFields, ModelFields):
    """Model, prompt data and reward fields of the sampling commands (``ppo``, ``grpo``,
    ``rloo``, ``reinforce-pp``, ``best-of-n``); mixed in before the trainer's config, whose
    fields come first."""

    model: str = model_field()
    tokenizer: str | None = tokenizer_field()
    reference: str | None = reference_field()
    dataset: str = dataset_field("prompts (column prompt, extra columns go to reward functions)")
    dataset_size: int = dataset_size_field()
    eval_dataset: str | None = field(
        default=None,
        metadata={
            "help": "held-out prompts for the periodic evaluation (eval_steps; and at the end): "
            "a file or folder as for dataset, or builtin:language / builtin:arithmetic "
            "(generated with another seed than the training prompts); none = no evaluation"
        },
    )
    eval_dataset_size: int = field(
        default=64, metadata={"help": "prompts generated for a builtin:* eval_dataset (>= 1)"}
    )
    max_prompt_length: int | None = field(
        default=None, metadata={"help": "a longer prompt (in tokens) is a malformed row"}
    )
    data_on_error: str = on_error_field()
    reward_model: str | None = reward_model_field()
    reward_funcs: list[str] = reward_funcs_field()
    check_model: str | None = field(
        default=None,
        metadata={
            "help": "check model folder (rlhf-core reward --check_fraction): scored on every "
            "rollout with weight 0, logged as reward/check_model beside the optimised reward"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()  # type: ignore[misc]  # the trainer config's checks
        check_common(self)
        # with a distillation teacher the rewards are optional (the teacher's KL is the signal)
        check_rewards(self, required=getattr(self, "teacher_model", None) is None)
        check_field(
            self.eval_dataset_size >= 1,
            "eval_dataset_size",
            self.eval_dataset_size,
            "expected >= 1 generated prompts",
        )
        check_field(
            self.eval_dataset is not None or not self.eval_steps,  # type: ignore[attr-defined]
            "eval_steps",
            self.eval_steps,  # type: ignore[attr-defined]
            "periodic evaluation needs held-out prompts: give --eval_dataset (or eval_steps 0)",
        )
        check_field(
            self.max_prompt_length is None or self.max_prompt_length >= 1,
            "max_prompt_length",
            self.max_prompt_length,
            "expected >= 1 or none",
        )
        check_required(self)


@dataclass
class _GoldFreeFields:
    """The gold-free early stop of the RL commands
    (:class:`~rlhf_core.trainers.callbacks.GoldFreeEarlyStop`)."""

    gold_free_stop: bool = field(
        default=False,
        metadata={
            "help": "stop when over-optimisation shows without a gold reward "
            "(rlhf_core.monitor.GoldFreeStop: the --reward_model ensemble's disagreement, the "
            "--check_model's reward, the KL), read at each evaluation when eval_steps > 0, "
            "else each step; the model it keeps goes to RUN_DIR/gold_free_best"
        },
    )
    gold_free_max_disagreement_ratio: float | None = field(
        default=1.5,
        metadata={"help": "gold-free stop: ensemble disagreement over its start (none = off)"},
    )
    gold_free_max_check_gap: float | None = field(
        default=1.0,
        metadata={
            "help": "gold-free stop: proxy gain minus check-model gain, in starting spreads "
            "(none = off)"
        },
    )
    gold_free_max_check_drop: float | None = field(
        default=0.25,
        metadata={
            "help": "gold-free stop: check reward below its best, in starting spreads "
            "(none = off)"
        },
    )
    gold_free_max_sqrt_kl: float | None = field(
        default=None, metadata={"help": "gold-free stop: a sqrt(KL) budget (none = off)"}
    )
    gold_free_max_kl_growth: float | None = field(
        default=None,
        metadata={
            "help": "gold-free stop: sqrt(KL) over its value at the reference update (the "
            "first with a positive KL from --gold_free_kl_reference_step on; none = off)"
        },
    )
    gold_free_kl_reference_step: int = field(
        default=0,
        metadata={
            "help": "gold-free stop: the step from which the first positive KL is the KL "
            "growth's yardstick (per-step use: the step whose distance is the early pace)"
        },
    )
    gold_free_patience: int = field(
        default=2,
        metadata={"help": "gold-free stop: updates in a row with a signal over its threshold"},
    )
    gold_free_smoothing: float = field(
        default=0.0,
        metadata={
            "help": "gold-free stop: EMA weight on the past of each signal in [0, 1) (per-step "
            "use is noisy: e.g. 0.8)"
        },
    )

    def gold_free_rule(self) -> dict[str, Any]:
        """The :class:`~rlhf_core.monitor.GoldFreeStop` parameters."""
        return {
            name: getattr(self, f"gold_free_{name}")
            for name in ("max_disagreement_ratio", "max_check_gap", "max_check_drop",
                         "max_sqrt_kl", "max_kl_growth", "kl_reference_step", "patience",
                         "smoothing")
        }  # fmt: skip

    def __post_init__(self) -> None:
        super().__post_init__()  # type: ignore[misc]
        if self.gold_free_stop:
            from rlhf_core.monitor import GoldFreeStop

            try:
                GoldFreeStop(**self.gold_free_rule())
            except ValueError as exc:
                raise ValueError(f"gold_free_{exc}") from None


@dataclass
class PPORunConfig(_GoldFreeFields, _PromptRunFields, PPOConfig):
    """``rlhf-core ppo``: :class:`~rlhf_core.trainers.PPOConfig` plus model, data, rewards."""

    run_dir: str = field(default="runs/ppo", metadata={"help": "output folder of the run"})
    value_model: str | None = field(
        default=None,
        metadata={
            "help": "value model folder (a reward or value model); none = value_init decides"
        },
    )


@dataclass
class _TeacherField:
    """The distillation teacher of the policy-gradient commands (``grpo``, ``rloo``,
    ``reinforce-pp``)."""

    teacher_model: str | None = field(
        default=None,
        metadata={
            "help": "on-policy distillation: a teacher causal LM (a folder, or 'builtin:small') "
            "sharing the policy's tokenizer, frozen; its per-token reverse KL to the policy on "
            "the policy's samples enters the advantages with weight teacher_kl_coef; the "
            "reward sources become optional"
        },
    )


@dataclass
class GRPORunConfig(_GoldFreeFields, _TeacherField, _PromptRunFields, GRPOConfig):
    """``rlhf-core grpo``: :class:`~rlhf_core.trainers.GRPOConfig` plus model, data, rewards."""

    run_dir: str = field(default="runs/grpo", metadata={"help": "output folder of the run"})


@dataclass
class RLOORunConfig(_GoldFreeFields, _TeacherField, _PromptRunFields, RLOOConfig):
    """``rlhf-core rloo``: :class:`~rlhf_core.trainers.RLOOConfig` plus model, data, rewards."""

    run_dir: str = field(default="runs/rloo", metadata={"help": "output folder of the run"})


@dataclass
class ReinforcePPRunConfig(_GoldFreeFields, _TeacherField, _PromptRunFields, ReinforcePPConfig):
    """``rlhf-core reinforce-pp``: :class:`~rlhf_core.trainers.ReinforcePPConfig` plus model,
    data, rewards."""

    run_dir: str = field(default="runs/reinforce_pp", metadata={"help": "output folder of the run"})


@dataclass
class BestOfNRunConfig(_PromptRunFields, BestOfNConfig):
    """``rlhf-core best-of-n``: :class:`~rlhf_core.trainers.BestOfNConfig` plus model, data,
    rewards."""

    run_dir: str = field(default="runs/best_of_n", metadata={"help": "output folder of the run"})


@dataclass
class _SamplingFields(GenerationFields, DataFields, ModelFields):
    """Fields shared by ``label`` and ``eval`` (and the rollout backend's, ``generation_backend``
    with the ``vllm_*`` engine settings)."""

    run_dir: str = field(default="runs/out", metadata={"help": "output folder"})
    seed: int = field(default=0, metadata={"help": "seed of sampling and builtin data"})
    model: str = model_field()
    tokenizer: str | None = tokenizer_field()
    dataset: str = dataset_field("prompts (column prompt, extra columns go to reward functions)")
    dataset_size: int = dataset_size_field(256)
    num_prompts: int | None = field(
        default=None, metadata={"help": "use only the first this many prompts; none = all"}
    )
    max_prompt_length: int | None = field(
        default=None, metadata={"help": "a longer prompt (in tokens) is a malformed row"}
    )
    data_on_error: str = on_error_field()
    max_new_tokens: int = field(default=64, metadata={"help": "most tokens per completion"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (0 = greedy)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass (1 = off)"})
    top_k: int = field(default=0, metadata={"help": "top-k sampling (0 = off)"})
    batch_size: int = field(default=64, metadata={"help": "rows per generate / forward call"})
    reward_model: str | None = reward_model_field()
    reward_funcs: list[str] = reward_funcs_field()
    reward_weights: list[float] | None = field(
        default=None,
        metadata={"help": "weight of each reward source (reward model first); none = all 1"},
    )
    device: str = field(
        default="auto", metadata={"help": "'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1'"}
    )
    chat_template_kwargs: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "extra variables of the tokenizer's chat template when conversations are "
            "rendered, e.g. {enable_thinking = false}"
        },
    )

    def _check_sampling(self) -> None:
        check_common(self)
        self.check_generation_fields()
        check_field(
            self.num_prompts is None or self.num_prompts >= 1,
            "num_prompts",
            self.num_prompts,
            "expected >= 1 or none",
        )
        check_field(
            self.max_prompt_length is None or self.max_prompt_length >= 1,
            "max_prompt_length",
            self.max_prompt_length,
            "expected >= 1 or none",
        )
        check_field(
            self.max_new_tokens >= 1, "max_new_tokens", self.max_new_tokens, "expected >= 1"
        )
        check_field(self.temperature >= 0, "temperature", self.temperature, "expected >= 0")
        check_field(0 < self.top_p <= 1, "top_p", self.top_p, "expected in (0, 1]")
        check_field(self.top_k >= 0, "top_k", self.top_k, "expected >= 0 (0 = off)")
        check_field(self.batch_size >= 1, "batch_size", self.batch_size, "expected >= 1")
        check_field(
            self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
            "device",
            self.device,
            "expected 'auto', 'cpu', 'cuda' or 'cuda:N'",
        )


@dataclass
class LabelConfig(_SamplingFields):
    """``rlhf-core label``: sample two completions per prompt from a policy and let a judge
    pick the better one; writes preference pairs in TRL's columns (``prompt``, ``chosen``,
    ``rejected``, plus ``p_chosen``, scores and the prompt's extra columns) as JSONL.

    Exactly one kind of judge: a reward model and/or reward functions (scored, then
    ``P(a > b) = sigmoid(beta * (r_a - r_b))``), or a causal LM judge (RLAIF: it is asked which
    answer is better, in both orders, see :class:`rlhf_core.rewards.JudgeLabeler`)."""

    run_dir: str = field(default="runs/label", metadata={"help": "output folder"})
    judge_model: str | None = field(
        default=None,
        metadata={"help": "causal LM judge (folder, Hub id or builtin:*) asked 'A or B?' (RLAIF)"},
    )
    judge_tokenizer: str | None = field(
        default=None, metadata={"help": "tokenizer of the judge; none = the judge's own"}
    )
    judge_template: str | None = field(
        default=None,
        metadata={
            "help": "judge prompt with {prompt}, {answer_a}, {answer_b}; none = the default one"
        },
    )
    sample_labels: bool = field(
        default=False,
        metadata={
            "help": "draw each label with the judged probability (Bradley-Terry noise) "
            "instead of taking the more likely side"
        },
    )
    beta: float = field(
        default=1.0, metadata={"help": "scored judges: P(a > b) = sigmoid(beta * (r_a - r_b))"}
    )
    output: str | None = field(
        default=None, metadata={"help": "output JSONL file; none = run_dir/preferences.jsonl"}
    )

    def __post_init__(self) -> None:
        self._check_sampling()
        scored = bool(self.reward_model) or bool(self.reward_funcs)
        check_field(
            scored != (self.judge_model is not None),
            "judge_model",
            self.judge_model,
            "give exactly one judge: --reward_model / --reward_funcs (scored), or "
            "--judge_model (an LM asked which answer is better)",
        )
        if scored:
            check_rewards(self)
        check_field(
            math.isfinite(self.beta) and self.beta > 0, "beta", self.beta, "expected > 0 (e.g. 1)"
        )
        if self.judge_template is not None:
            for part in ("{prompt}", "{answer_a}", "{answer_b}"):
                check_field(
                    part in self.judge_template,
                    "judge_template",
                    self.judge_template,
                    f"the template must contain {part}",
                )
        check_required(self)


@dataclass
class EvalConfig(_SamplingFields):
    """``rlhf-core eval``: sample a policy on a prompt set, score the samples with a reward
    model / reward functions, and measure the KL from a reference; writes ``eval.json`` (the
    means) and ``samples.jsonl`` (every completion and its scores)."""

    run_dir: str = field(default="runs/eval", metadata={"help": "output folder"})
    num_samples: int = field(default=1, metadata={"help": "completions per prompt"})
    reference: str | None = field(
        default=None,
        metadata={
            "help": "reference model (folder, Hub id or builtin:*) for KL(policy || "
            "reference); none = no KL"
        },
    )

    def __post_init__(self) -> None:
        self._check_sampling()
        check_field(self.num_samples >= 1, "num_samples", self.num_samples, "expected >= 1")
        check_rewards(self, required=self.reference is None)
        check_required(self)
