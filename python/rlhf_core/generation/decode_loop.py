"""rlhf_core's own decode loop: a static KV cache, a compiled one-token decode step, sampling on
the device.

A static KV cache is sized once per batch shape (:func:`_cache_length` buckets), the one-token
decode forward is compiled with ``torch.compile`` (``mode="reduce-overhead"``: CUDA-graph replay
on CUDA), sampling runs on the device without a host sync per token, and a check for "every row
has stopped" runs only every :data:`EARLY_EXIT_EVERY` tokens. :func:`_static_decode` raises when
it cannot serve a model (a sharded model, generation options it does not implement); the caller
(:mod:`rlhf_core.generation.local`) then falls back to HF ``generate`` with a warning and
remembers the model in :data:`_FAST_FAILED`.

Test hooks (module attributes read at call time): :data:`_FAST_ON_CPU` lets ``fast=True`` use the
loop on the CPU, :data:`_FAST_COMPILE_BACKEND` picks the ``torch.compile`` backend (``None`` =
eager).
"""

from __future__ import annotations

import dataclasses
import inspect
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from rlhf_core.generation.base import BACKENDS_USED, default_position_ids, device_of, is_fsdp2

__all__ = ["EARLY_EXIT_EVERY"]

#: With ``stop_at_eos``, the fast decode loop checks whether every row has stopped once every
#: this many tokens (each check is one device-to-host sync).
EARLY_EXIT_EVERY = 16


#: Generation-config fields the decode loop implements or that do not change sampling; a model
#: whose ``generation_config`` sets any other field away from its default uses HF ``generate``.
_HANDLED_GENERATION_FIELDS = frozenset(
    {
        "bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id",
        "do_sample", "temperature", "top_k", "top_p", "max_length", "max_new_tokens",
        "suppress_tokens", "use_cache", "cache_implementation", "transformers_version",
        "_from_model_config", "return_dict_in_generate", "output_logits",
        "num_return_sequences", "compile_config", "disable_compile", "output_attentions",
        "output_hidden_states", "output_scores",
    }
)  # fmt: skip


def _unhandled_generation_options(model: nn.Module) -> list[str]:
    """Names of the model's generation-config options the decode loop does not implement."""
    gc = getattr(model, "generation_config", None)
    if gc is None:
        return []
    diff = gc.to_diff_dict() if hasattr(gc, "to_diff_dict") else {}
    return sorted(k for k in diff if k not in _HANDLED_GENERATION_FIELDS)


def _suppressed_ids(model: nn.Module) -> list[int]:
    gc = getattr(model, "generation_config", None)
    return [int(x) for x in (getattr(gc, "suppress_tokens", None) or [])]


@dataclasses.dataclass
class _DecodeCache:
    """The static KV cache kept for one model between calls (reset, not reallocated, while the
    number of rows and the cache length stay the same)."""

    key: tuple[int, int, torch.dtype, torch.device]
    cache: Any


#: Test hooks: run the decode loop on the CPU too, and with which ``torch.compile`` backend
#: (``None`` = eager).
_FAST_ON_CPU = False
_FAST_COMPILE_BACKEND: str | None = "inductor"

#: id(model) -> its cache; entries are dropped when the model is garbage-collected.
_DECODE_CACHES: dict[int, _DecodeCache] = {}
_COMPILED_STEPS: dict[str, Callable[..., Any]] = {}
#: ids of the models the decode loop failed for: they use HF ``generate`` from then on.
_FAST_FAILED: set[int] = set()


def _decode_forward(
    model: nn.Module,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    cache_position: torch.Tensor,
    attention_mask: torch.Tensor,
    cache: Any,
    cache_kwarg: str,
) -> torch.Tensor:
    """One forward through the static cache (passed as ``cache_kwarg``: ``cache`` in newer
    transformers, ``past_key_values`` before); returns the last position's logits (B, V)."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        cache_position=cache_position,
        use_cache=True,
        **{cache_kwarg: cache},
    )
    return out.logits[:, -1, :]


def _sample_with_logprobs(
    logits: torch.Tensor,
    temperature: float,
    top_k: int,
    top_p: float,
    suppress: torch.Tensor | None,
    want_logprobs: bool,
    min_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, V) logits -> (B,) next tokens and, if wanted, their (B,) float32 logprobs."""
    nxt, scaled = _sample_next(logits.float(), temperature, top_k, top_p, suppress, min_p=min_p)
    if not want_logprobs:
        return nxt, None
    return nxt, torch.log_softmax(scaled, -1).gather(-1, nxt[:, None]).squeeze(-1)


