"""The weights an inference engine needs from a training model: full weights under their HF
checkpoint names, LoRA adapters merged in, tied tensors once, serialised as safetensors bytes.

Pure torch (no engine import), so the main test suite checks it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from rlhf_core.generation.base import unwrap_model

__all__ = ["inference_state_dict", "is_peft_model", "to_safetensors_bytes"]


def is_peft_model(model: nn.Module) -> bool:
    """Whether ``model`` is a peft model (it has ``get_base_model`` and a ``peft_config``)."""
    return callable(getattr(model, "get_base_model", None)) and hasattr(model, "peft_config")


def _is_lora_layer(module: nn.Module) -> bool:
    return (
        hasattr(module, "base_layer")
        and hasattr(module, "lora_A")
        and callable(getattr(module, "get_delta_weight", None))
    )


def _lora_weights(name: str, module: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """The merged weight (and the bias) of one peft LoRA layer, under the base layer's name:
    ``W + sum(delta of each active adapter)`` unless the adapters are already merged into W,
    or disabled."""
    base = module.base_layer
    w = base.weight.detach()
    merged = bool(getattr(module, "merged", False))
    disabled = bool(getattr(module, "disable_adapters", False))
    if not merged and not disabled:
        for adapter in module.active_adapters:
            if adapter in module.lora_A:
                w = w + module.get_delta_weight(adapter).to(w.dtype)
    yield f"{name}.weight", w
    if getattr(base, "bias", None) is not None:
        yield f"{name}.bias", base.bias.detach()


def inference_state_dict(
    model: nn.Module, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """``model``'s weights as an inference engine loads them from an HF checkpoint.

    - DDP wrappers are unwrapped; an FSDP2-sharded model is the caller's to gather first
      (pass the gathered full state dict to the engine instead);
    - a peft LoRA model gives its *base* model's names with every LoRA layer's adapters merged
      (``W + B @ A * scale``) into a new tensor; the training model is not modified;
      ``modules_to_save`` copies give their trained copy;
    - a tensor that shares storage with an earlier one (tied input/output embeddings) is left
      out: the engine ties it itself;
    - ``dtype`` casts floating-point tensors (the engine's dtype: less to copy).

    The tensors are detached, contiguous, on the model's device; they may share memory with
    the model's parameters (no copy unless merged or cast).
    """
    model = unwrap_model(model)
    base: nn.Module = model.get_base_model() if is_peft_model(model) else model  # type: ignore[operator]
    out: dict[str, torch.Tensor] = {}
    skip_prefixes: list[str] = []
    for name, module in base.named_modules():
        if _is_lora_layer(module):
            out.update(_lora_weights(name, module))
            skip_prefixes.append(f"{name}.")
        elif hasattr(module, "modules_to_save") and hasattr(module, "original_module"):
            active = getattr(module, "active_adapter", None)
            if isinstance(active, list):
                active = active[0] if active else None
            copies = module.modules_to_save
            chosen = copies[active] if active in copies else module.original_module
            for k, v in chosen.state_dict().items():
                out[f"{name}.{k}"] = v.detach()
            skip_prefixes.append(f"{name}.")
    for key, value in base.state_dict().items():
        if any(key.startswith(p) for p in skip_prefixes):
            continue
        out[key] = value.detach()
    seen: set[tuple[int, int]] = set()
    result: dict[str, torch.Tensor] = {}
    for key, t in out.items():
        ident = (t.untyped_storage().data_ptr(), int(t.storage_offset()))
        if t.numel() and ident in seen:
            continue  # a tied copy
        seen.add(ident)
        if dtype is not None and t.is_floating_point() and t.dtype != dtype:
            t = t.to(dtype)
        result[key] = t.contiguous()
    return result


def to_safetensors_bytes(state_dict: Mapping[str, torch.Tensor]) -> bytes:
    """safetensors serialisation of CPU copies of the tensors (what crosses a process
    boundary without pickling)."""
    from safetensors.torch import save

    return save({k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()})
