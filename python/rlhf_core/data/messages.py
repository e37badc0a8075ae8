"""Checks of conversational values: a list of ``{"role", "content"}`` messages, with TRL's
roles and tool calls.

Roles: ``system`` and ``developer`` (instructions; only at the start, any number of them),
``user``, ``assistant`` and ``tool`` (a tool's result). Order after the instructions: ``user``
first; an ``assistant`` message follows a ``user`` or ``tool`` message; a ``tool`` message
follows an assistant message that made ``tool_calls`` (or another tool result); a ``user``
message follows an ``assistant`` one.

Content: a string. ``user``, ``system`` and ``developer`` content may not be blank. An
``assistant`` message may have empty content (stopping at once is an answer; and a message
that only calls tools has none: ``null`` or no ``content`` is then fine). A ``tool`` result
may be empty. ``tool_calls``: a list of ``{"type": "function", "function": {"name": str,
"arguments": object or JSON string}}`` on assistant messages only. Other keys (``name``,
``tool_call_id``, ``reasoning_content``, ...) pass through to the chat template; keys whose
value is ``null`` are dropped, and so are ``null`` values inside ``tool_calls`` (Arrow-backed
datasets fill absent keys with ``null``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rlhf_core.data.errors import RowError, type_name

__all__ = [
    "INSTRUCTION_ROLES",
    "Message",
    "ROLES",
    "check_conversation",
    "check_messages",
    "check_prompt_end",
    "check_turns",
    "drop_nulls",
    "is_conversation",
]

Message = dict[str, Any]

ROLES = ("system", "developer", "user", "assistant", "tool")
#: roles that may only open a conversation
INSTRUCTION_ROLES = ("system", "developer")

_WRONG = "expected a string or a list of {role, content} messages, got "


def is_conversation(v: Any) -> bool:
    """Whether a column value is conversational (a list of messages) rather than text."""
    return isinstance(v, (list, tuple))


def drop_nulls(v: Any) -> Any:
    """``v`` with ``None`` values removed from every mapping inside it (lists keep their
    length)."""
    if isinstance(v, Mapping):
        return {k: drop_nulls(x) for k, x in v.items() if x is not None}
    if isinstance(v, (list, tuple)):
        return [drop_nulls(x) for x in v]
    return v


def _check_tool_calls(calls: Any, column: str, j: int) -> list[Any]:
    if not isinstance(calls, (list, tuple)) or not calls:
        raise RowError(
            column,
            "bad_tool_call",
            f"message {j}: 'tool_calls' is {type_name(calls)}, expected a non-empty list",
        )
    out = []
    for k, call in enumerate(calls, start=1):
        call = drop_nulls(call)
        fn = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(fn, Mapping):
            raise RowError(
                column,
                "bad_tool_call",
                f"message {j}, tool call {k}: expected an object with a 'function' object "
                f"{{name, arguments}}, got {type_name(call)}",
            )
        if call.get("type", "function") != "function":
            raise RowError(
                column,
                "bad_tool_call",
                f"message {j}, tool call {k}: type {call.get('type')!r}, expected 'function'",
            )
        name = fn.get("name")
        if not isinstance(name, str) or not name.strip():
            raise RowError(
                column,
                "bad_tool_call",
                f"message {j}, tool call {k}: the function has no name (got {type_name(name)})",
            )
        args = fn.get("arguments", {})
        if not isinstance(args, (Mapping, str)):
            raise RowError(
                column,
                "bad_tool_call",
                f"message {j}, tool call {k} ({name}): 'arguments' is {type_name(args)}, "
                "expected an object or a JSON string",
            )
        out.append(call)
    return out


def _check_one(m: Any, column: str, j: int) -> Message:
    if not isinstance(m, Mapping):
        raise RowError(
            column,
            "wrong_type",
            f"message {j} is {type_name(m)}, expected an object with 'role' and 'content'",
        )
    if m.get("role") is None:
        raise RowError(column, "missing_role", f"message {j} has no 'role'")
    role = m["role"]
    if not isinstance(role, str):
        raise RowError(
            column, "wrong_type", f"message {j}: 'role' is {type_name(role)}, expected a string"
        )
    if role not in ROLES:
        raise RowError(
            column,
            "unknown_role",
            f"message {j} has unknown role {role!r}; expected one of {list(ROLES)}",
        )
    out: Message = {k: v for k, v in m.items() if v is not None}
    calls = m.get("tool_calls")
    if calls is not None:
        if role != "assistant":
            raise RowError(
                column,
                "bad_tool_call",
                f"message {j} ({role}) has 'tool_calls'; only assistant messages call tools",
            )
        out["tool_calls"] = _check_tool_calls(calls, column, j)
    content = m.get("content")
    if content is None:
        if calls is None:
            raise RowError(column, "missing_content", f"message {j} ({role}) has no 'content'")
        out["content"] = ""
        return out
    if not isinstance(content, str):
        raise RowError(
            column,
            "wrong_type",
            f"message {j} ({role}): 'content' is {type_name(content)}, expected a string",
        )
    if role not in ("assistant", "tool") and not content.strip():
        raise RowError(column, "empty_text", f"message {j} ({role}) has empty content")
    return out


def check_messages(v: Any, column: str) -> list[Message]:
    """The messages of a conversational value, each checked (see the module docstring), as
    plain dicts without ``null`` values; :class:`RowError` naming ``column`` otherwise."""
    if not is_conversation(v):
        raise RowError(column, "wrong_type", _WRONG + type_name(v))
    if len(v) == 0:
        raise RowError(column, "empty_text", "empty conversation (no messages)")
    return [_check_one(m, column, j) for j, m in enumerate(v, start=1)]


def check_turns(msgs: Sequence[Message], column: str, *, start_index: int = 0) -> None:
    """The order of roles (see the module docstring). ``msgs`` is the whole conversation;
    errors report positions from ``start_index`` on against ``column``."""
    prev: Message | None = None
    for j, m in enumerate(msgs):
        role = m["role"]
        pos = j + 1 - start_index
        if role in INSTRUCTION_ROLES:
            if prev is not None and prev["role"] not in INSTRUCTION_ROLES:
                raise RowError(
                    column,
                    "non_alternating_roles",
                    f"message {pos} is a {role} message; only the first messages may be "
                    "system or developer messages",
                )
            prev = m
            continue
        before = None if prev is None or prev["role"] in INSTRUCTION_ROLES else prev["role"]
        if role == "user":
            ok, expected = before in (None, "assistant"), "assistant" if before else "user"
        elif role == "assistant":
            ok, expected = before in ("user", "tool"), "user"
        else:  # tool
            called = before == "assistant" and prev is not None and bool(prev.get("tool_calls"))
            ok, expected = called or before == "tool", "an assistant message with tool_calls"
        if not ok:
            if role == "tool":
                detail = f"message {pos} is a tool result, but it follows no tool call"
            elif before is None:
                detail = f"message {pos} is {role!r}; a conversation starts with 'user'"
            else:
                detail = (
                    "roles must alternate user/assistant starting with user (tool results after "
                    f"an assistant's tool calls): message {pos} is {role!r} after {before!r}"
                    f" where {expected!r} was expected"
                )
            raise RowError(column, "non_alternating_roles", detail)
        prev = m


def check_prompt_end(msgs: Sequence[Message], column: str) -> None:
    """A prompt conversation ends where the assistant speaks next: with a user message or a
    tool result."""
    if msgs[-1]["role"] not in ("user", "tool"):
        raise RowError(
            column,
            "non_alternating_roles",
            "a prompt conversation must end with a user message (or a tool result), it ends "
            f"with {msgs[-1]['role']!r}",
        )


def check_conversation(v: Any, column: str) -> list[Message]:
    """A whole conversation for language modelling (TRL's ``messages``): checked messages in a
    valid order with at least one assistant message (the part the loss is on)."""
    msgs = check_messages(v, column)
    check_turns(msgs, column)
    if not any(m["role"] == "assistant" for m in msgs):
        raise RowError(
            column, "no_assistant", "the conversation has no assistant message to learn from"
        )
    return msgs
