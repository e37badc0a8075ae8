"""Models for RLHF: policy, frozen reference, reward model, value model, and token logprobs.

One module per concern: :mod:`~rlhf_core.models.builtin` (tokenizer and built-in model),
:mod:`~rlhf_core.models.loading`, :mod:`~rlhf_core.models.logprobs`,
:mod:`~rlhf_core.models.heads` (reward / value models, text to ids),
:mod:`~rlhf_core.models.reference`, :mod:`~rlhf_core.models.lora`, and
:mod:`~rlhf_core.models.common` (helpers they share). Every public name is importable from
``rlhf_core.models``.

Everything here is a plain ``transformers`` / ``torch.nn`` object, so the built-in demo model
and a user's own checkpoint go through the same code paths.

* :func:`load_tokenizer` - the built-in character-level tokenizer (shipped in
  ``rlhf_core/assets/tokenizer``) or any tokenizer from a local folder.
* :func:`tiny_config`, :func:`build_builtin_policy`, :func:`load_policy` - the built-in
  ``LlamaForCausalLM`` built from a config (nothing downloaded) or any local
  ``AutoModelForCausalLM`` checkpoint.
* :class:`RewardModel` / :class:`ValueModel` - a transformer body with a linear ``d -> 1`` head;
  the reward model reads the hidden state of the last non-padding token, the value model
  every position.
* :class:`RewardEnsemble` (:mod:`~rlhf_core.models.ensemble`) - K reward heads on one shared
  body, scored in one forward; :func:`load_reward_model` opens a saved reward model or
  ensemble.
* :func:`make_reference` - frozen deep copy of the policy, or the adapter-disabled base when
  the policy carries LoRA adapters (:func:`apply_lora`).
* :func:`token_logprobs` / :func:`token_logprobs_and_entropy` - logprobs (and entropies) of
  each next token, chunked so that full-vocabulary float32 log-softmax is never materialised
  for the whole batch at once.
* :func:`encode_prompt_completion` - the one way prompt and completion texts become token ids
  (used by reward scoring and by trainers that start from text).
"""

from rlhf_core.models.builtin import (
    BUILTIN_SIZES,
    BUILTIN_TOKENIZER_DIR,
    build_builtin_policy,
    load_tokenizer,
    tiny_config,
)
from rlhf_core.models.common import (
    default_position_ids,
    device_of,
    enable_activation_checkpointing,
    is_activation_checkpointing,
    is_peft,
    last_token_index,
    seeded,
)
from rlhf_core.models.ensemble import RewardEnsemble, is_reward_ensemble, load_reward_model
from rlhf_core.models.heads import RewardModel, ValueModel, encode_prompt_completion
from rlhf_core.models.loading import load_policy, resolve_dtype
from rlhf_core.models.logprobs import (
    DEFAULT_CHUNK_ELEMENTS,
    token_logprobs,
    token_logprobs_and_entropy,
)
from rlhf_core.models.lora import apply_lora
from rlhf_core.models.reference import ReferenceModel, make_reference

__all__ = [
    "BUILTIN_SIZES",
    "BUILTIN_TOKENIZER_DIR",
    "DEFAULT_CHUNK_ELEMENTS",
    "ReferenceModel",
    "RewardEnsemble",
    "RewardModel",
    "ValueModel",
    "apply_lora",
    "build_builtin_policy",
    "default_position_ids",
    "device_of",
    "enable_activation_checkpointing",
    "encode_prompt_completion",
    "is_activation_checkpointing",
    "is_peft",
    "is_reward_ensemble",
    "last_token_index",
    "load_policy",
    "load_reward_model",
    "load_tokenizer",
    "make_reference",
    "resolve_dtype",
    "seeded",
    "tiny_config",
    "token_logprobs",
    "token_logprobs_and_entropy",
]
