"""LoRA adapters through ``peft`` (an optional dependency): adding them to a causal LM or to a
reward model, and what a trained LoRA model is saved as (a PEFT adapter folder, and optionally
a merged full model)."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from rlhf_core.models.common import is_peft
from rlhf_core.parallel import unwrap_model

__all__ = [
    "DEFAULT_LORA_TARGETS",
    "apply_lora",
    "apply_reward_lora",
    "merged_copy",
    "merged_reward_model",
    "peft_model_of",
]

logger = logging.getLogger("rlhf_core.models")

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
    cfg = _lora_config(
        r, alpha, target_modules, dropout, use_rslora, use_dora, modules_to_save, "CAUSAL_LM"
    )
    from peft import get_peft_model

    return get_peft_model(model, cfg)  # type: ignore[arg-type]


def _lora_config(
    r: int,
    alpha: float,
    target_modules: Sequence[str] | str | None,
    dropout: float,
    use_rslora: bool,
    use_dora: bool,
    modules_to_save: Sequence[str] | None,
    task_type: str,
) -> Any:
    try:
        from peft import LoraConfig
    except ImportError as exc:  # pragma: no cover - exercised only without peft
        raise ImportError(
            "LoRA needs the optional dependency peft: pip install 'rlhf-core[peft]'"
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
    return LoraConfig(
        r=int(r),
        lora_alpha=alpha,  # type: ignore[arg-type]  # peft annotates int; floats work
        target_modules=target_modules,
        lora_dropout=float(dropout),
        use_rslora=bool(use_rslora),
        use_dora=bool(use_dora),
        modules_to_save=list(modules_to_save) if modules_to_save else None,
        task_type=task_type,
    )


def apply_reward_lora(
    reward_model: nn.Module,
    r: int = 8,
    alpha: float = 16.0,
    target_modules: Sequence[str] | str | None = None,
    dropout: float = 0.0,
    *,
    use_rslora: bool = False,
    use_dora: bool = False,
    modules_to_save: Sequence[str] | None = None,
    pad_token_id: int | None = None,
) -> nn.Module:
    """LoRA adapters on a :class:`~rlhf_core.models.RewardModel`'s body, its score head
    trained in full (peft's ``modules_to_save``), as TRL trains reward models with LoRA.

    The reward model is viewed as the ``AutoModelForSequenceClassification`` (``num_labels=1``)
    it is saved as, sharing its weights, and wrapped by peft with ``task_type="SEQ_CLS"``; the
    adapters go into the reward model's body in place and its head becomes peft's trainable
    copy of the score head (without a bias, as those classes have none: a non-zero bias is
    dropped, which shifts every score alike and leaves preferences as they are). Returns the
    same reward model; :func:`peft_model_of` gives the peft model, whose ``save_pretrained``
    writes an adapter folder that ``PeftModel.from_pretrained`` loads onto
    ``AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)``.
    ``pad_token_id`` goes into the view's config (the adapter folder records the base only).
    """
    from rlhf_core.models.head_files import seqcls_view

    if peft_model_of(reward_model) is not None:
        raise ValueError("the reward model already carries LoRA adapters")
    seq = seqcls_view(reward_model, pad_token_id)
    if seq is None:
        raise ValueError(
            f"LoRA on a reward model needs a sequence-classification class for its body "
            f"({type(reward_model.body).__name__}); transformers has none for this family"
        )
    bias = getattr(reward_model.head, "bias", None)
    if bias is not None and float(bias.detach().abs().max()) != 0.0:
        logger.info("reward head bias %.6g dropped for LoRA (a constant shift of every score)",
                    float(bias.detach().float().cpu().item()))  # fmt: skip
    cfg = _lora_config(
        r, alpha, target_modules, dropout, use_rslora, use_dora, modules_to_save, "SEQ_CLS"
    )
    from peft import get_peft_model

    peft = get_peft_model(seq, cfg)  # adds the score head to modules_to_save
    reward_model.head = seq.score  # peft's wrapper: the trained copy of the score head
    # kept outside the module tree, so that no parameter is registered twice
    object.__setattr__(reward_model, "peft_model", peft)
    return reward_model


def peft_model_of(model: nn.Module) -> Any | None:
    """The peft model inside ``model`` (unwrapping DDP / FSDP wrappers), or None; for a reward
    model with adapters (:func:`apply_reward_lora`) its peft sequence-classification model."""
    m = unwrap_model(model)
    if is_peft(m):
        return m
    return m.__dict__.get("peft_model")


def merged_reward_model(reward_model: nn.Module) -> nn.Module:
    """A plain :class:`~rlhf_core.models.RewardModel` with the adapters of
    :func:`apply_reward_lora` folded into a copy of the body and the trained score head as its
    head (the reward model is left as it is)."""
    peft = peft_model_of(reward_model)
    if peft is None:
        raise ValueError("the reward model carries no LoRA adapters")
    seq: Any = merged_copy(peft)
    score: nn.Linear = seq.score
    head = nn.Linear(score.in_features, 1, bias=True, device=score.weight.device,
                     dtype=score.weight.dtype)  # fmt: skip
    with torch.no_grad():
        head.weight.copy_(score.weight)
        head.bias.zero_()
    return type(unwrap_model(reward_model))(seq.base_model, head)


def merged_copy(peft_model: Any) -> nn.Module:
    """A plain model with the adapters folded into a copy of the base weights (the peft model
    is left as it is)."""
    return copy.deepcopy(peft_model).merge_and_unload()  # type: ignore[no-any-return]
