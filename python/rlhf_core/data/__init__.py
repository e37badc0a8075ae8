"""Prompt, prompt-completion, conversation and preference datasets in TRL's formats.

Sources (:mod:`~rlhf_core.data.sources`): a local JSON Lines / JSON / Parquet file, a folder
(``save_to_disk``, or data files ``datasets`` reads), a Hugging Face Hub dataset id through
``datasets.load_dataset`` (``config``, ``split``, ``revision``, ``streaming``; offline from the
cache), or an in-memory list of dicts (a ``datasets.Dataset`` too).

Formats (column names configurable):

- prompt-only: ``prompt`` (RL);
- prompt-completion: ``prompt`` + ``completion`` (SFT);
- language modelling: ``text``, or ``messages`` (a whole conversation; SFT with the loss on
  the assistant turns only);
- preference: ``prompt`` + ``chosen`` + ``rejected``, or conversational ``chosen`` /
  ``rejected`` without ``prompt`` (the messages they share are the prompt: TRL's "implicit
  prompt").

A value is plain text or *conversational*: a list of ``{"role", "content"}`` messages with
roles ``system``, ``developer``, ``user``, ``assistant`` and ``tool``, and assistant
``tool_calls`` (rules in :mod:`~rlhf_core.data.messages`). A row's columns are all text or all
conversations. Conversations become text through the tokenizer's chat template (with a
``tools`` column and ``chat_template_kwargs`` such as ``enable_thinking``), otherwise through a
plain ``"role: content\\n"`` format; what cannot be rendered is a row error, never ``str()``
(:mod:`~rlhf_core.data.render`). Every other column is kept (e.g. ``answer`` for verifiable
rewards) and handed to reward functions as keyword arguments.

An empty completion (``chosen``, ``rejected``, ``completion``, or an assistant message with
empty content) is a valid response: a policy that stops at once gives one, and
``rlhf-core label`` writes it as it is. Prompts may not be empty.

A malformed row raises :class:`DataError` naming the source, the row (1-based; the line
number in a JSON Lines file, the record position otherwise) and the column, or, with
``on_error="skip"``, is skipped and counted by reason in the dataset's :class:`LoadReport`.
"""

from rlhf_core.data.containers import (
    ConversationDataset,
    PreferenceDataset,
    PromptCompletionDataset,
    PromptDataset,
)
from rlhf_core.data.errors import DataError, LoadReport
from rlhf_core.data.loaders import load_preferences, load_prompts
from rlhf_core.data.messages import ROLES, check_conversation
from rlhf_core.data.render import (
    ChatRenderer,
    EncodedConversation,
    conversation_turns,
    encode_conversation,
    render_messages,
    render_prompt,
    render_prompt_completion,
)
from rlhf_core.data.sft import load_prompt_completions, load_sft_dataset
from rlhf_core.data.sources import is_hub_dataset_id, iter_records, read_records

__all__ = [
    "ChatRenderer",
    "ConversationDataset",
    "DataError",
    "EncodedConversation",
    "LoadReport",
    "PreferenceDataset",
    "PromptCompletionDataset",
    "PromptDataset",
    "ROLES",
    "check_conversation",
    "conversation_turns",
    "encode_conversation",
    "is_hub_dataset_id",
    "iter_records",
    "load_preferences",
    "load_prompt_completions",
    "load_prompts",
    "load_sft_dataset",
    "read_records",
    "render_messages",
    "render_prompt",
    "render_prompt_completion",
]
