"""What the loaders return: checked, rendered rows with their source row numbers, the extra
columns (handed to reward functions) and the :class:`~rlhf_core.data.errors.LoadReport`."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rlhf_core.data.errors import LoadReport
from rlhf_core.data.messages import Message

__all__ = [
    "ConversationDataset",
    "PreferenceDataset",
    "PromptCompletionDataset",
    "PromptDataset",
]


@dataclass
class _Base:
    source: str
    rows: list[int]
    columns: dict[str, list[Any]]
    report: LoadReport
    conversational: bool

    def __len__(self) -> int:
        return len(self.rows)

    def reward_columns(
        self, indices: Sequence[int] | None = None, *, repeat: int = 1
    ) -> dict[str, list[Any]]:
        """The extra columns as keyword arguments for a reward function
        ``fn(prompts, completions, **columns)``: for rows ``indices`` (all by default), each
        value repeated ``repeat`` times in a row (prompt-major, matching ``num_samples``)."""
        idx = range(len(self)) if indices is None else indices
        return {k: [v[i] for i in idx for _ in range(repeat)] for k, v in self.columns.items()}


@dataclass
class PromptDataset(_Base):
    """Prompts for RL. ``prompts[i]`` is the text to generate from (chat template applied to
    conversational prompts); ``messages[i]`` the original conversation (None for plain text);
    ``columns`` the other columns; ``rows[i]`` the source row number."""

    prompts: list[str] = field(default_factory=list)
    messages: list[list[Message] | None] = field(default_factory=list)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"prompt": self.prompts[i], **{k: v[i] for k, v in self.columns.items()}}

    def select(self, indices: Sequence[int]) -> PromptDataset:
        """A new dataset of rows ``indices`` (in that order)."""
        return dataclasses.replace(
            self,
            rows=[self.rows[i] for i in indices],
            columns={k: [v[i] for i in indices] for k, v in self.columns.items()},
            prompts=[self.prompts[i] for i in indices],
            messages=[self.messages[i] for i in indices],
        )


@dataclass
class PromptCompletionDataset(_Base):
    """Prompt-completion pairs for supervised fine-tuning (rendered text). Language-modelling
    text (TRL's ``text`` column) loads as completions of an empty prompt."""

    prompts: list[str] = field(default_factory=list)
    completions: list[str] = field(default_factory=list)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {
            "prompt": self.prompts[i],
            "completion": self.completions[i],
            **{k: v[i] for k, v in self.columns.items()},
        }

    def examples(self) -> list[dict[str, str]]:
        """``[{"prompt", "completion"}]``, what :class:`rlhf_core.trainers.SFTTrainer` takes."""
        return [
            {"prompt": p, "completion": c}
            for p, c in zip(self.prompts, self.completions, strict=True)
        ]


@dataclass
class ConversationDataset(_Base):
    """Conversations for supervised fine-tuning (TRL's ``messages`` column). ``messages[i]``
    is the checked conversation, ``tools[i]`` its tool definitions (None without),
    ``turns[i]`` one (prompt text, completion text) pair per assistant message, rendered with
    the chat template (:func:`rlhf_core.data.conversation_turns`)."""

    messages: list[list[Message]] = field(default_factory=list)
    tools: list[Any] = field(default_factory=list)
    turns: list[list[tuple[str, str]]] = field(default_factory=list)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"messages": self.messages[i], **{k: v[i] for k, v in self.columns.items()}}

    def examples(self) -> list[dict[str, str]]:
        """One ``{"prompt", "completion"}`` per assistant turn of every conversation: trained
        by :class:`rlhf_core.trainers.SFTTrainer`, the loss covers the assistant turns only."""
        return [{"prompt": p, "completion": c} for turns in self.turns for p, c in turns]


@dataclass
class PreferenceDataset(_Base):
    """Preference pairs. ``prompts[i]`` is the rendered prompt, ``chosen[i]`` / ``rejected[i]``
    the rendered completions that follow it (so ``prompts[i] + chosen[i]`` is the full text).
    A completion may be empty (the policy stopped at once)."""

    prompts: list[str] = field(default_factory=list)
    chosen: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {
            "prompt": self.prompts[i],
            "chosen": self.chosen[i],
            "rejected": self.rejected[i],
            **{k: v[i] for k, v in self.columns.items()},
        }
