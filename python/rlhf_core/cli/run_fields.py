"""Fields and checks several command configs share: where the model, tokenizer, data and
reward sources come from (each with its ``--help`` text), how models and Hub datasets are
loaded (:class:`ModelFields`, :class:`DataFields`), the LoRA export options
(:class:`LoraExportFields`), and the checks of those fields.

Also what those fields accept besides paths: :data:`REWARD_SHORTCUTS` and
:data:`BUILTIN_DATASETS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlhf_core.errors import check_field

__all__ = [
    "REWARD_SHORTCUTS",
    "BUILTIN_DATASETS",
    "DataFields",
    "LoraExportFields",
    "ModelFields",
    "check_required",
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


def model_field(what: str = "policy") -> Any:
    """``--model`` (str, required): a Hub id, a local folder or a built-in model; ``what`` says
    which model the command means. Required: a config without it is refused (the presets in
    ``configs/`` name ``builtin:tiny``)."""
    return field(
        default=None,
        metadata={
            "help": f"{what}: a Hugging Face Hub id (org/name, or org/name@revision; read "
            "through the Hugging Face cache, offline with HF_HUB_OFFLINE=1), a local folder "
            "written by save_pretrained, or 'builtin', 'builtin:tiny', 'builtin:small' (the "
            "built-in toy model, initialised from seed, as in the presets). Required"
        },
    )


def tokenizer_field() -> Any:
    """``--tokenizer`` (str | None): a tokenizer folder or Hub id overriding the model's own."""
    return field(
        default=None,
        metadata={
            "help": "tokenizer folder or Hub id; none = the model's own tokenizer (the built-in "
            "one for builtin models)"
        },
    )


def dataset_field(kind: str) -> Any:
    """``--dataset`` (str, required): a data file or folder, a Hub id, or a ``builtin:*`` task;
    ``kind`` names the columns the command reads. Required."""
    return field(
        default=None,
        metadata={
            "help": f"{kind}: a Hugging Face Hub dataset id (through datasets.load_dataset and "
            "its cache), a .jsonl/.json/.parquet file, a datasets save_to_disk folder or a "
            "folder of data files (TRL columns), or builtin:language / builtin:arithmetic "
            "(generated, as in the presets). Required"
        },
    )


@dataclass
class ModelFields:
    """How the command's models are loaded (``from_pretrained`` options) and rendered."""

    revision: str | None = field(
        default=None,
        metadata={
            "help": "branch, tag or commit of --model when it is a Hub id (TRL: model_revision); "
            "other model options take org/name@revision"
        },
    )
    dtype: str = field(
        default="float32",
        metadata={
            "help": "dtype the weights are loaded in: float32 (master weights, whatever the "
            "checkpoint's dtype; bf16 autocast on CUDA still applies), bfloat16, float16, or "
            "auto (as saved)"
        },
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={
            "help": "attention kernel passed to from_pretrained (eager, sdpa, "
            "flash_attention_2, ...); none = transformers' default"
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "run model code shipped in a Hub repository (from_pretrained's option)"},
    )
    chat_template_kwargs: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "extra variables of the tokenizer's chat template when conversations are "
            "rendered, e.g. {enable_thinking = false}"
        },
    )


@dataclass
class DataFields:
    """Where a Hub dataset id is read from (``datasets.load_dataset`` options)."""

    dataset_config: str | None = field(
        default=None,
        metadata={"help": "configuration (subset) of a Hub dataset; none = its default"},
    )
    dataset_split: str | None = field(
        default=None,
        metadata={
            "help": "split to read (TRL: dataset_train_split); none = the only one, or 'train'"
        },
    )
    dataset_streaming: bool = field(
        default=False,
        metadata={
            "help": "read a Hub dataset as a stream instead of downloading it whole (with "
            "num_prompts, only the rows used are fetched)"
        },
    )


@dataclass
class LoraExportFields:
    """LoRA options beyond the trainer's (``lora_r``, ``lora_alpha``, ...) and what a LoRA run
    leaves in its run folder."""

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
            "['lm_head']); none = only the adapters train"
        },
    )
    merge_lora: bool = field(
        default=False,
        metadata={
            "help": "with lora_r > 0: besides the PEFT adapter folder RUN_DIR/adapter, write the "
            "adapters merged into the base weights as a full model to RUN_DIR/model"
        },
    )

    def lora_extras(self) -> bool:
        """Whether an option that the trainer's own LoRA setup does not take is set."""
        return self.use_rslora or self.use_dora or bool(self.lora_modules_to_save)


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
    """``--reward_model`` (str | None): a reward model folder or Hub id."""
    return field(
        default=None,
        metadata={
            "help": "reward model folder or Hub id (from 'rlhf-core reward', or any "
            "sequence-classification checkpoint with one label); scored on the policy's "
            "token ids"
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
            "help": "frozen reference model folder or Hub id (or builtin:*); none = a copy of "
            "the starting policy"
        },
    )


def check_required(cfg: Any) -> None:
    """``model`` and ``dataset`` are given (outside the demo and the presets, forgetting them
    must not train the built-in toy model on the toy task), and ``dtype`` is one of the
    known names."""
    from rlhf_core.models.loading import resolve_dtype

    for name, example in (("model", "org/name"), ("dataset", "org/name or data.jsonl")):
        value = getattr(cfg, name)
        check_field(
            isinstance(value, str) and bool(value.strip()),
            name,
            value,
            f"required: pass --{name} {example} (a Hugging Face Hub id or a local path), or "
            f"builtin:* for the built-in toy {'model' if name == 'model' else 'task'} the "
            "presets in configs/ use",
        )
    dtype = getattr(cfg, "dtype", None)
    if dtype is not None and dtype.strip().lower() != "auto":
        try:
            resolve_dtype(dtype)
        except ValueError as exc:
            check_field(False, "dtype", dtype, str(exc))


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