def _decode_step(compile_backend: str | None) -> Callable[..., torch.Tensor]:
    """The one-token decode forward: compiled once per process and backend (dynamo then
    specialises it per model and batch shape); ``None`` = eager. The sampling stays outside
    the compiled graph: with it inside, sampling 64 x 256 tokens took 1.25 s instead of
    0.85 s on an H200 (docs/scaling.md, section 6)."""
    if compile_backend is None:
        return _decode_forward
    fn = _COMPILED_STEPS.get(compile_backend)
    if fn is None:
        if compile_backend == "inductor":
            fn = torch.compile(_decode_forward, mode="reduce-overhead", dynamic=False)
        else:
            fn = torch.compile(_decode_forward, backend=compile_backend, dynamic=False)
        _COMPILED_STEPS[compile_backend] = fn
    return fn


def _static_cache_for(model: nn.Module, rows: int, length: int, dtype: torch.dtype) -> Any:
    """The model's static KV cache for ``rows`` x ``length``, reset; made on first use."""
    from transformers import StaticCache

    device = device_of(model)
    key = (rows, length, dtype, device)
    entry = _DECODE_CACHES.get(id(model))
    if entry is not None and entry.key == key:
        entry.cache.reset()
        return entry.cache
    _DECODE_CACHES.pop(id(model), None)  # free the old one before allocating
    cache = StaticCache(config=model.config, max_cache_len=length)  # type: ignore[arg-type]
    if entry is None:
        weakref.finalize(model, _DECODE_CACHES.pop, id(model), None)
    _DECODE_CACHES[id(model)] = _DecodeCache(key, cache)
    return cache


