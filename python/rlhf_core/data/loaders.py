"""The RL and preference loaders: :func:`load_prompts` (prompt-only) and
:func:`load_preferences` (``prompt`` / ``chosen`` / ``rejected``, or conversational pairs with an
implicit prompt). Supervised fine-tuning data loads through :mod:`rlhf_core.data.sft`.

Every loader takes the source arguments ``split``, ``config`` (a Hub dataset's configuration
name), ``revision``, ``streaming`` and ``limit`` (stop after that many usable rows: with
``streaming=True`` nothing after them is downloaded), and the rendering arguments
``tokenizer`` and ``chat_template_kwargs``; a malformed row raises a :class:`DataError` naming
the source, the row and the column, or is skipped and counted (``on_error="skip"``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from rlhf_core.data.containers import PreferenceDataset, PromptDataset
from rlhf_core.data.errors import DataError, RowError
from rlhf_core.data.messages import Message, check_messages, is_conversation
from rlhf_core.data.render import ChatRenderer
from rlhf_core.data.rows import (
    Lengths,
    OnError,
    Source,
    check_required,
    check_text,
    missing,
    open_source,
    pair_part,
    prompt_messages,
    run_rows,
    tools_of,
)

__all__ = ["DataError", "load_preferences", "load_prompts"]


# --------------------------------------------------------------------------------------------
# prompts


def load_prompts(
    path: Source,
    *,
    prompt_column: str = "prompt",
    required_columns: Sequence[str] = (),
    tokenizer: Any = None,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    tools_column: str | None = "tools",
    max_prompt_length: int | None = None,
    length_unit: Literal["chars", "tokens"] | None = None,
    on_error: OnError = "raise",
    split: str | None = None,
    config: str | None = None,
    revision: str | None = None,
    streaming: bool = False,
    limit: int | None = None,
) -> PromptDataset:
    """Load a prompt-only dataset (for RL).

    Args:
        path: a local file or folder, a Hub dataset id, or a list of dicts (e.g. a
            ``datasets.Dataset``); see :mod:`rlhf_core.data.sources`.
        prompt_column: the column holding the prompt (text or messages).
        required_columns: extra columns every row must have (e.g. ``("answer",)``).
        tokenizer: renders conversational prompts with its chat template and measures lengths
            in tokens.
        chat_template_kwargs: extra template variables (e.g. ``{"enable_thinking": False}``).
        tools_column: a column of tool definitions handed to the template (kept as a column).
        max_prompt_length: rows whose rendered prompt is longer are malformed.
        length_unit: ``"chars"`` or ``"tokens"``; default tokens when a tokenizer is given.
        on_error: ``"raise"`` the first :class:`DataError`, or ``"skip"`` bad rows (counted in
            ``dataset.report``; a warning summarises them).
        split: which split (default: the only one, or ``train``).
        config, revision, streaming, limit: see the module docstring.
    """
    render = ChatRenderer(tokenizer, chat_template_kwargs)
    lengths = Lengths(tokenizer, length_unit)

    def handle(rec: Mapping[str, Any]) -> tuple[str, list[Message] | None]:
        check_required(rec, [prompt_column, *required_columns])
        value = rec[prompt_column]
        if is_conversation(value):
            msgs = prompt_messages(value, prompt_column)
            text = render.prompt(msgs, tools=tools_of(rec, tools_column), column=prompt_column)
            conv: list[Message] | None = msgs
        else:
            text = check_text(value, prompt_column)
            conv = None
        lengths.check(text, max_prompt_length, prompt_column, "the prompt")
        return text, conv

    opened = open_source(
        path, dict(split=split, config=config, revision=revision, streaming=streaming)
    )
    source, report, rows, items, columns = run_rows(
        opened, on_error, handle, {prompt_column}, limit
    )
    return PromptDataset(
        source=source,
        rows=rows,
        columns=columns,
        report=report,
        conversational=any(m is not None for _, m in items),
        prompts=[t for t, _ in items],
        messages=[m for _, m in items],
    )


# --------------------------------------------------------------------------------------------
# preferences


def _implicit_prompt(
    rec: Mapping[str, Any], chosen: str, rejected: str
) -> tuple[list[Message], list[Message], list[Message]]:
    c = check_messages(rec[chosen], chosen)
    r = check_messages(rec[rejected], rejected)
    n = 0
    while n < min(len(c), len(r)) and c[n] == r[n]:
        n += 1
    if n == 0:
        raise RowError(
            "prompt",
            "missing_column",
            "missing column, and chosen/rejected share no leading messages to take the prompt from",
        )
    while n > 0 and c[n - 1]["role"] not in ("user", "tool"):
        n -= 1
    if n == 0:
        raise RowError(
            "prompt",
            "missing_column",
            "missing column, and the messages chosen/rejected share do not end with a user turn",
        )
    return c[:n], c[n:], r[n:]


def load_preferences(
    path: Source,
    *,
    prompt_column: str | None = "prompt",
    chosen_column: str = "chosen",
    rejected_column: str = "rejected",
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
) -> PreferenceDataset:
    """Load a preference dataset (``prompt``, ``chosen``, ``rejected``).

    ``prompt_column=None`` means the rows have no prompt (plain-text pairs scored on their
    own; prompts come back as ``""``). Conversational rows without a prompt column take the
    messages ``chosen`` and ``rejected`` share as the prompt (TRL's implicit prompt). An empty
    completion is a valid response (a policy that stopped at once; often the rejected side);
    a row whose chosen and rejected completions are equal is malformed (it carries no
    preference). ``max_prompt_length`` limits the rendered prompt, ``max_length`` the rendered
    prompt + completion (each side). Other arguments as in :func:`load_prompts`.
    """
    render = ChatRenderer(tokenizer, chat_template_kwargs)
    lengths = Lengths(tokenizer, length_unit)

    def handle(rec: Mapping[str, Any]) -> tuple[str, str, str, bool]:
        check_required(rec, [chosen_column, rejected_column])
        tools = tools_of(rec, tools_column)
        prompt_msgs: list[Message] | None = None
        if prompt_column is not None and prompt_column not in rec:
            if is_conversation(rec[chosen_column]) and is_conversation(rec[rejected_column]):
                prompt_msgs, c_msgs, r_msgs = _implicit_prompt(rec, chosen_column, rejected_column)
                rec = {**rec, chosen_column: c_msgs, rejected_column: r_msgs}
            else:
                raise RowError(prompt_column, "missing_column", missing(rec))
        elif prompt_column is not None:
            value = rec[prompt_column]
            if is_conversation(value):
                prompt_msgs = prompt_messages(value, prompt_column)
            else:
                check_text(value, prompt_column)
        pcol = prompt_column or "prompt"
        if prompt_msgs is not None:
            ptext = render.prompt(prompt_msgs, tools=tools, column=pcol)
        elif prompt_column is not None:
            ptext = rec[prompt_column]
        else:
            ptext = ""
        lengths.check(ptext, max_prompt_length, pcol, "the prompt")
        chosen = pair_part(rec, chosen_column, prompt_msgs, ptext, render, tools)
        rejected = pair_part(rec, rejected_column, prompt_msgs, ptext, render, tools)
        if chosen == rejected:
            raise RowError(
                rejected_column, "same_pair", "chosen and rejected are identical (no preference)"
            )
        for col, text in ((chosen_column, chosen), (rejected_column, rejected)):
            lengths.check(ptext + text, max_length, col, "prompt + completion")
        return ptext, chosen, rejected, prompt_msgs is not None

    reserved = {chosen_column, rejected_column} | ({prompt_column} if prompt_column else set())
    opened = open_source(
        path, dict(split=split, config=config, revision=revision, streaming=streaming)
    )
    source, report, rows, items, columns = run_rows(opened, on_error, handle, reserved, limit)
    return PreferenceDataset(
        source=source,
        rows=rows,
        columns=columns,
        report=report,
        conversational=any(c for *_, c in items),
        prompts=[p for p, *_ in items],
        chosen=[c for _, c, _, _ in items],
        rejected=[r for _, _, r, _ in items],
    )
