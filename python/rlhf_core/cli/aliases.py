"""TRL's spellings of rlhf-core's options, accepted in config files and on the command line.

A TRL recipe (``trl grpo --config recipe.yaml``) mostly runs as ``rlhf-core grpo --config
recipe.yaml``: a key TRL spells differently is renamed to rlhf-core's field when the command
has that field and no field of the alias's own name (so DPO's ``beta`` stays DPO's ``beta``,
while GRPO's ``beta`` is the KL coefficient ``kl_coef``). Giving an alias and its field in one
place (the same file, or the same command line) is an error. TRL keys with no equivalent are
refused with what to do instead (:data:`TRL_HINTS`). ``--help`` and ``docs/config.md`` list
the mapping.
"""

from __future__ import annotations

from rlhf_core.config.fields import all_keys

__all__ = ["TRL_ALIASES", "TRL_HINTS", "aliases_for", "hints_for"]

#: TRL's name -> rlhf-core's field
TRL_ALIASES: dict[str, str] = {
    "output_dir": "run_dir",
    "model_name_or_path": "model",
    "model_revision": "revision",
    "torch_dtype": "dtype",
    "dataset_name": "dataset",
    "dataset_train_split": "dataset_split",
    "dataset_test_split": "eval_split",
    "max_steps": "total_steps",
    "num_generations": "num_samples",
    "max_completion_length": "max_new_tokens",
    "beta": "kl_coef",
    "epsilon": "clip_low",
    "epsilon_high": "clip_high",
    "num_iterations": "ppo_epochs",
    "save_steps": "save_every",
    "save_total_limit": "keep_last",
    "eval_steps": "eval_every",
    "lr_scheduler_type": "lr_scheduler",
    "mask_truncated_completions": "mask_truncated",
    "per_device_train_batch_size": "micro_batch_size",
    "adam_epsilon": "adam_eps",
    "center_rewards_coefficient": "center_coef",
    "reward_model_path": "reward_model",
    "resume_from_checkpoint": "resume",
}

#: TRL keys with no rlhf-core equivalent, and what to do instead
TRL_HINTS: dict[str, str] = {
    "gradient_accumulation_steps": "set batch_size (pairs or examples per optimizer step) or "
    "minibatch_size (RL: sequences per optimizer step) to per_device_train_batch_size x "
    "gradient_accumulation_steps x processes; per_device_train_batch_size is micro_batch_size",
    "num_train_epochs": "set total_steps (optimizer steps; max_steps is accepted)",
    "warmup_ratio": "set warmup_steps (warm-up in optimizer steps)",
    "use_peft": "set lora_r > 0 (e.g. lora_r = 16) to train LoRA adapters",
    "logging_steps": "every step is logged to RUN_DIR/metrics.jsonl (and TensorBoard with "
    "tensorboard = true)",
    "report_to": "metrics go to RUN_DIR/metrics.jsonl, and to TensorBoard with tensorboard = true",
    "dataset_text_field": "the columns are found by name: 'messages', 'prompt' + 'completion', "
    "or 'text'",
}


def aliases_for(cls: type) -> dict[str, str]:
    """The aliases that apply to config class ``cls``: those whose field ``cls`` has and whose
    own name is not a field of ``cls``."""
    keys = set(all_keys(cls))
    return {a: f for a, f in TRL_ALIASES.items() if f in keys and a not in keys}


def hints_for(cls: type) -> dict[str, str]:
    """The :data:`TRL_HINTS` whose key is not a field of ``cls``."""
    keys = set(all_keys(cls))
    return {k: v for k, v in TRL_HINTS.items() if k not in keys}
