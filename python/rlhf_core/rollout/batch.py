"""What one step samples: the :class:`Rollout` container, the prompt table it is drawn from,
and what a rollout is logged as (:meth:`Rollout.sample_rows`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["Rollout", "concat_rollouts", "prompt_table"]


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
            (empty until the no-grad forwards ran; ``values`` only with a value model;
            ``ref_logprobs`` only when the trainer has a reference).
        rollout_logprobs: float32 (R_i,) per sequence: the sampling engine's own logprobs of
            the response tokens, when an engine other than the trained model sampled them
            (vLLM); empty otherwise. Beside ``logprobs`` (the trainer's recomputed ones) they
            measure and correct the rollout/trainer mismatch (:mod:`rlhf_core.losses_correction`).
        backend: the backend that sampled the rows (``Completions.backend``: ``"hf"``,
            ``"decode_loop"``, ``"vllm"``), None when unknown.
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
    rollout_logprobs: list[np.ndarray] = field(default_factory=list)
    backend: str | None = None

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

    def sequences(self) -> list[np.ndarray]:
        """int64 (P_i + R_i,) prompt + response ids per sequence."""
        return [
            np.concatenate([p, r]) for p, r in zip(self.prompt_ids, self.response_ids, strict=True)
        ]

    def sample_rows(
        self, prompt_texts: Sequence[str], advantages: np.ndarray | None = None
    ) -> list[dict[str, Any]]:
        """One row per completion, as ``samples.jsonl`` holds them (without ``step``):
        ``group`` (the prompt's position in the step), ``prompt`` (from ``prompt_texts``, the
        prompt table ``prompt_index`` points into), ``completion``, ``rewards`` (each source's
        raw score), ``reward`` (the combined score), ``advantage`` (``advantages[i]``, float64
        (N,), or None), ``length`` (response tokens) and ``truncated``. Unscorable scores are
        None."""

        def num(x: Any) -> float | None:
            x = float(x)
            return x if np.isfinite(x) else None

        lengths = self.response_lengths
        rows: list[dict[str, Any]] = []
        for i in range(len(self)):
            rows.append(
                {
                    "group": int(self.group_ids[i]),
                    "prompt": prompt_texts[int(self.prompt_index[i])],
                    "completion": self.texts[i],
                    "rewards": {k: num(v[i]) for k, v in self.score_parts.items()},
                    "reward": num(self.scores[i]) if len(self.scores) else None,
                    "advantage": None if advantages is None else num(advantages[i]),
                    "length": int(lengths[i]),
                    "truncated": bool(self.truncated[i]),
                }
            )
        return rows


def concat_rollouts(parts: Sequence[Rollout]) -> Rollout:
    """The rows of ``parts`` in order as one rollout (``padded`` left empty), e.g. the chunks
    of an evaluation. Every part must have the same score sources and the same per-token
    fields computed."""
    if not parts:
        raise ValueError("concat_rollouts: no rollouts given")

    def cat(name: str) -> list[Any]:
        return [x for p in parts for x in getattr(p, name)]

    first = parts[0]
    return Rollout(
        prompt_ids=cat("prompt_ids"),
        response_ids=cat("response_ids"),
        group_ids=np.concatenate([p.group_ids for p in parts]),
        truncated=np.concatenate([np.asarray(p.truncated, dtype=bool) for p in parts]),
        texts=cat("texts"),
        prompt_index=np.concatenate([p.prompt_index for p in parts]),
        scores=np.concatenate([p.scores for p in parts]),
        score_parts={k: np.concatenate([p.score_parts[k] for p in parts])
                     for k in first.score_parts},  # fmt: skip
        padded={},
        logprobs=cat("logprobs"),
        ref_logprobs=cat("ref_logprobs"),
        values=cat("values"),
    )
