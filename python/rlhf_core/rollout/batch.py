"""What one step samples: the :class:`Rollout` container, the prompt table it is drawn from
(:class:`PromptTable`), and what a rollout is logged as (:meth:`Rollout.sample_rows`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["PromptTable", "Rollout", "concat_rollouts", "prompt_rows", "prompt_table"]


@dataclass
class PromptTable:
    """The prompts a trainer samples from.

    Attributes:
        texts: what the policy continues: plain prompts as they are, conversational ones
            rendered with the tokenizer's chat template (with a ``tools`` column and
            ``chat_template_kwargs``).
        columns: the other columns, one entry per prompt (handed to reward functions).
        messages: the conversation of each conversational prompt (None for plain text).
    """

    texts: list[str]
    columns: dict[str, list[Any]]
    messages: list[list[Any] | None]

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def conversational(self) -> bool:
        return any(m is not None for m in self.messages)

    def reward_prompt(self, i: int) -> Any:
        """Prompt ``i`` as reward functions receive it: its messages when conversational,
        else its text."""
        m = self.messages[i]
        return self.texts[i] if m is None else m


def prompt_rows(
    prompts: Any,
    tokenizer: Any = None,
    *,
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> PromptTable:
    """The :class:`PromptTable` of a :class:`rlhf_core.data.PromptDataset`, a list of strings,
    or rows with a ``prompt`` key (mappings, e.g. a ``datasets.Dataset``; every other key
    becomes a column; all rows must have the same keys). A conversational prompt (a list of
    messages) is rendered with ``tokenizer``'s chat template
    (:func:`rlhf_core.data.render_prompt`, with the row's ``tools``); a value that is neither
    text nor messages raises :class:`rlhf_core.data.DataError` naming the row — it is never
    turned into text with ``str()``."""
    from rlhf_core.data import render_prompt

    if hasattr(prompts, "prompts") and hasattr(prompts, "columns"):
        n = len(prompts.prompts)
        return PromptTable(
            [str(p) for p in prompts.prompts],
            {k: list(v) for k, v in dict(prompts.columns).items()},
            list(getattr(prompts, "messages", None) or [None] * n),
        )
    texts: list[str] = []
    messages: list[list[Any] | None] = []
    columns: dict[str, list[Any]] = {}
    keys: set[str] | None = None
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            row_keys: set[str] = set()
            texts.append(p)
            messages.append(None)
        elif isinstance(p, Mapping):
            if "prompt" not in p:
                raise ValueError(f"prompts[{i}] has no 'prompt' key (keys: {sorted(p)})")
            value = p["prompt"]
            texts.append(
                render_prompt(
                    value,
                    tokenizer,
                    tools=p.get("tools"),
                    chat_template_kwargs=chat_template_kwargs,
                    source="prompts",
                    row=i + 1,
                )  # fmt: skip
            )
            messages.append(None if isinstance(value, str) else list(value))
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
    return PromptTable(texts, columns, messages)


def prompt_table(
    prompts: Any,
    tokenizer: Any = None,
    *,
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> tuple[list[str], dict[str, list[Any]]]:
    """The prompt texts and extra columns of :func:`prompt_rows`."""
    table = prompt_rows(prompts, tokenizer, chat_template_kwargs=chat_template_kwargs)
    return table.texts, table.columns


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
        reward_metrics: what reward functions logged with ``log_metric(name, value)`` during
            scoring, every value by name.
        logprobs, ref_logprobs, values: float32 (R_i,) per sequence, aligned with the response
            tokens: the rollout policy's and the reference's logprobs, the value model's values
            (empty until the no-grad forwards ran; ``values`` only with a value model;
            ``ref_logprobs`` only when the trainer has a reference).
        entropies: float32 (R_i,) per sequence, the rollout policy's next-token entropies
            (only when the collector is asked for them: ``top_entropy_quantile``).
        teacher_logprobs: float32 (R_i,) per sequence, a distillation teacher's logprobs of the
            sampled tokens (only with a teacher).
        rollout_logprobs: float32 (R_i,) per sequence: the sampling engine's own logprobs of
            the response tokens, when an engine other than the trained model sampled them
            (vLLM); empty otherwise. Beside ``logprobs`` (the trainer's recomputed ones) they
            measure and correct the rollout/trainer mismatch (:mod:`rlhf_core.losses.correction`).
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
    reward_metrics: dict[str, list[float]] = field(default_factory=dict)
    logprobs: list[np.ndarray] = field(default_factory=list)
    ref_logprobs: list[np.ndarray] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)
    entropies: list[np.ndarray] = field(default_factory=list)
    teacher_logprobs: list[np.ndarray] = field(default_factory=list)
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
            rollout_logprobs=[self.rollout_logprobs[i] for i in idx] if self.rollout_logprobs
            else [],
            backend=self.backend,
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
            rollout_logprobs=[x for r in parts for x in r.rollout_logprobs],
            backend=parts[0].backend,
        )

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
    logged: dict[str, list[float]] = {}
    for p in parts:
        for name, values in p.reward_metrics.items():
            logged.setdefault(name, []).extend(values)
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
        reward_metrics=logged,
        logprobs=cat("logprobs"),
        ref_logprobs=cat("ref_logprobs"),
        values=cat("values"),
        entropies=cat("entropies"),
        teacher_logprobs=cat("teacher_logprobs"),
        rollout_logprobs=cat("rollout_logprobs"),
        backend=first.backend,
    )
