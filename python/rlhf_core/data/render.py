"""Conversations to text and token ids, through the tokenizer's chat template.

- :class:`ChatRenderer`: the chat template with ``tools`` and ``chat_template_kwargs`` (e.g.
  ``{"enable_thinking": False}``), or the plain ``"role: content\\n"`` format when there is no
  tokenizer or it has no template. Whatever it cannot render is a row error, never text:
  a template that raises, a template that silently drops the tool calls or tools it was
  given, a template that renders a conversation so that it does not start with the rendering
  of its beginning (no clean split into prompt and completion).
- :func:`render_prompt`: one prompt (text, or messages) as the text a policy continues.
- :func:`render_prompt_completion`: one prompt and its completion as two texts.
- :func:`conversation_turns`: one (prompt, completion) pair per assistant turn of a
  conversation (what ``rlhf-core sft`` trains on for ``messages`` data).
- :func:`encode_conversation`: a whole conversation as token ids with a loss mask on the
  assistant turns only (the encoding an SFT trainer uses for ``messages`` data).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from rlhf_core.data.errors import DataError, RowError, type_name
from rlhf_core.data.messages import (
    Message,
    check_conversation,
    check_messages,
    check_prompt_end,
    check_turns,
    drop_nulls,
    is_conversation,
)

__all__ = [
    "ChatRenderer",
    "EncodedConversation",
    "conversation_turns",
    "encode_conversation",
    "render_messages",
    "render_prompt",
    "render_prompt_completion",
]

logger = logging.getLogger("rlhf_core.data")

#: ids of the template-less tokenizers already reported
_TOLD: set[int] = set()


def render_messages(
    messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = False
) -> str:
    """The plain rendering used when no tokenizer chat template is available:
    ``"role: content\\n"`` per message, then ``"assistant: "`` when a reply is to follow."""
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
    return text + ("assistant: " if add_generation_prompt else "")


class ChatRenderer:
    """Renders checked messages (see :mod:`rlhf_core.data.messages`) with ``tokenizer``'s
    chat template; the plain format without a tokenizer or template (logged once per
    renderer). Methods raise :class:`~rlhf_core.data.errors.RowError` naming ``column``."""

    def __init__(
        self, tokenizer: Any, chat_template_kwargs: Mapping[str, Any] | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.kwargs = dict(chat_template_kwargs or {})
        self.use_template = tokenizer is not None and bool(
            getattr(tokenizer, "chat_template", None)
        )
        if self.kwargs and not self.use_template:
            raise ValueError(
                f"chat_template_kwargs={self.kwargs!r} given, but "
                + ("no tokenizer" if tokenizer is None else "the tokenizer has no chat template")
            )
        if tokenizer is not None and not self.use_template and id(tokenizer) not in _TOLD:
            _TOLD.add(id(tokenizer))  # once per tokenizer, not once per rendered row
            logger.info(
                "tokenizer has no chat template; conversations use the plain role: content format"
            )

    # ----------------------------------------------------------------------------------------

    def _apply(self, msgs: Sequence[Message], generation: bool, tools: Any, column: str) -> str:
        try:
            out = self.tokenizer.apply_chat_template(
                list(msgs),
                tokenize=False,
                add_generation_prompt=generation,
                tools=tools or None,
                **self.kwargs,
            )
        except Exception as exc:  # jinja2 errors, raise_exception() in templates, TypeErrors
            raise RowError(
                column,
                "template_error",
                f"the chat template cannot render this conversation: {type(exc).__name__}: {exc}",
            ) from exc
        return self._strip_bos(str(out))

    def _strip_bos(self, text: str) -> str:
        """Drop a leading BOS the template wrote when encoding the text adds one anyway.

        Rendered text is later encoded with special tokens, so a template-written BOS would
        otherwise appear twice (``<bos><bos>...``).
        """
        bos = getattr(self.tokenizer, "bos_token", None)
        bos_id = getattr(self.tokenizer, "bos_token_id", None)
        if not bos or bos_id is None or not text.startswith(bos):
            return text
        ids = self.tokenizer("x")["input_ids"]
        return text[len(bos) :] if ids and ids[0] == bos_id else text

    def render(
        self, msgs: Sequence[Message], *, generation: bool, tools: Any = None, column: str
    ) -> str:
        """``msgs`` as text; ``generation``: end with the opening of an assistant turn."""
        calls = any(m.get("tool_calls") for m in msgs)
        if not self.use_template:
            if calls or tools:
                raise RowError(
                    column,
                    "template_error",
                    "tool calls and tool definitions need a chat template, and "
                    + (
                        "no tokenizer was given"
                        if self.tokenizer is None
                        else "the tokenizer has none"
                    ),
                )
            return render_messages(msgs, add_generation_prompt=generation)
        text = self._apply(msgs, generation, tools, column)
        if calls:
            bare = [{k: v for k, v in m.items() if k != "tool_calls"} for m in msgs]
            if self._apply(bare, generation, tools, column) == text:
                raise RowError(
                    column,
                    "template_error",
                    "the chat template ignores the messages' tool_calls (they would be lost); "
                    "use a tokenizer whose template renders tool calls",
                )
        if tools and self._apply(msgs, generation, None, column) == text:
            raise RowError(
                column,
                "template_error",
                "the chat template ignores the 'tools' column (the tool definitions would be "
                "lost); use a tokenizer whose template renders tools",
            )
        return text

    def prompt(self, msgs: Sequence[Message], *, tools: Any = None, column: str) -> str:
        """A prompt conversation as the text the assistant's reply continues."""
        return self.render(msgs, generation=True, tools=tools, column=column)

    def completion(
        self,
        prompt_msgs: Sequence[Message],
        completion_msgs: Sequence[Message],
        prompt_text: str,
        *,
        tools: Any = None,
        column: str,
    ) -> str:
        """The text ``completion_msgs`` add after ``prompt_text`` (the rendered prompt)."""
        full = self.render(
            [*prompt_msgs, *completion_msgs], generation=False, tools=tools, column=column
        )
        if not full.startswith(prompt_text):
            raise RowError(
                column,
                "template_mismatch",
                "the chat template renders prompt+completion so that it does not start with the "
                "rendered prompt; cannot split the completion off",
            )
        return full[len(prompt_text) :]

    def turns(
        self, msgs: Sequence[Message], *, tools: Any = None, column: str
    ) -> list[tuple[str, str]]:
        """(prompt text, completion text) for each assistant message of ``msgs``: the prompt
        is everything before it, the completion that message (with its end of turn)."""
        out = []
        for k, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            prompt = self.prompt(msgs[:k], tools=tools, column=column)
            out.append((prompt, self.completion(msgs[:k], [m], prompt, tools=tools, column=column)))
        return out


