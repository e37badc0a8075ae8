"""LoRA adapters through ``peft`` (an optional dependency): adding them to a model, and saving
a trained LoRA model as a PEFT adapter folder and, optionally, as a merged full model."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from torch import nn

from rlhf_core.models.common import is_peft
from rlhf_core.parallel import unwrap_model

__all__ = ["DEFAULT_LORA_TARGETS", "apply_lora", "merged_copy", "peft_model_of"]

#: the attention and MLP projections of Llama / Qwen / Mistral-style models
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def apply_lora(
    model: nn.Module,
    r: int = 8,
    alpha: float = 16.0,
    target_modules: Sequence[str] | str | None = None,
    dropout: float = 0.0,
    *,
    use_rslora: bool = False,
    use_dora: bool = False,
    modules_to_save: Sequence[str] | None = None,
) -> nn.Module:
    """Wrap a causal LM with LoRA adapters through ``peft`` (an optional dependency).

    ``target_modules`` defaults to :data:`DEFAULT_LORA_TARGETS`; ``"all-linear"`` is passed
    through to peft. ``use_rslora`` scales the update by ``alpha / sqrt(r)`` instead of
    ``alpha / r``; ``use_dora`` adds DoRA's magnitude vectors; ``modules_to_save`` names
    modules trained in full next to the adapters (and saved with them). Only the adapter
    weights (and those modules) are trainable afterwards; use :func:`make_reference` on the
    result for the adapter-disabled reference.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:  # pragma: no cover - exercised only without peft
        raise ImportError(
            "apply_lora needs the optional dependency peft: pip install 'rlhf-core[peft]'"
        ) from exc
    if r <= 0:
        raise ValueError(f"r (LoRA rank) must be positive, got {r}")
    if alpha <= 0:
        raise ValueError(f"alpha (LoRA scale) must be positive, got {alpha}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if target_modules is None:
        target_modules = list(DEFAULT_LORA_TARGETS)
    elif not isinstance(target_modules, str):
        target_modules = list(target_modules)
    cfg = LoraConfig(
        r=int(r),
        lora_alpha=alpha,  # type: ignore[arg-type]  # peft annotates int; floats work
        target_modules=target_modules,
        lora_dropout=float(dropout),
        use_rslora=bool(use_rslora),
        use_dora=bool(use_dora),
        modules_to_save=list(modules_to_save) if modules_to_save else None,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, cfg)  # type: ignore[arg-type]


def peft_model_of(model: nn.Module) -> Any | None:
    """The peft model inside ``model`` (unwrapping DDP / FSDP wrappers), or None."""
    m = unwrap_model(model)
    return m if is_peft(m) else None


def merged_copy(peft_model: Any) -> nn.Module:
    """A plain model with the adapters folded into a copy of the base weights (the peft model
    is left as it is)."""
    return copy.deepcopy(peft_model).merge_and_unload()  # type: ignore[no-any-return]
