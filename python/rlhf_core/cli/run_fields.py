"""Fields and checks several command configs share: where the model, tokenizer, data and
reward sources come from (each with its ``--help`` text), and the checks of those fields.

Also what those fields accept besides paths: :data:`REWARD_SHORTCUTS` and
:data:`BUILTIN_DATASETS`.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from rlhf_core.errors import check_field

__all__ = [
    "REWARD_SHORTCUTS",
    "BUILTIN_DATASETS",
    "model_field",
    "tokenizer_field",
    "dataset_field",
    "dataset_size_field",
    "on_error_field",
    "reward_model_field",
    "reward_funcs_field",
    "reference_field",
    "check_common",
    "check_rewards",
]

#: Reward-function shortcuts accepted wherever a ``module:function`` is.
REWARD_SHORTCUTS: dict[str, str] = {
    "gold": "rlhf_core.tasks:gold_reward",
    "arithmetic": "rlhf_core.tasks:arithmetic_reward",
    "exact_match": "rlhf_core.rewards:exact_match_reward",
}

#: The generated datasets ``--dataset`` accepts besides files and folders.
BUILTIN_DATASETS = ("builtin:language", "builtin:arithmetic")


def model_field(default: str = "builtin:tiny", what: str = "policy") -> Any:
    """``--model`` (str): a built-in model name or a ``save_pretrained`` folder; ``what`` says
    which model the command means."""
    return field(
        default=default,
        metadata={
            "help": f"{what}: 'builtin', 'builtin:tiny', 'builtin:small' (built-in model, "
            "initialised from seed) or a local folder written by save_pretrained"
        },
    )


def tokenizer_field() -> Any:
    """``--tokenizer`` (str | None): a tokenizer folder overriding the model's own."""
    return field(
        default=None,
        metadata={
            "help": "tokenizer folder; none = the model folder's own tokenizer (the built-in "
            "one for builtin models)"
        },
    )


def dataset_field(kind: str, default: str = "builtin:language") -> Any:
    """``--dataset`` (str): a data file or folder, or a ``builtin:*`` task; ``kind`` names the
    columns the command reads."""
    return field(
        default=default,
        metadata={
            "help": f"{kind}: a .jsonl/.json/.parquet file or a datasets save_to_disk folder "
            "(TRL columns), or builtin:language / builtin:arithmetic (generated)"
        },
    )


def dataset_size_field(default: int = 2000) -> Any:
    """``--dataset_size`` (int): rows generated for a ``builtin:*`` dataset."""
    return field(
        default=default, metadata={"help": "rows generated for a builtin:* dataset (>= 1)"}
    )


def on_error_field() -> Any:
    """``--data_on_error`` (``"raise"`` | ``"skip"``): what a malformed data row does."""
    return field(
        default="raise",
        metadata={"help": "a malformed data row: 'raise' an error naming it, or 'skip' it"},
    )


def reward_model_field() -> Any:
    """``--reward_model`` (str | None): a reward model folder."""
    return field(
        default=None,
        metadata={
            "help": "reward model folder (from 'rlhf-core reward', or a sequence-classification "
            "checkpoint with one label); scored on the policy's token ids"
        },
    )


def reward_funcs_field() -> Any:
    """``--reward_funcs`` (list[str]): reward function specs or :data:`REWARD_SHORTCUTS`."""
    return field(
        default_factory=list,
        metadata={
            "help": "reward functions fn(prompts, completions, **columns): 'module:function', "
            "'file.py:function' or a shortcut (" + ", ".join(REWARD_SHORTCUTS) + "); weighted "
            "by reward_weights after the reward model"
        },
    )


def reference_field() -> Any:
    """``--reference`` (str | None): the frozen reference model."""
    return field(
        default=None,
        metadata={
            "help": "frozen reference model folder (or builtin:*); none = a copy of the "
            "starting policy"
        },
    )


def check_common(cfg: Any) -> None:
    """Checks of ``dataset_size`` and ``data_on_error`` (``ValueError`` naming the field)."""
    check_field(
        cfg.dataset_size >= 1, "dataset_size", cfg.dataset_size, "expected >= 1 generated rows"
    )
    check_field(
        cfg.data_on_error in ("raise", "skip"),
        "data_on_error",
        cfg.data_on_error,
        "expected 'raise' or 'skip'",
    )


def check_rewards(cfg: Any, *, required: bool = True) -> None:
    """At least one reward source when ``required``, and one ``reward_weights`` entry per
    source (the reward model first) when weights are given."""
    n = (1 if cfg.reward_model else 0) + len(cfg.reward_funcs)
    if required:
        check_field(
            n >= 1,
            "reward_funcs",
            cfg.reward_funcs,
            "give a reward source: --reward_model FOLDER and/or --reward_funcs module:function",
        )
    w = getattr(cfg, "reward_weights", None)
    if w is not None:
        check_field(
            len(w) == n,
            "reward_weights",
            w,
            f"expected one weight per reward source ({n}: the reward model first, then each "
            "reward function)",
        )
