"""Scalar-head models on a transformer body: the reward model (one score per sequence, read at
the last non-padding token) and the value model (one value per position). The text-to-ids
helpers that used to live here (:func:`closes_turn`, :func:`encode_prompt_completion`) are in
:mod:`rlhf_core.models.text` and still importable from this module.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlhf_core.models.common import (
    body_of,
    default_position_ids,
    enable_activation_checkpointing,
    is_peft,
    last_token_index,
    seeded,
)
from rlhf_core.models.head_files import load_parts, save_head_format, save_seqcls
from rlhf_core.models.loading import DEFAULT_DTYPE, pretrained_kwargs
from rlhf_core.models.text import closes_turn, encode_prompt_completion
from rlhf_core.parallel import unwrap_model

__all__ = ["RewardModel", "ValueModel", "closes_turn", "encode_prompt_completion"]


def _init_head(head: nn.Linear, hidden_size: int, seed: int | None) -> None:
    # std 1/sqrt(d+1), zero bias: the reward-head initialisation of OpenAI's
    # summarize-from-feedback reward model (Stiennon et al. 2020).
    with seeded(seed):
        nn.init.normal_(head.weight, std=1.0 / math.sqrt(hidden_size + 1))
    if head.bias is not None:
        nn.init.zeros_(head.bias)


def _hidden_size(body: nn.Module) -> int:
    cfg = getattr(body, "config", None)
    for attr in ("hidden_size", "n_embd", "d_model"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int):
            return v
    raise ValueError(
        f"cannot read the hidden size of {type(body).__name__}; pass hidden_size= explicitly"
    )


def body_hidden_states(
    body: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Last hidden states (B, T, d) of a transformer body (no LM head), positions from the
    mask by default: what every scalar head (reward, value, an ensemble's heads) reads."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if position_ids is None:
        position_ids = default_position_ids(attention_mask)
    out = body(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
    )
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


class _ScalarHeadModel(nn.Module):
    """Transformer body + linear d -> 1 head. Base of RewardModel and ValueModel."""

    kind = "scalar"

    def __init__(
        self,
        body: nn.Module,
        head: nn.Linear | None = None,
        *,
        hidden_size: int | None = None,
        seed: int | None = 0,
    ) -> None:
        super().__init__()
        self.body = body
        d = hidden_size if hidden_size is not None else _hidden_size(body)
        if head is None:
            head = nn.Linear(d, 1, bias=True)
            _init_head(head, d, seed)
            p = next(body.parameters(), None)
            if p is not None:
                head = head.to(device=p.device, dtype=p.dtype)
        elif head.out_features != 1:
            raise ValueError(f"head must map to 1 output, got out_features={head.out_features}")
        self.head = head

    @property
    def config(self) -> Any:
        return getattr(self.body, "config", None)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Last hidden states (B, T, d) of the body, positions from the mask by default."""
        return body_hidden_states(self.body, input_ids, attention_mask, position_ids)

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        """Turn on activation checkpointing in the body (HF bodies only; non-reentrant)."""
        enable_activation_checkpointing(self.body)

    def save_pretrained(
        self, save_directory: str | os.PathLike[str], *, pad_token_id: int | None = None
    ) -> None:
        """Save to a folder. A :class:`RewardModel` is written as an
        ``AutoModelForSequenceClassification`` checkpoint with ``num_labels=1`` (loadable by
        transformers and TRL as it is; ``pad_token_id``, when given, goes into its config so
        that batched inputs find their last token), a :class:`ValueModel` (or a body with no
        sequence-classification class) in rlhf_core's own format; see
        :mod:`rlhf_core.models.head_files`. Reload with ``from_pretrained``."""
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        if self.kind == "reward" and save_seqcls(self, out, pad_token_id):
            return
        save_head_format(self, out)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        *,
        dtype: str | torch.dtype | None = DEFAULT_DTYPE,
        revision: str | None = None,
        attn_implementation: str | None = None,
        trust_remote_code: bool = False,
    ) -> Any:
        """Load from a folder or Hub id (``"org/name"``, optionally ``"org/name@revision"``,
        through the Hugging Face cache) written by ``save_pretrained`` in either format, or
        any ``AutoModelForSequenceClassification`` checkpoint with ``num_labels=1`` (its base
        model becomes the body, its ``score`` layer the head; padding is then read from the
        attention mask, not from ``pad_token_id``). Weights are float32 unless ``dtype`` says
        otherwise (``"auto"``: as saved)."""
        kwargs = pretrained_kwargs(dtype, attn_implementation, trust_remote_code)
        what = "reward model" if cls.kind == "reward" else "value model"
        body, head = load_parts(path, kwargs, what=what, revision=revision)
        return cls(body, head)

    @classmethod
    def from_policy(cls, policy: nn.Module, *, seed: int | None = 0) -> Any:
        """A new model whose body is a deep copy of the policy's transformer body (no LM head)
        and whose head is freshly initialised (normal, std ``1/sqrt(d+1)``, zero bias).
        A LoRA policy's adapters are merged into the copied weights (the policy is untouched)."""
        m: Any = unwrap_model(policy)
        if is_peft(m):  # fold the adapters into a copy: the body is a plain model
            body = copy.deepcopy(m).merge_and_unload().base_model
        else:
            body = copy.deepcopy(body_of(m))
        body.requires_grad_(True)
        return cls(body, seed=seed)


class RewardModel(_ScalarHeadModel):
    """Reward model: transformer body + linear head on the last non-padding token.

    ``forward(input_ids, attention_mask)`` -> float32 (B,) scores. ``input_ids`` int64 (B, T),
    ``attention_mask`` 0/1 (B, T) with right padding (what the buffer and data produce) or
    left padding: the last real token is found from the mask, so both work; rows must hold at
    least one real token. Position ids default to ``cumsum(mask) - 1``.
    """

    kind = "reward"

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.hidden_states(input_ids, attention_mask, position_ids)  # (B, T, d)
        idx = last_token_index(attention_mask)  # (B,)
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]  # (B, d)
        return self.head(last).squeeze(-1).float()  # (B,)


class ValueModel(_ScalarHeadModel):
    """Value model: transformer body + linear head at every position.

    ``forward(input_ids, attention_mask)`` -> float32 (B, T) values; ``values[:, t]`` is read
    from the hidden state at position ``t`` (after the model has seen tokens ``0..t``), so it
    estimates the return of the state in which token ``t+1`` is generated. It aligns with
    :func:`token_logprobs` output through ``values[:, :-1]``. Padding positions carry
    arbitrary values; mask them.
    """

    kind = "value"

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden = self.hidden_states(input_ids, attention_mask, position_ids)  # (B, T, d)
        return self.head(hidden).squeeze(-1).float()  # (B, T)

    @classmethod
    def from_reward_model(cls, reward_model: _ScalarHeadModel) -> ValueModel:
        """A value model initialised as a deep copy of a reward model's body and head (the
        InstructGPT choice)."""
        body = copy.deepcopy(reward_model.body)
        head = copy.deepcopy(reward_model.head)
        body.requires_grad_(True)
        head.requires_grad_(True)
        return cls(body, head)
