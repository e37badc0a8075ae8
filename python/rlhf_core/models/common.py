"""Small helpers every model module shares: a seeded block of torch's global RNG, the device
of a model, position ids and last-token indices from an attention mask, peft detection, the
transformer body of a causal LM, and HF's activation checkpointing switch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from rlhf_core.parallel import unwrap_model

__all__ = [
    "body_of",
    "default_position_ids",
    "device_of",
    "enable_activation_checkpointing",
    "is_activation_checkpointing",
    "is_peft",
    "last_token_index",
    "seeded",
]


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device | None = None) -> Iterator[None]:
    """Seed torch's global RNG inside the block and restore its previous state afterwards."""
    if seed is None:
        yield
        return
    devices: list[Any] = []
    if device is not None and device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


def device_of(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter; for a :class:`~rlhf_core.models.
    ReferenceModel` (no parameters of its own) that of the policy it wraps; the CPU for a
    model without parameters."""
    p = next(model.parameters(), None)
    if p is not None:
        return p.device
    inner = getattr(model, "_peft_model", None)
    if inner is not None:
        return device_of(inner)
    return torch.device("cpu")


def default_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids from a (B, T) 0/1 attention mask: ``cumsum(mask) - 1`` clamped at 0.

    For right padding this equals ``arange(T)`` on the real tokens; for left padding the first
    real token gets position 0, as in HF ``generate``. Returns int64 (B, T).
    """
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp_(min=0)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-padding token per row of a (B, T) mask (right or left padding).

    Returns int64 (B,). A row with no real token gets index T-1 (callers should not pass one).
    """
    mask = attention_mask.bool()
    t = mask.shape[-1]
    # position of the last True = T-1 - (first True in the reversed row)
    rev_first = torch.flip(mask, dims=[-1]).long().argmax(dim=-1)
    return (t - 1 - rev_first).long()


def is_peft(model: Any) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


def body_of(model: nn.Module) -> nn.Module:
    """The transformer body (no LM head) of an HF causal LM, possibly wrapped by peft / DDP."""
    m: Any = unwrap_model(model)
    if is_peft(m):
        m = m.get_base_model()
    base = getattr(m, "base_model", None)
    if base is None or base is m:
        raise TypeError(
            f"cannot find the transformer body of {type(m).__name__}: expected a transformers "
            "PreTrainedModel with a base model (e.g. LlamaForCausalLM.model)"
        )
    return base


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each layer's activations in the backward pass instead of storing them
    (non-reentrant ``torch.utils.checkpoint``) for an HF model, a peft-wrapped one or a
    :class:`RewardModel` / :class:`ValueModel`. Active in train mode only, as in HF.

    Raises ``ValueError`` for a model without HF's checkpointing switch."""
    kw = {"use_reentrant": False}
    enable = getattr(model, "activation_checkpointing_enable", None)  # newer transformers
    if callable(enable):
        enable(activation_checkpointing_kwargs=kw)
        return
    enable = getattr(model, "gradient_checkpointing_enable", None)
    if not callable(enable):
        raise ValueError(
            f"{type(model).__name__} has no activation_checkpointing_enable() or "
            "gradient_checkpointing_enable(); activation checkpointing needs an HF model"
        )
    enable(gradient_checkpointing_kwargs=kw)


def is_activation_checkpointing(model: nn.Module) -> bool:
    """True when some layer of ``model`` recomputes its activations (HF's flag)."""
    return any(bool(getattr(m, "gradient_checkpointing", False)) for m in model.modules())
