"""Log-probabilities (and entropies) of each next token under a causal LM, chunked so that the
full-vocabulary float32 log-softmax never exists for the whole batch at once.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rlhf_core.models.common import default_position_ids, is_peft
from rlhf_core.models.reference import ReferenceModel
from rlhf_core.parallel import is_fsdp2

__all__ = ["DEFAULT_CHUNK_ELEMENTS", "token_logprobs", "token_logprobs_and_entropy"]


def _apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits if temperature == 1.0 else logits / temperature


_LOGIT_POSTPROCESS_ATTRS = ("final_logit_softcapping", "logit_scale", "logits_scaling")

#: Default number of float32 logits per chunk (2**27 elements = 512 MiB).
DEFAULT_CHUNK_ELEMENTS = 2**27


def _head_split(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(body, lm_head) when logits == lm_head(body(...).last_hidden_state) for this model.

    Returns None for models whose forward post-processes logits (softcapping, scaling), and
    for FSDP-sharded models (their root forward must run to gather the head's parameters) or
    anything that is not a plain HF causal LM; callers then run the full forward.
    """
    m: Any = model
    if isinstance(m, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return None  # DDP needs its own forward to register the gradient hooks
    if is_fsdp2(m):
        return None
    if is_peft(m):
        m = m.get_base_model()
    cfg = getattr(m, "config", None)
    if cfg is None or any(
        getattr(cfg, a, None) not in (None, 1.0) for a in _LOGIT_POSTPROCESS_ATTRS
    ):
        return None
    head = m.get_output_embeddings() if hasattr(m, "get_output_embeddings") else None
    base = getattr(m, "base_model", None)
    if head is None or base is None or base is m:
        return None
    return base, head


def _chunk_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float, want_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(N, V) logits (any dtype), (N,) targets -> float32 (N,) logprobs [and (N,) entropy]."""
    logits = _apply_temperature(logits.float(), temperature)
    logz = torch.logsumexp(logits, dim=-1)  # (N,)
    lp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logz
    ent = None
    if want_entropy:
        p = torch.softmax(logits, dim=-1)
        ent = logz - (p * logits).sum(-1)
    return lp, ent


def _head_chunk(head: nn.Module, temperature: float, want_entropy: bool) -> Any:
    def fn(h: torch.Tensor, tgt: torch.Tensor) -> tuple[torch.Tensor, ...]:
        lp, ent = _chunk_logprobs(head(h), tgt, temperature, want_entropy)
        return (lp, ent) if ent is not None else (lp,)

    return fn


def token_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    position_ids: torch.Tensor | None = None,
    chunk_size: int | None = None,
    temperature: float = 1.0,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Logprob of each next token: ``out[:, j] = log p(input_ids[:, j+1] | input_ids[:, :j+1])``.

    Args:
        model: an HF causal LM (optionally peft-, DDP- or FSDP-wrapped, or a
            :class:`~rlhf_core.models.ReferenceModel`).
        input_ids: int64 (B, T).
        attention_mask: 0/1 (B, T), right or left padding; None means all ones.
        position_ids: int64 (B, T); default ``cumsum(attention_mask) - 1`` (see
            :func:`~rlhf_core.models.default_position_ids`), which matches HF ``generate`` for
            left-padded prompts. Pass explicit ids for packed sequences.
        chunk_size: tokens per chunk of the float32 log-softmax; default
            ``2**27 // vocab_size`` (512 MiB of float32 logits per chunk).
        temperature: logits are divided by it before the softmax (as the sampler does).
        return_entropy: also return the entropy of each next-token distribution (prefer
            :func:`token_logprobs_and_entropy`, whose return type does not depend on a flag).

    Returns:
        float32 (B, T-1) logprobs, and float32 (B, T-1) entropy when ``return_entropy``.
        Positions whose target token ``input_ids[:, j+1]`` or context token ``input_ids[:, j]``
        is padding hold 0.

    For plain HF causal LMs (and peft-wrapped ones) only the body runs over the whole batch;
    the LM head, log-softmax and gather run per chunk of valid tokens, under activation
    checkpointing when gradients are on, so neither the full (B, T, V) logits nor their float32
    log-softmax ever exist at once. Wrapped (DDP, FSDP) models and models that post-process
    their logits run the full forward; then only the float32 log-softmax is chunked. Under bf16
    autocast each chunk's logits are cast to float32 first.
    """
    lp, ent = _logprobs(
        model, input_ids, attention_mask, position_ids, chunk_size, temperature, return_entropy
    )
    return (lp, ent) if ent is not None else lp


def token_logprobs_and_entropy(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    position_ids: torch.Tensor | None = None,
    chunk_size: int | None = None,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logprob and entropy of each next token, both float32 (B, T-1): what
    :func:`token_logprobs` with ``return_entropy=True`` returns, with the same arguments, the
    same chunking and the same bits. Padding positions hold 0 in both."""
    lp, ent = _logprobs(
        model, input_ids, attention_mask, position_ids, chunk_size, temperature, True
    )
    assert ent is not None
    return lp, ent


def _logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    chunk_size: int | None,
    temperature: float,
    want_entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The work of :func:`token_logprobs`: float32 (B, T-1) logprobs and, when
    ``want_entropy``, float32 (B, T-1) entropies (else None)."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
    b, t = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    elif attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}, "
            f"input_ids has {tuple(input_ids.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for logprobs, got {temperature}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 tokens or None, got {chunk_size}")
    if isinstance(model, ReferenceModel):
        with model.adapters_disabled() as inner:
            return _logprobs(
                inner,
                input_ids,
                attention_mask,
                position_ids,
                chunk_size,
                temperature,
                want_entropy,
            )
    if position_ids is None:
        position_ids = default_position_ids(attention_mask)
    device = input_ids.device
    out_lp = torch.zeros(b, max(t - 1, 0), dtype=torch.float32, device=device)
    out_ent = torch.zeros_like(out_lp) if want_entropy else None
    if t < 2:
        return out_lp, out_ent

    valid = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()  # (B, T-1)
    flat_idx = valid.reshape(-1).nonzero().squeeze(-1)  # (N,)
    targets = input_ids[:, 1:].reshape(-1).index_select(0, flat_idx)  # (N,)

    split = _head_split(model)
    grad = torch.is_grad_enabled()
    lps: list[torch.Tensor] = []
    ents: list[torch.Tensor] = []
    if split is not None:
        body, head = split
        hidden = body(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        ).last_hidden_state  # (B, T, d)
        vocab = int(getattr(head, "out_features", 0) or head.weight.shape[0])  # type: ignore[index]
        step = chunk_size or max(1, DEFAULT_CHUNK_ELEMENTS // max(vocab, 1))
        h = hidden[:, :-1].reshape(-1, hidden.shape[-1]).index_select(0, flat_idx)  # (N, d)
        fn = _head_chunk(head, temperature, want_entropy)
        # One chunk is already bounded by the chunk size: recomputing it buys nothing.
        recompute = grad and h.requires_grad and h.shape[0] > step
        for s in range(0, h.shape[0], step):
            hc, tc = h[s : s + step], targets[s : s + step]
            if recompute:
                from torch.utils.checkpoint import checkpoint

                res = checkpoint(fn, hc, tc, use_reentrant=False)
            else:
                res = fn(hc, tc)
            lps.append(res[0])
            if want_entropy:
                ents.append(res[1])
    else:
        logits = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        ).logits  # (B, T, V)
        vocab = logits.shape[-1]
        step = chunk_size or max(1, DEFAULT_CHUNK_ELEMENTS // max(vocab, 1))
        lg = logits[:, :-1].reshape(-1, vocab)
        for s in range(0, flat_idx.shape[0], step):
            rows = flat_idx[s : s + step]
            lp, ent = _chunk_logprobs(
                lg.index_select(0, rows), targets[s : s + step], temperature, want_entropy
            )
            lps.append(lp)
            if ent is not None:
                ents.append(ent)

    if lps:
        out_lp = out_lp.reshape(-1).index_put((flat_idx,), torch.cat(lps)).reshape(b, t - 1)
        if out_ent is not None:
            out_ent = out_ent.reshape(-1).index_put((flat_idx,), torch.cat(ents)).reshape(b, t - 1)
    return out_lp, out_ent