# --------------------------------------------------------------------------------------------
# one value at a time (for rows that did not come through a loader)


def _raise(source: str, row: int | None, exc: RowError) -> DataError:
    return DataError(source, row, exc.column, exc.kind, exc.detail)


def render_prompt(
    prompt: Any,
    tokenizer: Any,
    *,
    tools: Any = None,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    column: str = "prompt",
    source: str = "<prompts>",
    row: int | None = None,
) -> str:
    """A prompt as the text a policy continues: a string as it is; a list of messages checked
    and rendered with ``tokenizer``'s chat template (with ``add_generation_prompt``, ``tools``
    and ``chat_template_kwargs``). Anything else, or messages that are malformed or that the
    template cannot render, raises :class:`DataError` naming ``source``, ``row`` and
    ``column`` — a value is never turned into text with ``str()``."""
    if isinstance(prompt, str):
        return prompt
    try:
        if not is_conversation(prompt):
            raise RowError(
                column,
                "wrong_type",
                f"expected a string or a list of {{role, content}} messages, got {type_name(prompt)}",
            )
        msgs = check_messages(prompt, column)
        check_turns(msgs, column)
        check_prompt_end(msgs, column)
        return ChatRenderer(tokenizer, chat_template_kwargs).prompt(
            msgs, tools=drop_nulls(tools), column=column
        )
    except RowError as exc:
        raise _raise(source, row, exc) from None


