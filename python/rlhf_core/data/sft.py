"""Supervised fine-tuning data in TRL's three formats: prompt-completion
(:func:`load_prompt_completions`), language-modelling ``text`` and conversations
(``messages``), and :func:`load_sft_dataset`, which tells them apart by the first row's columns.
Arguments as in :mod:`rlhf_core.data.loaders`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Literal

from rlhf_core.data.containers import ConversationDataset, PromptCompletionDataset
from rlhf_core.data.errors import DataError
from rlhf_core.data.messages import Message, check_conversation, is_conversation
from rlhf_core.data.render import ChatRenderer
from rlhf_core.data.rows import (
    Lengths,
    OnError,
    Opened,
    Source,
    check_on_error,
    check_required,
    check_text,
    open_source,
    pair_part,
    prompt_messages,
    run_rows,
    tools_of,
)
from rlhf_core.data.sources import Record

__all__ = ["load_prompt_completions", "load_sft_dataset"]


def load_prompt_completions(
    path: Source,
    *,
    prompt_column: str = "prompt",
    completion_column: str = "completion",
    tokenizer: Any = None,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    tools_column: str | None = "tools",
    max_prompt_length: int | None = None,
    max_length: int | None = None,
    length_unit: Literal["chars", "tokens"] | None = None,
    on_error: OnError = "raise",
    split: str | None = None,
    config: str | None = None,
    revision: str | None = None,
    streaming: bool = False,
    limit: int | None = None,
) -> PromptCompletionDataset:
    """Load prompt-completion pairs for supervised fine-tuning (TRL's prompt-completion
    format); rules as in :func:`load_preferences` with one completion column (which may be
    empty: the example then teaches the model to stop)."""
    opened = open_source(
        path, dict(split=split, config=config, revision=revision, streaming=streaming)
    )
    return _prompt_completions(
        opened,
        prompt_column=prompt_column,
        completion_column=completion_column,
        render=ChatRenderer(tokenizer, chat_template_kwargs),
        lengths=Lengths(tokenizer, length_unit),
        tools_column=tools_column,
        max_prompt_length=max_prompt_length,
        max_length=max_length,
        on_error=on_error,
        limit=limit,
    )


def _prompt_completions(
    opened: Opened,
    *,
    prompt_column: str,
    completion_column: str,
    render: ChatRenderer,
    lengths: Lengths,
    tools_column: str | None,
    max_prompt_length: int | None,
    max_length: int | None,
    on_error: str,
    limit: int | None,
) -> PromptCompletionDataset:
    def handle(rec: Mapping[str, Any]) -> tuple[str, str, bool]:
        check_required(rec, [prompt_column, completion_column])
        tools = tools_of(rec, tools_column)
        value = rec[prompt_column]
        prompt_msgs: list[Message] | None = None
        if is_conversation(value):
            prompt_msgs = prompt_messages(value, prompt_column)
            ptext = render.prompt(prompt_msgs, tools=tools, column=prompt_column)
        else:
            ptext = check_text(value, prompt_column)
        lengths.check(ptext, max_prompt_length, prompt_column, "the prompt")
        completion = pair_part(rec, completion_column, prompt_msgs, ptext, render, tools)
        lengths.check(ptext + completion, max_length, completion_column, "prompt + completion")
        return ptext, completion, prompt_msgs is not None

    source, report, rows, items, columns = run_rows(
        opened, on_error, handle, {prompt_column, completion_column}, limit
    )
    return PromptCompletionDataset(
        source=source,
        rows=rows,
        columns=columns,
        report=report,
        conversational=any(c for *_, c in items),
        prompts=[p for p, _, _ in items],
        completions=[c for _, c, _ in items],
    )


def _texts(
    opened: Opened,
    text_column: str,
    lengths: Lengths,
    max_length: int | None,
    on_error: str,
    limit: int | None,
) -> PromptCompletionDataset:
    def handle(rec: Mapping[str, Any]) -> str:
        check_required(rec, [text_column])
        text = check_text(rec[text_column], text_column)
        lengths.check(text, max_length, text_column, "the text")
        return text

    source, report, rows, items, columns = run_rows(opened, on_error, handle, {text_column}, limit)
    return PromptCompletionDataset(
        source=source,
        rows=rows,
        columns=columns,
        report=report,
        conversational=False,
        prompts=[""] * len(items),
        completions=list(items),
    )


def _conversations(
    opened: Opened,
    messages_column: str,
    tools_column: str | None,
    render: ChatRenderer,
    lengths: Lengths,
    max_length: int | None,
    on_error: str,
    limit: int | None,
) -> ConversationDataset:
    def handle(rec: Mapping[str, Any]) -> tuple[list[Message], Any, list[tuple[str, str]]]:
        check_required(rec, [messages_column])
        msgs = check_conversation(rec[messages_column], messages_column)
        tools = tools_of(rec, tools_column)
        turns = render.turns(msgs, tools=tools, column=messages_column)
        if max_length is not None:
            p, c = turns[-1]
            lengths.check(p + c, max_length, messages_column, "the conversation")
        return msgs, tools, turns

    source, report, rows, items, columns = run_rows(
        opened, on_error, handle, {messages_column}, limit
    )
    return ConversationDataset(
        source=source,
        rows=rows,
        columns=columns,
        report=report,
        conversational=True,
        messages=[m for m, _, _ in items],
        tools=[t for _, t, _ in items],
        turns=[t for _, _, t in items],
    )


def load_sft_dataset(
    path: Source,
    *,
    tokenizer: Any = None,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    messages_column: str = "messages",
    text_column: str = "text",
    prompt_column: str = "prompt",
    completion_column: str = "completion",
    tools_column: str | None = "tools",
    max_length: int | None = None,
    length_unit: Literal["chars", "tokens"] | None = None,
    on_error: OnError = "raise",
    split: str | None = None,
    config: str | None = None,
    revision: str | None = None,
    streaming: bool = False,
    limit: int | None = None,
) -> PromptCompletionDataset | ConversationDataset:
    """Load supervised fine-tuning data in whichever of TRL's formats it is, decided by the
    columns of its first row: ``messages`` (conversations; a :class:`ConversationDataset`
    whose :meth:`~ConversationDataset.examples` put the loss on the assistant turns only),
    ``prompt`` + ``completion`` (a :class:`PromptCompletionDataset`), or ``text`` (plain
    language modelling: completions of an empty prompt). Rows are then checked against that
    format. Other arguments as in :func:`load_prompt_completions`."""
    check_on_error(on_error)
    source, records, note = open_source(
        path, dict(split=split, config=config, revision=revision, streaming=streaming)
    )
    first: list[Record] = []
    for item in records:
        if item[2] is not None and on_error == "raise":
            raise item[2]
        first.append(item)
        if item[2] is None:
            break
    rec = first[-1][1] if first and first[-1][2] is None else {}
    opened = (source, _chain(first, records), note)
    render = ChatRenderer(tokenizer, chat_template_kwargs)
    lengths = Lengths(tokenizer, length_unit)
    if messages_column in rec:
        return _conversations(
            opened, messages_column, tools_column, render, lengths, max_length, on_error, limit
        )
    if prompt_column in rec or completion_column in rec or text_column not in rec:
        if rec and prompt_column not in rec and completion_column not in rec:
            row = first[-1][0]
            raise DataError(
                source,
                row,
                None,
                "missing_column",
                f"no supervised fine-tuning format: expected a {messages_column!r} column, "
                f"{prompt_column!r} and {completion_column!r}, or {text_column!r}; the row has "
                f"{sorted(map(str, rec))}",
                row_note=f" (index {row - 1})" if note else "",
            )
        return _prompt_completions(
            opened,
            prompt_column=prompt_column,
            completion_column=completion_column,
            render=render,
            lengths=lengths,
            tools_column=tools_column,
            max_prompt_length=None,
            max_length=max_length,
            on_error=on_error,
            limit=limit,
        )
    return _texts(opened, text_column, lengths, max_length, on_error, limit)


def _chain(first: list[Record], rest: Iterator[Record]) -> Iterator[Record]:
    yield from first
    yield from rest
