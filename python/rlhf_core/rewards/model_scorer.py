"""A reward model as a reward source: scored on the policy's sampled token ids when it reads
them as they are, otherwise on the texts re-encoded with its own tokenizer and chat template."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["RewardModelScorer"]


def _device_of(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


class RewardModelScorer:
    """A reward model as a reward function: ``scorer(prompts=..., completions=..., **kw)``.

    Args:
        reward_model: a :class:`rlhf_core.models.RewardModel` (``forward(input_ids,
            attention_mask) -> (B,)``).
        tokenizer: the reward model's own tokenizer (its chat template renders
            conversations).
        policy_tokenizer: the tokenizer of the policy whose samples are scored; None = the
            same as ``tokenizer``. When the two are the same
            (:func:`rlhf_core.models.same_tokenizer`: vocabulary, special tokens, chat
            template, not object identity), :attr:`reads_policy_ids` is True and the trainers
            score the exact sampled token ids (:meth:`score_ids`, no copy, no re-encoding);
            otherwise they call the scorer on the texts, which it re-encodes.
        chat_template_kwargs: extra variables of the reward model's chat template.
        batch_size: rows per forward; rows are sorted by length and right-padded.
        max_length: longer sequences keep their last ``max_length`` tokens (the reward is
            read at the end).
        add_eos: end each completion with EOS (unless it already closes its turn).
        name: what logs call its scores (``reward/<name>``; default ``"reward_model"``), e.g.
            ``"check_model"`` for a held-out check model tracked beside the optimised one.

    Called on texts, each (prompt, completion) is encoded as reward-model training encodes it:
    plain text with :func:`rlhf_core.models.encode_prompt_completions` (prompt with special
    tokens, completion without, then EOS), in one batched tokenizer call; a conversational
    prompt (a list of messages) with its completion (a string, or ``[{"role": "assistant",
    "content": ...}]``) is first rendered with the reward model's chat template
    (:func:`rlhf_core.data.render_prompt_completion`, with the row's ``tools`` when the data has
    that column). Scores run under ``torch.inference_mode``. Returns a list of B floats.
    """

    __name__ = "reward_model"

    def __init__(
        self,
        reward_model: torch.nn.Module,
        tokenizer: Any,
        *,
        policy_tokenizer: Any = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        batch_size: int = 32,
        max_length: int | None = None,
        add_eos: bool = True,
        name: str | None = None,
    ) -> None:
        from rlhf_core.models import same_tokenizer

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be >= 1 or None, got {max_length}")
        if name is not None:
            if not name or "/" in name:
                raise ValueError(f"name must be a non-empty string without '/', got {name!r}")
            self.__name__ = name
        self.reward_model = reward_model
        self.tokenizer = tokenizer
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.batch_size = int(batch_size)
        self.max_length = max_length
        self.add_eos = add_eos
        #: whether the policy's token ids can be scored as they are (same tokenizer)
        self.reads_policy_ids = policy_tokenizer is None or same_tokenizer(
            tokenizer, policy_tokenizer
        )

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any
    ) -> list[float | None]:
        tools = columns.get("tools")
        return [float(x) for x in self.score_ids(self.encode(prompts, completions, tools))]

    def encode(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        tools: Sequence[Any] | None = None,
    ) -> list[list[int]]:
        """Token ids (prompt + completion) of each pair in the reward model's own encoding:
        conversations rendered with its chat template, then one batched encoding."""
        from rlhf_core.data import render_prompt_completion
        from rlhf_core.models import encode_prompt_completions

        if len(prompts) != len(completions):
            raise ValueError(
                f"prompts has {len(prompts)} entries, completions has {len(completions)}"
            )
        p_texts: list[str] = []
        c_texts: list[str] = []
        for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
            if not isinstance(p, str) and isinstance(c, str):
                c = [{"role": "assistant", "content": c}]  # a reply to a conversation
            pt, ct = render_prompt_completion(
                p, c, self.tokenizer, tools=None if tools is None else tools[i],
                chat_template_kwargs=self.chat_template_kwargs or None,
                source="reward model input", row=i + 1,
            )  # fmt: skip
            p_texts.append(pt)
            c_texts.append(ct)
        pairs = encode_prompt_completions(self.tokenizer, p_texts, c_texts, add_eos=self.add_eos)
        return [ids for ids, _ in pairs]

    def score_ids(
        self, sequences: Sequence[Sequence[int] | np.ndarray | torch.Tensor]
    ) -> np.ndarray:
        """Scores of token-id sequences (prompt + response, no padding): float64 (B,)."""
        return self.raw_scores(sequences)

    def score_ids_parts(
        self, sequences: Sequence[Sequence[int] | np.ndarray | torch.Tensor]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """:meth:`score_ids` and the named per-sequence parts logged beside it (none for one
        reward model; an ensemble's members and disagreement for
        :class:`~rlhf_core.rewards.ensemble.RewardEnsembleScorer`)."""
        return self.score_ids(sequences), {}

    def raw_scores(
        self, sequences: Sequence[Sequence[int] | np.ndarray | torch.Tensor]
    ) -> np.ndarray:
        """What the model returns for token-id sequences, in float64: (B,) for a reward
        model, (B, K) for a model with K outputs (a reward ensemble)."""
        rows = [np.asarray(s, dtype=np.int64).reshape(-1) for s in sequences]
        for i, r in enumerate(rows):
            if r.size == 0:
                raise ValueError(f"sequences[{i}] is empty")
        if self.max_length is not None:
            rows = [r[-self.max_length :] for r in rows]
        model = self.reward_model
        device = _device_of(model)
        order = np.argsort([len(r) for r in rows], kind="stable")
        out: np.ndarray | None = None
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                for s in range(0, len(rows), self.batch_size):
                    idx = order[s : s + self.batch_size]
                    width = max(len(rows[i]) for i in idx)
                    ids = torch.full((len(idx), width), int(pad), dtype=torch.long)
                    mask = torch.zeros((len(idx), width), dtype=torch.long)
                    for j, i in enumerate(idx):
                        ids[j, : len(rows[i])] = torch.from_numpy(rows[i])
                        mask[j, : len(rows[i])] = 1
                    scores = model(ids.to(device), mask.to(device))  # (b,) or (b, K)
                    got = scores.double().cpu().numpy()
                    if out is None:
                        out = np.empty((len(rows), *got.shape[1:]), dtype=np.float64)
                    out[idx] = got
        finally:
            model.train(was_training)
        return out if out is not None else np.empty(0, dtype=np.float64)