def render_prompt_completion(
    prompt: Any,
    completion: Any,
    tokenizer: Any,
    *,
    tools: Any = None,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    column: str = "completion",
    source: str = "<examples>",
    row: int | None = None,
) -> tuple[str, str]:
    """A prompt and its completion as (prompt text, completion text): two strings as they are
    (an empty completion is valid: stopping at once is an answer); a prompt conversation and
    the assistant messages continuing it rendered with the chat template, the completion being
    what the messages add. Mixed kinds, malformed messages or a template that cannot render
    them raise :class:`DataError`."""
    if isinstance(prompt, str) and isinstance(completion, str):
        return prompt, completion
    try:
        if not (is_conversation(prompt) and is_conversation(completion)):
            raise RowError(
                column,
                "mixed_format",
                f"the prompt is {type_name(prompt)} and the completion {type_name(completion)}: "
                "give two strings or two lists of messages",
            )
        p = check_messages(prompt, "prompt")
        check_turns(p, "prompt")
        check_prompt_end(p, "prompt")
        c = check_messages(completion, column)
        check_turns([*p, *c], column, start_index=len(p))
        renderer = ChatRenderer(tokenizer, chat_template_kwargs)
        t = drop_nulls(tools)
        ptext = renderer.prompt(p, tools=t, column="prompt")
        return ptext, renderer.completion(p, c, ptext, tools=t, column=column)
    except RowError as exc:
        raise _raise(source, row, exc) from None


def conversation_turns(
    messages: Any,
    tokenizer: Any,
    *,
    tools: Any = None,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    column: str = "messages",
    source: str = "<conversations>",
    row: int | None = None,
) -> list[tuple[str, str]]:
    """One (prompt text, completion text) pair per assistant message of a conversation (see
    :meth:`ChatRenderer.turns`): trained as prompt-completion pairs, the loss falls on the
    assistant turns only, each in its own context."""
    try:
        msgs = check_conversation(messages, column)
        return ChatRenderer(tokenizer, chat_template_kwargs).turns(
            msgs, tools=drop_nulls(tools), column=column
        )
    except RowError as exc:
        raise _raise(source, row, exc) from None


# --------------------------------------------------------------------------------------------
# token ids with an assistant-only loss mask


class EncodedConversation(NamedTuple):
    """``input_ids``: int64 (T,); ``loss_mask``: bool (T,), True on the tokens of assistant
    turns (the tokens to predict)."""

    input_ids: Any
    loss_mask: Any


def encode_conversation(
    tokenizer: Any,
    messages: Any,
    *,
    tools: Any = None,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    column: str = "messages",
    source: str = "<conversations>",
    row: int | None = None,
) -> EncodedConversation:
    """A conversation rendered with ``tokenizer``'s chat template into token ids, and a loss
    mask that covers the assistant turns only (each assistant message's text as the template
    writes it, its end-of-turn token included).

    The rendering is cut at every assistant turn (the text before it is the rendering of the
    conversation up to it with ``add_generation_prompt``) and each piece is encoded on its
    own, the first with the tokenizer's special tokens (e.g. BOS), as
    :func:`rlhf_core.models.encode_prompt_completion` encodes a prompt and a completion; an
    assistant piece that does not end its turn (the plain format) gets the EOS token, and one
    that does is not given a second (:func:`rlhf_core.models.closes_turn`). So the tokens and
    mask of each turn equal those of :func:`conversation_turns`' pair encoded with
    ``encode_prompt_completion``. Raises :class:`DataError` for malformed messages or a
    template that does not render the conversation as a sequence of its beginnings."""
    import numpy as np

    from rlhf_core.models import closes_turn

    try:
        msgs = check_conversation(messages, column)
        renderer = ChatRenderer(tokenizer, chat_template_kwargs)
        t = drop_nulls(tools)
        pieces: list[tuple[str, bool]] = []
        done = ""
        for k, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            before = renderer.prompt(msgs[:k], tools=t, column=column)
            through = renderer.render(msgs[: k + 1], generation=False, tools=t, column=column)
            if not before.startswith(done) or not through.startswith(before):
                raise RowError(
                    column,
                    "template_mismatch",
                    f"the chat template renders message {k + 1} so that the conversation up to "
                    "it is not a prefix of the whole; cannot mark the assistant turns",
                )
            pieces += [(before[len(done) :], False), (through[len(before) :], True)]
            done = through
    except RowError as exc:
        raise _raise(source, row, exc) from None
    ids: list[int] = []
    mask: list[bool] = []
    for text, target in pieces:
        if not text and not target:
            continue
        part = list(tokenizer(text, add_special_tokens=not ids)["input_ids"])
        if target and not closes_turn(tokenizer, part):
            if tokenizer.eos_token_id is None:
                raise ValueError("the tokenizer has no eos_token_id to end an assistant turn")
            part.append(int(tokenizer.eos_token_id))
        ids += part
        mask += [target] * len(part)
    return EncodedConversation(np.asarray(ids, dtype=np.int64), np.asarray(mask, dtype=bool))
