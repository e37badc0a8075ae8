"""What one step samples: the :class:`Rollout` container, and the prompt table it is drawn from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["Rollout", "prompt_table"]


def prompt_table(prompts: Any) -> tuple[list[str], dict[str, list[Any]]]:
    """Prompt texts and the extra columns (for reward functions) from a
    :class:`rlhf_core.data.PromptDataset`, a list of strings, or a list of mappings with a
    ``prompt`` key (every other key becomes a column; all rows must have the same keys)."""
    if hasattr(prompts, "prompts") and hasattr(prompts, "columns"):
        return [str(p) for p in prompts.prompts], {
            k: list(v) for k, v in dict(prompts.columns).items()
        }
    texts: list[str] = []
    columns: dict[str, list[Any]] = {}
    keys: set[str] | None = None
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            row_keys: set[str] = set()
            texts.append(p)
        elif isinstance(p, Mapping):
            if "prompt" not in p:
                raise ValueError(f"prompts[{i}] has no 'prompt' key (keys: {sorted(p)})")
            texts.append(str(p["prompt"]))
            row_keys = {str(k) for k in p if k != "prompt"}
            for k in row_keys:
                columns.setdefault(k, []).append(p[k])
        else:
            raise ValueError(
                f"prompts[{i}] is a {type(p).__name__}; expected a string or a mapping with "
                "'prompt'"
            )
        if keys is None:
            keys = row_keys
        elif row_keys != keys:
            raise ValueError(
                f"prompts[{i}] has columns {sorted(row_keys)} but earlier rows have "
                f"{sorted(keys)}: every row needs the same columns"
            )
    if not texts:
        raise ValueError("prompts is empty")
    return texts, columns


@dataclass
class Rollout:
    """One step's sampled completions and everything computed about them (this rank's share).

    Attributes:
        prompt_ids, response_ids: int64 (P_i,) / (R_i,) token ids per sequence (the response
            ends with its EOS when it stopped).
        group_ids: int64 (N,): the position of each row's prompt in the step's global prompt
            list (equal ids = one group, the same id on every rank).
        truncated: bool (N,): hit ``max_new_tokens`` without an EOS.
        texts: the N decoded responses.
        prompt_index: int64 (N,): index of each row's prompt in the trainer's prompt table.
        scores: float64 (N,): the combined reward (NaN = unscorable); empty before scoring.
        score_parts: ``{source name: float64 (N,)}``, each reward source's raw scores.
        padded: the whole rollout as model input: ``input_ids``, ``attention_mask`` int64
            (N, T) and ``loss_mask`` bool (N, T-1) marking response tokens.
        logprobs, ref_logprobs, values: float32 (R_i,) per sequence, aligned with the response
            tokens: the rollout policy's and the reference's logprobs, the value model's values
            (empty until the no-grad forwards ran; ``values`` only with a value model).
        entropies: float32 (R_i,) per sequence, the rollout policy's next-token entropies
            (only when the collector is asked for them: ``top_entropy_quantile``).
        teacher_logprobs: float32 (R_i,) per sequence, a distillation teacher's logprobs of the
            sampled tokens (only with a teacher).
    """

    prompt_ids: list[np.ndarray]
    response_ids: list[np.ndarray]
    group_ids: np.ndarray
    truncated: np.ndarray
    texts: list[str]
    prompt_index: np.ndarray
    scores: np.ndarray
    score_parts: dict[str, np.ndarray]
    padded: dict[str, torch.Tensor]
    logprobs: list[np.ndarray] = field(default_factory=list)
    ref_logprobs: list[np.ndarray] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)
    entropies: list[np.ndarray] = field(default_factory=list)
    teacher_logprobs: list[np.ndarray] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.response_ids)

    @property
    def response_lengths(self) -> np.ndarray:
        """int64 (N,) response tokens per sequence."""
        return np.array([len(r) for r in self.response_ids], dtype=np.int64)

    @property
    def response_offsets(self) -> np.ndarray:
        """int64 (N + 1,): the ragged layout of the per-token fields concatenated."""
        return np.concatenate([[0], np.cumsum(self.response_lengths)]).astype(np.int64)

    def select(self, rows: np.ndarray | list[int]) -> Rollout:
        """The rows ``rows`` (int indices, in that order, or a bool (N,) mask) of a rollout
        that has not been through the forwards yet (``padded`` is empty)."""
        if self.padded or self.logprobs:
            raise ValueError("select() takes a rollout before its forwards (no padded inputs)")
        idx = np.asarray(rows)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise ValueError(f"rows mask has shape {idx.shape}, expected ({len(self)},)")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64)
        return Rollout(
            prompt_ids=[self.prompt_ids[i] for i in idx],
            response_ids=[self.response_ids[i] for i in idx],
            group_ids=np.asarray(self.group_ids)[idx],
            truncated=np.asarray(self.truncated)[idx],
            texts=[self.texts[i] for i in idx],
            prompt_index=np.asarray(self.prompt_index)[idx],
            scores=np.asarray(self.scores)[idx],
            score_parts={k: np.asarray(v)[idx] for k, v in self.score_parts.items()},
            padded={},
        )

    @staticmethod
    def concat(parts: list[Rollout]) -> Rollout:
        """Scored rollouts before their forwards, one after the other (rows in order)."""
        if not parts:
            raise ValueError("concat() needs at least one rollout")
        keys = list(parts[0].score_parts)
        return Rollout(
            prompt_ids=[p for r in parts for p in r.prompt_ids],
            response_ids=[x for r in parts for x in r.response_ids],
            group_ids=np.concatenate([np.asarray(r.group_ids, dtype=np.int64) for r in parts]),
            truncated=np.concatenate([np.asarray(r.truncated, dtype=bool) for r in parts]),
            texts=[t for r in parts for t in r.texts],
            prompt_index=np.concatenate([np.asarray(r.prompt_index, np.int64) for r in parts]),
            scores=np.concatenate([np.asarray(r.scores, dtype=np.float64) for r in parts]),
            score_parts={k: np.concatenate([np.asarray(r.score_parts[k]) for r in parts])
                         for k in keys},  # fmt: skip
            padded={},
        )

    def sequences(self) -> list[np.ndarray]:
        """int64 (P_i + R_i,) prompt + response ids per sequence."""
        return [
            np.concatenate([p, r]) for p, r in zip(self.prompt_ids, self.response_ids, strict=True)
        ]
