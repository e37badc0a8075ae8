"""LoRA adapters through ``peft`` (an optional dependency)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["apply_lora"]


def apply_lora(
    model: nn.Module,
    r: int = 8,
    alpha: float = 16.0,
    target_modules: Sequence[str] | str | None = None,
    dropout: float = 0.0,
) -> nn.Module:
    """Wrap a causal LM with LoRA adapters through ``peft`` (an optional dependency).

    ``target_modules`` defaults to the attention and MLP projections of Llama/Qwen-style
    models (``q_proj k_proj v_proj o_proj gate_proj up_proj down_proj``); ``"all-linear"`` is
    passed through to peft. Only the adapter weights are trainable afterwards; use
    :func:`make_reference` on the result for the adapter-disabled reference.
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
        target_modules = [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
    elif not isinstance(target_modules, str):
        target_modules = list(target_modules)
    cfg = LoraConfig(
        r=int(r),
        lora_alpha=alpha,  # type: ignore[arg-type]  # peft annotates int; floats work
        target_modules=target_modules,
        lora_dropout=float(dropout),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, cfg)  # type: ignore[arg-type]