def _cache_length(n: int) -> int:
    """Static-cache length for ``n`` = prompt width + new tokens: the next power of two from 64
    to 2048, then the next multiple of 1024. Calls whose lengths share a bucket share one
    compiled graph (each new length compiles again); the unused tail of the cache costs a
    little attention bandwidth per token, far less than the weights."""
    if n <= 2048:
        return max(64, 1 << (n - 1).bit_length())
    return -(-n // 1024) * 1024


def _sample_next(
    logits: torch.Tensor,
    temperature: float,
    top_k: int,
    top_p: float,
    suppress: torch.Tensor | None,
    *,
    min_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, V) float32 logits -> (B,) next tokens (suppressed ids never drawn) and the (B, V)
    ``logits / temperature`` before any suppression or top-k / top-p / min-p truncation (for
    the sampler's logprobs; the raw logits when greedy). The cuts run in HF's order:
    temperature, top-k, top-p, then min-p (tokens below ``min_p`` times the most likely
    token's probability are dropped)."""
    scaled = logits if temperature == 0 else logits / temperature
    cut = scaled
    if suppress is not None:
        cut = cut.index_fill(-1, suppress, float("-inf"))
    if temperature == 0:
        return cut.argmax(-1), scaled
    if top_k > 0 and top_k < cut.shape[-1]:
        kth = torch.topk(cut, top_k, dim=-1).values[:, -1:]
        cut = cut.masked_fill(cut < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(cut, dim=-1, descending=False)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum <= 1.0 - top_p
        drop[:, -1] = False  # always keep the most likely token
        cut = cut.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    if min_p > 0.0:
        p = torch.softmax(cut, dim=-1)
        cut = cut.masked_fill(p < min_p * p.amax(-1, keepdim=True), float("-inf"))
    probs = torch.softmax(cut, dim=-1)
    # argmax(p / E) with E ~ Exp(1) i.i.d. is a draw from p (the exponential race); unlike
    # torch.multinomial it needs no host sync on CUDA. E is kept away from 0 so that a token
    # with p = 0 (cut by top-k / top-p, suppressed) can never win through 0 / 0.
    race = torch.empty_like(probs).exponential_(1.0).clamp_(min=1e-30)
    return (probs / race).argmax(-1), scaled


def _static_decode(
    model: nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    eos_ids: Sequence[int],
    pad_id: int,
    return_logprobs: bool,
    compile_backend: str | None = "inductor",
    min_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sample up to ``max_new_tokens`` tokens after the left-padded prompts ``ids`` (B, W).

    Prefill runs eagerly with only the last position's logits; each later token is one call of
    the (compiled) decode forward on a static cache whose length is ``W + max_new_tokens``
    rounded up to a bucket (:func:`_cache_length`: prompts of similar width share one compiled
    graph). The
    attention mask is fixed for the whole loop (prompt padding 0, everything after it 1: the
    causal mask hides the future), tokens stay on the device, and the only host syncs are the
    early-exit checks every :data:`EARLY_EXIT_EVERY` tokens when ``eos_ids`` is not empty.

    Returns the (B, n) int64 new tokens, n <= ``max_new_tokens`` (fewer only when every row
    stopped early; after a row's EOS it holds ``pad_id``), and with ``return_logprobs`` the
    (B, n) float32 logprobs of those tokens under ``softmax(logits / temperature)``.
    Raises if the model or its generation config needs something this loop does not do.
    """
    if is_fsdp2(model):
        raise TypeError("an FSDP2-sharded model must step in lockstep with the other ranks")
    unhandled = _unhandled_generation_options(model)
    if unhandled:
        raise ValueError(f"the model's generation_config sets {unhandled}")
    if getattr(model, "config", None) is None or not callable(getattr(model, "forward", None)):
        raise TypeError(f"{type(model).__name__} is not an HF causal LM")
    # a peft wrapper passes keyword arguments through: read the names off the base model
    get_base = getattr(model, "get_base_model", None)
    base: Any = get_base() if callable(get_base) else model
    params = inspect.signature(base.forward).parameters
    cache_kwarg = "cache" if "cache" in params else "past_key_values"
    for name in ("cache_position", cache_kwarg, "position_ids"):
        if name not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            raise TypeError(f"{type(model).__name__}.forward takes no {name!r}")

    device = ids.device
    rows, width = ids.shape
    length = _cache_length(width + max_new_tokens)
    dtype = next(model.parameters()).dtype
    cache = _static_cache_for(model, rows, length, dtype)
    full_mask = torch.ones((rows, length), dtype=mask.dtype, device=device)
    full_mask[:, :width] = mask
    prompt_pos = default_position_ids(mask)  # (B, W), as the trainer's forward uses
    next_pos = prompt_pos[:, -1:] + 1  # (B, 1): left padding, the last column is real
    cache_pos = torch.arange(length, device=device)
    suppress = _suppressed_ids(model)
    suppress_t = torch.tensor(suppress, device=device, dtype=torch.long) if suppress else None
    eos_t = torch.tensor(list(eos_ids), device=device, dtype=torch.long) if eos_ids else None

    prefill_kwargs: dict[str, Any] = {}
    if "logits_to_keep" in params:
        prefill_kwargs["logits_to_keep"] = 1
    out = model(
        input_ids=ids,
        attention_mask=full_mask,
        position_ids=prompt_pos,
        cache_position=cache_pos[:width],
        use_cache=True,
        **{cache_kwarg: cache},
        **prefill_kwargs,
    )
    sampling = (temperature, top_k, top_p, suppress_t, return_logprobs, min_p)
    nxt, lp = _sample_with_logprobs(out.logits[:, -1, :], *sampling)
    del out
    step = _decode_step(compile_backend)
    tokens = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=device)
    lps = torch.zeros((rows, max_new_tokens), dtype=torch.float32, device=device)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    done = max_new_tokens
    for t in range(max_new_tokens):
        if lp is not None:
            lps[:, t] = lp
        if eos_t is not None:
            nxt = nxt.masked_fill(finished, pad_id)
            finished = finished | torch.isin(nxt, eos_t)
        tokens[:, t] = nxt
        if t + 1 == max_new_tokens:
            break
        if eos_t is not None and (t + 1) % EARLY_EXIT_EVERY == 0 and bool(finished.all()):
            done = t + 1
            break
        args = (
            model, nxt[:, None], next_pos + t, cache_pos[width + t : width + t + 1], full_mask,
            cache, cache_kwarg,
        )  # fmt: skip
        nxt, lp = _sample_with_logprobs(step(*args), *sampling)
    BACKENDS_USED["static-eager" if compile_backend is None else "static-compiled"] += 1
    lp_out = lps[:, :done] if return_logprobs else None
    return tokens[:, :done], lp_out
