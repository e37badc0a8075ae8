"""HF ``generate``: the generation config built from :class:`SamplingConfig`, and one call
(a compiled static cache first when asked, the dynamic cache otherwise or after a failure)."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from rlhf_core.generation.base import BACKENDS_USED, SamplingConfig

__all__ = ["generation_config", "run_generate"]


def generation_config(
    sampling: SamplingConfig, pad_id: int, stopping_ids: Sequence[int], want_logits: bool
) -> Any:
    """The ``GenerationConfig`` of one call: ``do_sample`` unless greedy, the sampling cuts,
    ``eos_token_id`` = the ids that stop a sequence (None: fixed length)."""
    from transformers import GenerationConfig

    kwargs: dict[str, Any] = {
        "max_new_tokens": int(sampling.max_new_tokens),
        "do_sample": not sampling.greedy,
        "pad_token_id": pad_id,
        "eos_token_id": list(stopping_ids) or None,
        "num_return_sequences": 1,
        "return_dict_in_generate": True,
        "output_logits": bool(want_logits),
    }
    if not sampling.greedy:
        kwargs.update(
            temperature=float(sampling.temperature),
            top_p=float(sampling.top_p),
            top_k=int(sampling.top_k),
        )
        if sampling.min_p > 0:
            kwargs["min_p"] = float(sampling.min_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return GenerationConfig(**kwargs)


def sampled_logprobs(
    logits: Sequence[torch.Tensor], new: torch.Tensor, temperature: float
) -> torch.Tensor:
    """(b, n) float32 logprobs of the sampled tokens ``new`` (b, n) under
    ``softmax(logits / temperature)`` (the raw logits when greedy); ``logits`` is HF's
    per-step tuple of (b, V)."""
    stacked = torch.stack(list(logits), dim=1).float()  # (b, n, V)
    if temperature != 0:
        stacked = stacked / float(temperature)
    lp = torch.log_softmax(stacked, dim=-1).gather(-1, new.unsqueeze(-1))
    return lp.squeeze(-1)


def run_generate(
    model: nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    gcfg: Any,
    fast: bool,
    synced_gpus: bool | None = None,
) -> Any:
    """One ``model.generate`` call; with ``fast`` first try a compiled static cache."""
    gen = getattr(model, "generate", None)
    if gen is None:
        raise TypeError(f"{type(model).__name__} has no generate(); pass an HF causal LM")
    extra: dict[str, Any] = {} if synced_gpus is None else {"synced_gpus": bool(synced_gpus)}
    if fast:
        try:
            # HF generate compiles the decode step itself when the cache is static.
            fast_cfg = copy.deepcopy(gcfg)
            fast_cfg.cache_implementation = "static"
            out = gen(input_ids=ids, attention_mask=mask, generation_config=fast_cfg, **extra)
            BACKENDS_USED["hf-static"] += 1
            return out
        except Exception as exc:  # noqa: BLE001 - any failure falls back to the plain path
            warnings.warn(
                f"fast generation (static cache + compile) failed, using the dynamic cache: {exc}",
                RuntimeWarning,
                stacklevel=3,
            )
    out = gen(input_ids=ids, attention_mask=mask, generation_config=gcfg, **extra)
    BACKENDS_USED["hf-dynamic"] += 1
    return out
