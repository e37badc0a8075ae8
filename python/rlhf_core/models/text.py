"""Text to token ids: the one way a prompt and its completion become ids (single or batched),
whether ids already end a turn, and whether two tokenizers give ids the same meaning."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["closes_turn", "encode_prompt_completion", "encode_prompt_completions",
           "same_tokenizer"]  # fmt: skip

#: a text whose encoding shows how a tokenizer normalises, splits and frames text (BOS / EOS)
_PROBE = "Hello, world! 12 + 7 = 19\n  Ünïcode \t tabs"


def closes_turn(tokenizer: Any, ids: Sequence[int]) -> bool:
    """Whether token ids already end a turn: their last token that is not whitespace is the
    EOS token or another special token (a chat template's end-of-turn such as ``<|im_end|>``,
    which it writes after every assistant message, possibly followed by a newline)."""
    special = {int(i) for i in getattr(tokenizer, "all_special_ids", []) or []}
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    special |= {int(i) for i, tok in decoder.items() if getattr(tok, "special", False)}
    if tokenizer.eos_token_id is not None:
        special.add(int(tokenizer.eos_token_id))
    for i in reversed(list(ids)):
        if int(i) in special:
            return True
        if tokenizer.decode([int(i)]).strip():
            return False
    return False


def encode_prompt_completion(
    tokenizer: Any, prompt: str, completion: str, *, add_eos: bool = True
) -> tuple[list[int], int]:
    """Token ids of ``prompt + completion`` and the prompt length in tokens.

    The prompt is encoded with the tokenizer's special tokens (``<bos>`` for the built-in
    tokenizer), the completion without. With ``add_eos`` (the default) the completion ends in
    the EOS token: it is appended (a sampled completion that stopped ends in EOS too) unless
    the completion already closes its turn (:func:`closes_turn`: a completion rendered by a
    chat template ends in the template's end-of-turn token, and a second one would be a
    token the model never sees at generation). An empty completion is a valid one: it becomes
    the EOS token alone. Encoding the two parts separately keeps the boundary exact for any
    tokenizer. Returns (ids, prompt_len).
    """
    return encode_prompt_completions(tokenizer, [prompt], [completion], add_eos=add_eos)[0]


def encode_prompt_completions(
    tokenizer: Any,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    add_eos: bool = True,
) -> list[tuple[list[int], int]]:
    """:func:`encode_prompt_completion` of many pairs, with one batched tokenizer call for the
    prompts and one for the completions (a fast tokenizer encodes a batch in parallel).
    Returns one (ids, prompt_len) per pair."""
    if len(prompts) != len(completions):
        raise ValueError(f"prompts has {len(prompts)} entries, completions has {len(completions)}")
    if not prompts:
        return []
    p_all = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    c_all = tokenizer(list(completions), add_special_tokens=False)["input_ids"]
    out: list[tuple[list[int], int]] = []
    for p, c in zip(p_all, c_all, strict=True):
        p_ids, c_ids = [int(i) for i in p], [int(i) for i in c]
        if add_eos and not closes_turn(tokenizer, c_ids):
            if tokenizer.eos_token_id is None:
                raise ValueError("add_eos=True but the tokenizer has no eos_token_id")
            c_ids.append(int(tokenizer.eos_token_id))
        out.append((p_ids + c_ids, len(p_ids)))
    return out


def same_tokenizer(a: Any, b: Any) -> bool:
    """Whether token ids of ``a`` mean the same to ``b``, and text and conversations become
    the same ids: the same vocabulary (token -> id), the same special tokens (BOS, EOS, UNK and
    the set of all of them), the same chat template, and the same ids for a probe text with
    special tokens. Decided from what the tokenizers hold, not from object identity (two loads
    of one tokenizer are the same; the padding token is not compared: it only pads)."""
    if a is b:
        return True
    for attr in ("bos_token_id", "eos_token_id", "unk_token_id", "chat_template"):
        if getattr(a, attr, None) != getattr(b, attr, None):
            return False
    if set(getattr(a, "all_special_tokens", [])) != set(getattr(b, "all_special_tokens", [])):
        return False
    if len(a) != len(b) or a.get_vocab() != b.get_vocab():
        return False
    return list(a(_PROBE)["input_ids"]) == list(b(_PROBE)["input_ids"])
