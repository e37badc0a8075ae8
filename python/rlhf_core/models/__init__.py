"""Models for RLHF: policy, frozen reference, reward model, value model, and token logprobs.

One module per concern: :mod:`~rlhf_core.models.builtin` (tokenizer and built-in model),
:mod:`~rlhf_core.models.loading`, :mod:`~rlhf_core.models.logprobs`,
:mod:`~rlhf_core.models.heads` (reward / value models, text to ids),
:mod:`~rlhf_core.models.reference`, :mod:`~rlhf_core.models.lora`,
:mod:`~rlhf_core.models.hub` (builtin / local folder / Hugging Face Hub id),
:mod:`~rlhf_core.models.head_files` (reward- and value-model folder formats),
:mod:`~rlhf_core.models.text` (text to token ids) and
:mod:`~rlhf_core.models.common` (helpers they share). Every public name is importable from
``rlhf_core.models``.

Everything here is a plain ``transformers`` / ``torch.nn`` object, so the built-in demo model
and a user's own checkpoint go through the same code paths.

* :func:`load_tokenizer` - the built-in character-level tokenizer (shipped in
  ``rlhf_core/assets/tokenizer``) or any tokenizer from a local folder or Hub id.
* :func:`tiny_config`, :func:`build_builtin_policy`, :func:`load_policy` - the built-in
  ``LlamaForCausalLM`` built from a config (nothing downloaded) or any
  ``AutoModelForCausalLM`` checkpoint: a local folder or a Hub id through the Hugging Face
  cache (``revision``, ``dtype`` - float32 by default -, ``attn_implementation``,
  ``trust_remote_code``; :class:`ModelNotFoundError` says what was looked for and where).
* :class:`RewardModel` / :class:`ValueModel` - a transformer body with a linear ``d -> 1`` head;
  the reward model reads the hidden state of the last non-padding token (and is saved as an
  ``AutoModelForSequenceClassification`` checkpoint), the value model every position.
* :class:`RewardEnsemble` (:mod:`~rlhf_core.models.ensemble`) - K reward heads on one shared
  body, scored in one forward; :func:`load_reward_model` opens a saved reward model or
  ensemble.
* :func:`make_reference` - frozen deep copy of the policy, or the adapter-disabled base when
  the policy carries LoRA adapters (:func:`apply_lora`).
* :func:`token_logprobs` / :func:`token_logprobs_and_entropy` - logprobs (and entropies) of
  each next token, chunked so that full-vocabulary float32 log-softmax is never materialised
  for the whole batch at once.
* :func:`encode_prompt_completion` - the one way prompt and completion texts become token ids
  (used by reward scoring and by trainers that start from text; batched:
  :func:`encode_prompt_completions`); :func:`closes_turn` decides whether a completion still
  needs its EOS token; :func:`same_tokenizer` whether a reward model can read the policy's
  token ids as they are.
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
from rlhf_core.models.heads import RewardModel, ValueModel
from rlhf_core.models.hub import ModelNotFoundError, is_builtin, is_hub_id, split_revision
from rlhf_core.models.loading import DEFAULT_DTYPE, load_policy, pretrained_kwargs, resolve_dtype
from rlhf_core.models.logprobs import (
    DEFAULT_CHUNK_ELEMENTS,
    token_logprobs,
    token_logprobs_and_entropy,
)
from rlhf_core.models.lora import (
    DEFAULT_LORA_TARGETS,
    apply_lora,
    apply_reward_lora,
    merged_copy,
    merged_reward_model,
    peft_model_of,
)
from rlhf_core.models.reference import ReferenceModel, make_reference
from rlhf_core.models.text import (
    closes_turn,
    encode_prompt_completion,
    encode_prompt_completions,
    same_tokenizer,
)

__all__ = [
    "BUILTIN_SIZES",
    "BUILTIN_TOKENIZER_DIR",
    "DEFAULT_CHUNK_ELEMENTS",
    "DEFAULT_DTYPE",
    "DEFAULT_LORA_TARGETS",
    "ModelNotFoundError",
    "ReferenceModel",
    "RewardEnsemble",
    "RewardModel",
    "ValueModel",
    "apply_lora",
    "apply_reward_lora",
    "build_builtin_policy",
    "closes_turn",
    "default_position_ids",
    "device_of",
    "enable_activation_checkpointing",
    "encode_prompt_completion",
    "encode_prompt_completions",
    "is_activation_checkpointing",
    "is_builtin",
    "is_hub_id",
    "is_peft",
    "is_reward_ensemble",
    "last_token_index",
    "load_policy",
    "load_reward_model",
    "load_tokenizer",
    "make_reference",
    "merged_copy",
    "merged_reward_model",
    "peft_model_of",
    "pretrained_kwargs",
    "resolve_dtype",
    "same_tokenizer",
    "seeded",
    "split_revision",
    "tiny_config",
    "token_logprobs",
    "token_logprobs_and_entropy",
]
