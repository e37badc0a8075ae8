"""The frozen reference policy: a deep copy, or the adapter-disabled base of a LoRA policy."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from rlhf_core.models.common import is_peft
from rlhf_core.parallel import unwrap_model

__all__ = ["ReferenceModel", "make_reference"]


class ReferenceModel(nn.Module):
    """The frozen reference of a LoRA policy: the same module with its adapters disabled.

    Shares all weights with the policy (no copy). Calling it runs the policy's forward inside
    ``disable_adapter()``, under ``torch.no_grad``. The policy is deliberately not registered
    as a submodule, so ``reference.parameters()`` is empty and freezing or moving the reference
    never touches the policy. Built by :func:`make_reference`.
    """

    def __init__(self, peft_model: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_peft_model", peft_model)

    @property
    def config(self) -> Any:
        return self._peft.config

    @property
    def _peft(self) -> Any:
        return self.__dict__["_peft_model"]

    @contextlib.contextmanager
    def adapters_disabled(self) -> Iterator[nn.Module]:
        """Context in which the wrapped peft model computes with its adapters off."""
        with torch.no_grad(), self._peft.disable_adapter():
            yield self._peft

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with self.adapters_disabled() as m:
            return m(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """HF ``generate`` of the base model (adapters disabled)."""
        with self.adapters_disabled() as m:
            return m.generate(*args, **kwargs)  # type: ignore[operator]


def make_reference(policy: nn.Module) -> nn.Module:
    """The frozen reference policy.

    * A peft model with adapters: a :class:`ReferenceModel` sharing the base weights with the
      policy and computing with the adapters disabled (no extra memory).
    * Anything else (DDP wrappers are unwrapped first): a deep copy in eval mode with
      ``requires_grad=False`` on every parameter.
    """
    if is_peft(policy):
        return ReferenceModel(policy)
    ref = copy.deepcopy(unwrap_model(policy))
    ref.eval()
    ref.requires_grad_(False)
    return ref
