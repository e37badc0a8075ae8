"""Verifiable rewards: the final answer of a completion checked against the dataset's answer."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["completion_text", "exact_match_reward", "extract_answer"]


def completion_text(completion: Any) -> str:
    """The text of a completion as reward functions receive it: a string as it is; a
    conversational completion (a list of messages, ``[{"role": "assistant", "content": ...}]``)
    as the content of its messages joined; anything else is a ``TypeError``."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and all(isinstance(m, Mapping) for m in completion):
        return "".join(str(m.get("content") or "") for m in completion)
    raise TypeError(
        f"a completion is a string or a list of messages, got {type(completion).__name__}"
    )


_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?|[-+]?\.\d+")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_HASHES = re.compile(r"####\s*([^\n]*)")
_ANSWER_IS = re.compile(r"answer\s*(?:is|:|=)\s*([^\n]*)", re.IGNORECASE)


def extract_answer(text: str) -> str:
    """The final answer in a completion.

    Tried in order: the last ``\\boxed{...}``; the text after the last ``####``; the text after
    the last ``answer:`` / ``answer is`` / ``answer =``; the last number in the text; finally
    the first line of the text. Returns it stripped (may be ``""``).
    """
    for pat in (_BOXED, _HASHES, _ANSWER_IS):
        hits = pat.findall(text)
        if hits:
            return str(hits[-1]).strip()
    nums = _NUMBER.findall(text)
    if nums:
        return str(nums[-1])
    stripped = text.strip()
    return stripped.splitlines()[0].strip() if stripped else ""


def _normalise(s: str) -> str:
    s = s.strip().lower().rstrip(".").strip()
    if s.startswith("$") and s.endswith("$") and len(s) > 1:
        s = s[1:-1].strip()
    return " ".join(s.split())


def _as_number(s: str) -> float | None:
    t = s.replace(",", "")
    if not re.fullmatch(r"[-+]?(\d+(\.\d*)?|\.\d+)", t):
        return None
    return float(t)


def _answers_match(predicted: str, expected: str) -> bool:
    p, e = _normalise(predicted), _normalise(expected)
    if p == e:
        return True
    pn = _as_number(p)
    if pn is None:
        # "19 apples" vs "19": compare the answer's leading number
        m = _NUMBER.match(p)
        pn = _as_number(m.group(0)) if m else None
    en = _as_number(e)
    return pn is not None and en is not None and pn == en


def exact_match_reward(
    prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[Any]
) -> list[float | None]:
    """1.0 when the final answer of a completion equals the ``answer`` column, else 0.0.

    The final answer comes from :func:`extract_answer`; both sides are lower-cased, stripped of
    a trailing period and of surrounding ``$``, and numbers compare by value (``"19.0"`` equals
    ``"19"``, ``"1,000"`` equals ``"1000"``). A completion without a recognisable answer scores
    0.0; a row whose ``answer`` is None is unscorable (None). Conversational completions are
    read through :func:`completion_text`.
    """
    out: list[float | None] = []
    for c, a in zip(completions, answer, strict=True):
        if a is None:
            out.append(None)
            continue
        out.append(1.0 if _answers_match(extract_answer(completion_text(c)), str(a)) else 0.0)
    return out
