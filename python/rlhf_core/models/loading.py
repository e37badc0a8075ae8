"""Loading a policy by name: the built-in model or a local ``AutoModelForCausalLM`` folder, in
the dtype and on the device asked for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from rlhf_core.models.builtin import build_builtin_policy

__all__ = ["load_policy", "resolve_dtype"]

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
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)} or a torch.dtype, got {dtype!r}")
    return _DTYPES[key]


def load_policy(
    name_or_path: str | os.PathLike[str],
    *,
    tokenizer: Any | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> Any:
    """Load a causal LM policy.

    ``"builtin"`` / ``"builtin:tiny"`` / ``"builtin:small"`` build the built-in model
    (:func:`build_builtin_policy` with ``seed``; the vocabulary comes from ``tokenizer``, the
    built-in tokenizer when None). Anything else is a local folder loaded with
    ``AutoModelForCausalLM.from_pretrained`` (nothing is downloaded). ``dtype`` casts the
    weights (``"bf16"``, ``torch.float32``, ...); ``device`` moves them.
    """
    from transformers import AutoModelForCausalLM

    name = str(name_or_path)
    torch_dtype = resolve_dtype(dtype)
    if name == "builtin" or name.startswith("builtin:"):
        size = name.split(":", 1)[1] if ":" in name else "tiny"
        model = build_builtin_policy(tokenizer, seed=seed, size=size)
    else:
        p = Path(name)
        if not p.is_dir():
            raise FileNotFoundError(
                f"policy {name!r} is neither 'builtin[:tiny|:small]' nor an existing local "
                "folder with config.json and weights (nothing is downloaded)"
            )
        kwargs: dict[str, Any] = {}
        if torch_dtype is not None:
            kwargs["dtype"] = torch_dtype
        model = AutoModelForCausalLM.from_pretrained(str(p), **kwargs)
    if torch_dtype is not None:
        model = model.to(torch_dtype)
    if device is not None:
        model = model.to(device)
    return model
