"""Scalar-head models on a transformer body: the reward model (one score per sequence, read at
the last non-padding token) and the value model (one value per position); and the one way
prompt and completion texts become token ids.
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlhf_core._io import atomic_write_text
from rlhf_core.models.common import (
    body_of,
    default_position_ids,
    enable_activation_checkpointing,
    is_peft,
    last_token_index,
    seeded,
)
from rlhf_core.models.loading import resolve_dtype
from rlhf_core.parallel import unwrap_model

__all__ = ["RewardModel", "ValueModel", "encode_prompt_completion"]

_HEAD_CONFIG = "rlhf_core_head.json"
_HEAD_WEIGHTS = "rlhf_core_head.safetensors"


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
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if position_ids is None:
            position_ids = default_position_ids(attention_mask)
        out = self.body(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        )
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        """Turn on activation checkpointing in the body (HF bodies only; non-reentrant)."""
        enable_activation_checkpointing(self.body)

    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> None:
        """Save to a folder: the body with its own ``save_pretrained`` (``config.json`` +
        ``model.safetensors``), the head as ``rlhf_core_head.safetensors`` and a small
        ``rlhf_core_head.json`` (kind, hidden size, bias). Reload with ``from_pretrained``."""
        from safetensors.torch import save_file

        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        self.body.save_pretrained(str(out))  # type: ignore[operator]
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()}
        save_file(tensors, str(out / _HEAD_WEIGHTS))
        meta = {
            "format": "rlhf_core.scalar_head",
            "version": 1,
            "kind": self.kind,
            "hidden_size": self.head.in_features,
            "bias": self.head.bias is not None,
        }
        atomic_write_text(out / _HEAD_CONFIG, json.dumps(meta, indent=2) + "\n")

    @classmethod
    def _load_parts(
        cls, path: str | os.PathLike[str], dtype: torch.dtype | None
    ) -> tuple[nn.Module, nn.Linear]:
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

        p = Path(path)
        if not p.is_dir():
            raise FileNotFoundError(f"model folder {str(path)!r} does not exist")
        kwargs: dict[str, Any] = {"dtype": dtype} if dtype is not None else {}
        meta_file = p / _HEAD_CONFIG
        if meta_file.exists():
            meta = json.loads(meta_file.read_text())
            if meta.get("format") != "rlhf_core.scalar_head":
                raise ValueError(f"{meta_file} is not an rlhf_core head config: {meta}")
            body = AutoModel.from_pretrained(str(p), **kwargs)
            head = nn.Linear(int(meta["hidden_size"]), 1, bias=bool(meta["bias"]))
            head.load_state_dict(load_file(str(p / _HEAD_WEIGHTS)))
            w = next(body.parameters())
            return body, head.to(device=w.device, dtype=w.dtype)
        config = AutoConfig.from_pretrained(str(p))
        archs = list(getattr(config, "architectures", None) or [])
        if any(a.endswith("ForSequenceClassification") for a in archs):
            num_labels = getattr(config, "num_labels", None)
            if num_labels != 1:
                raise ValueError(
                    f"{p}: a sequence-classification model must have num_labels=1 to be used "
                    f"as a scalar model, got num_labels={num_labels}"
                )
            seq = AutoModelForSequenceClassification.from_pretrained(str(p), **kwargs)
            body = seq.base_model
            found = getattr(seq, "score", None)
            if found is None:
                found = getattr(seq, "classifier", None)
            if not isinstance(found, nn.Linear):
                raise ValueError(
                    f"{p}: cannot find a linear score head on {type(seq).__name__} "
                    "(expected attribute 'score' or 'classifier' of type nn.Linear)"
                )
            return body, found
        raise ValueError(
            f"{p} holds neither an rlhf_core reward/value model ({_HEAD_CONFIG} missing) nor an "
            f"AutoModelForSequenceClassification checkpoint (architectures={archs})"
        )

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike[str], *, dtype: str | torch.dtype | None = None
    ) -> Any:
        """Load from a folder written by ``save_pretrained``, or from a local
        ``AutoModelForSequenceClassification`` checkpoint with ``num_labels=1`` (its base model
        becomes the body, its ``score`` layer the head; padding is then read from the
        attention mask, not from ``pad_token_id``)."""
        body, head = cls._load_parts(path, resolve_dtype(dtype))
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


def encode_prompt_completion(
    tokenizer: Any, prompt: str, completion: str, *, add_eos: bool = True
) -> tuple[list[int], int]:
    """Token ids of ``prompt + completion`` and the prompt length in tokens.

    The prompt is encoded with the tokenizer's special tokens (``<bos>`` for the built-in
    tokenizer), the completion without, and ``eos_token_id`` is appended when ``add_eos``
    (the default; a sampled completion that stopped ends in EOS too). Encoding the two parts
    separately keeps the boundary exact for any tokenizer. Returns (ids, prompt_len).
    """
    p_ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    c_ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    if add_eos:
        if tokenizer.eos_token_id is None:
            raise ValueError("add_eos=True but the tokenizer has no eos_token_id")
        c_ids.append(int(tokenizer.eos_token_id))
    return p_ids + c_ids, len(p_ids)
