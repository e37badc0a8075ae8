"""Loading a policy by name: the built-in model, a local ``AutoModelForCausalLM`` folder or a
Hugging Face Hub id (through the cache, :mod:`rlhf_core.models.hub`), in the dtype, attention
implementation and on the device asked for.

Weights load as float32 by default, whatever dtype the checkpoint was saved in: training keeps
float32 master weights and runs bf16 autocast on CUDA (a bf16 copy updated by AdamW at a
learning rate of 1e-6 would lose most updates to bf16's resolution). ``dtype="auto"`` keeps the
checkpoint's dtype; ``"bfloat16"`` etc. cast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from rlhf_core.models.builtin import build_builtin_policy
from rlhf_core.models.hub import is_builtin, pretrained, split_revision

__all__ = ["DEFAULT_DTYPE", "load_policy", "pretrained_kwargs", "resolve_dtype"]

#: the dtype weights are loaded in unless the caller says otherwise
DEFAULT_DTYPE = "float32"

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"bf16"``/``"bfloat16"``/``"float32"``/... or a ``torch.dtype`` -> ``torch.dtype``."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(
            f"dtype must be one of {sorted(_DTYPES)}, 'auto' or a torch.dtype, got {dtype!r}"
        )
    return _DTYPES[key]


def pretrained_kwargs(
    dtype: str | torch.dtype | None = DEFAULT_DTYPE,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """The ``from_pretrained`` keyword arguments for these options: ``dtype`` (``"auto"``: as
    saved; None: float32, the default), ``attn_implementation`` and ``trust_remote_code``
    when set."""
    kwargs: dict[str, Any] = {}
    if isinstance(dtype, str) and dtype.strip().lower() == "auto":
        kwargs["dtype"] = "auto"
    else:
        kwargs["dtype"] = resolve_dtype(dtype) or resolve_dtype(DEFAULT_DTYPE)
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    return kwargs


def _merged_adapter(folder: Path, tokenizer: Any, seed: int, kwargs: dict[str, Any]) -> Any:
    """A PEFT LoRA adapter folder as a plain model: its base model (loaded as
    :func:`load_policy` loads any model) with the adapters merged into the weights."""
    import json

    from peft import PeftModel

    meta = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    base = meta.get("base_model_name_or_path")
    if not base:
        raise ValueError(
            f"{folder} is a PEFT adapter folder that does not name its base model "
            "(base_model_name_or_path); load the base yourself and apply it with "
            "PeftModel.from_pretrained, or train with merge_lora = true to get a full model"
        )
    revision = meta.get("revision") or None
    model = load_policy(base, tokenizer=tokenizer, seed=seed, revision=revision, **kwargs)
    return PeftModel.from_pretrained(model, str(folder)).merge_and_unload()


def load_policy(
    name_or_path: str | os.PathLike[str],
    *,
    tokenizer: Any | None = None,
    dtype: str | torch.dtype | None = DEFAULT_DTYPE,
    device: str | torch.device | None = None,
    seed: int = 0,
    revision: str | None = None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
) -> Any:
    """Load a causal LM policy.

    ``"builtin"`` / ``"builtin:tiny"`` / ``"builtin:small"`` build the built-in model
    (:func:`build_builtin_policy` with ``seed``; the vocabulary comes from ``tokenizer``, the
    built-in tokenizer when None). Anything else is a local folder or a Hub id
    (``"org/name"``, optionally ``"org/name@revision"``) loaded with
    ``AutoModelForCausalLM.from_pretrained`` through the Hugging Face cache
    (:class:`~rlhf_core.models.hub.ModelNotFoundError` when it is nowhere).

    ``dtype``: float32 by default (master weights, whatever the checkpoint's dtype);
    ``"auto"`` keeps the checkpoint's; ``"bf16"``, ``torch.float16``, ... cast.
    ``revision``: a branch, tag or commit of a Hub id. ``attn_implementation``
    (``"eager"``, ``"sdpa"``, ``"flash_attention_2"``, ...) and ``trust_remote_code`` go to
    ``from_pretrained``. ``device`` moves the weights. A local PEFT adapter folder (what a
    LoRA run writes to ``RUN_DIR/adapter``) loads as its base model with the adapters merged.
    """
    from transformers import AutoModelForCausalLM

    name = str(name_or_path)
    kwargs = pretrained_kwargs(dtype, attn_implementation, trust_remote_code)
    if is_builtin(name):
        if revision is not None or trust_remote_code:
            raise ValueError(
                f"{name!r} is the built-in model: revision / trust_remote_code do not apply"
            )
        size = name.split(":", 1)[1] if ":" in name else "tiny"
        model = build_builtin_policy(tokenizer, seed=seed, size=size)
        if kwargs["dtype"] != "auto":
            model = model.to(kwargs["dtype"])
        if attn_implementation is not None:
            model.set_attn_implementation(attn_implementation)
    elif (Path(name) / "adapter_config.json").is_file() and not (
        Path(name) / "config.json"
    ).is_file():
        model = _merged_adapter(Path(name), tokenizer, seed, kwargs)
    else:
        name, rev = split_revision(name)
        if rev is not None and revision is not None and rev != revision:
            raise ValueError(f"{name_or_path!r} names revision {rev!r} but revision={revision!r}")
        model = pretrained(
            AutoModelForCausalLM.from_pretrained,
            name,
            what="model",
            revision=rev or revision,
            **kwargs,
        )
    if device is not None:
        model = model.to(device)
    return model
