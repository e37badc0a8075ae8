"""Batched sampling from a policy, returning ragged completions for the rollout buffer.

:func:`generate` samples ``num_samples`` completions of each prompt and returns
:class:`Completions`: per-sequence numpy arrays of prompt ids without padding and response ids
trimmed after the first EOS (EOS kept), a ``truncated`` flag for responses that hit
``max_new_tokens`` without EOS, and optionally the sampler's own per-token logprobs.

Backends, behind one interface (:class:`RolloutBackend`: ``generate``, ``sync_weights``,
``close``), picked by ``generation_backend``:

- ``"hf"`` (:mod:`.hf`): HF ``model.generate`` with its KV cache, prompts left-padded into one
  batch (``fast=True`` on CUDA: a compiled static cache first);
- ``"decode_loop"`` (:mod:`.decode_loop`): rlhf_core's own loop: a static KV cache, the
  one-token decode step compiled (CUDA-graph replay on CUDA), sampling without a host sync per
  token. Where it cannot run (a wrapped or sharded model, generation options it does not
  implement, a failure while compiling) it falls back to HF ``generate`` with a warning;
- ``"auto"``: today's choice: the decode loop on CUDA when ``fast``, HF ``generate`` otherwise;
- ``"vllm"`` (:mod:`.vllm`): a vLLM engine holding its own copy of the weights, refreshed by
  :meth:`RolloutBackend.sync_weights` (make one with :func:`make_backend`; it is created once
  and kept, so :func:`generate` takes it as an object, not as the string ``"vllm"``).

:data:`BACKENDS_USED` counts which path served each call. ``docs/generation.md`` says when to
choose which.

Logprobs used in losses are not taken from the sampler: trainers recompute them with
:func:`rlhf_core.models.token_logprobs` on the same model, so the PPO ratio at the first epoch
is exactly 1. ``return_logprobs=True`` additionally returns the sampler's own logprobs (the
rollout logprobs: for diagnosing and correcting sampler/trainer mismatch).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from torch import nn

from rlhf_core.generation.base import (
    BACKENDS_USED,
    Completions,
    RolloutBackend,
    SamplingConfig,
)
from rlhf_core.generation.decode_loop import (  # noqa: F401 - re-exported test/bench hooks
    _FAST_FAILED,
    EARLY_EXIT_EVERY,
    _static_decode,
)
from rlhf_core.generation.local import LOCAL_BACKENDS, LocalBackend

__all__ = [
    "BACKENDS",
    "BACKENDS_USED",
    "EARLY_EXIT_EVERY",
    "Completions",
    "LocalBackend",
    "RolloutBackend",
    "SamplingConfig",
    "generate",
    "make_backend",
    "opened_backend",
]

#: The values of ``generation_backend``.
BACKENDS = (*LOCAL_BACKENDS, "vllm")


def make_backend(
    name: str,
    model: nn.Module,
    tokenizer: Any,
    *,
    fast: bool = False,
    batch_size: int | None = None,
    synced_gpus: bool | None = None,
    vllm: Any = None,
) -> RolloutBackend:
    """The backend called ``name`` (one of :data:`BACKENDS`) for ``model``.

    ``"auto"``, ``"hf"``, ``"decode_loop"``: a :class:`LocalBackend` on the live model (``fast``,
    ``batch_size``, ``synced_gpus`` as in :func:`generate`). ``"vllm"``: a
    :class:`rlhf_core.generation.vllm.VLLMBackend` started from ``model``'s current weights with
    the engine settings ``vllm`` (a :class:`rlhf_core.generation.vllm.VLLMConfig`, default
    ``VLLMConfig()``); it needs the ``vllm`` package (``pip install 'rlhf-core[vllm]'``, or
    ``make vllm-env`` for the CPU build). Call ``close()`` when done.
    """
    if name in LOCAL_BACKENDS:
        return LocalBackend(
            model, tokenizer, name, fast=fast, batch_size=batch_size, synced_gpus=synced_gpus
        )
    if name == "vllm":
        from rlhf_core.generation.vllm import VLLMBackend, VLLMConfig

        return VLLMBackend(model, tokenizer, vllm if vllm is not None else VLLMConfig())
    raise ValueError(f"generation backend must be one of {BACKENDS}, got {name!r}")


@contextlib.contextmanager
def opened_backend(
    name: str, model: nn.Module, tokenizer: Any, *, vllm: Any = None
) -> Iterator[str | RolloutBackend]:
    """What to pass as ``generate(..., generation_backend=...)`` for one-off sampling (the
    CLI's ``label`` and ``eval``): a local backend's name as it is, or a vLLM engine started
    from ``model`` (settings ``vllm``) and closed when the block ends."""
    if name != "vllm":
        if name not in LOCAL_BACKENDS:
            raise ValueError(f"generation backend must be one of {BACKENDS}, got {name!r}")
        yield name
        return
    backend = make_backend(name, model, tokenizer, vllm=vllm)
    try:
        yield backend
    finally:
        backend.close()


def generate(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]] | Sequence[str],
    *,
    num_samples: int = 1,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
    stop_at_eos: bool = True,
    batch_size: int | None = None,
    return_logprobs: bool = False,
    fast: bool = False,
    synced_gpus: bool | None = None,
    min_p: float = 0.0,
    stop_token_ids: Sequence[int] = (),
    prompt_seeds: Sequence[int] | None = None,
    generation_backend: str | RolloutBackend = "auto",
) -> Completions:
    """Sample ``num_samples`` completions for each prompt.

    Args:
        model: an HF causal LM (or peft model / :class:`rlhf_core.models.ReferenceModel`;
            DDP wrappers are unwrapped).
        tokenizer: its tokenizer (pad and EOS ids; decoding).
        prompts: token-id lists (used as given) or strings (encoded with special tokens).
        num_samples: samples per prompt (G for group methods); rows are prompt-major.
        max_new_tokens: most tokens sampled per completion.
        temperature: 0 means greedy decoding; otherwise logits are divided by it.
        top_p: nucleus sampling mass (1.0 = off).
        top_k: keep the k most likely tokens (0 = off).
        seed: when given, sampling is reproducible: torch's global RNG is seeded inside a
            ``fork_rng`` block, so the caller's RNG state is not disturbed. Results are
            reproducible for the same seed, batch composition and device.
        stop_at_eos: stop a sequence at its first EOS. With False every response is exactly
            ``max_new_tokens`` long (fixed-length rollouts) and ``truncated`` marks the rows
            without any EOS.
        batch_size: rows per ``generate`` call (default: all rows at once).
        return_logprobs: also return the sampler's logprobs (see :class:`Completions`).
        fast: on CUDA, sample with rlhf_core's decode loop (static KV cache, compiled
            decode step, no host sync per token; see :mod:`.decode_loop`); falls back to HF
            ``generate`` with a static cache, then a dynamic one, with a ``RuntimeWarning``.
            The first call for a batch shape compiles (tens of seconds); later calls with the
            same number of rows and padded width reuse it. Ignored on CPU.
        synced_gpus: passed to HF ``generate``: True keeps every process of a
            ``torch.distributed`` job stepping the decoder until all of them are done, which an
            FSDP2-sharded model needs (each forward gathers parameters collectively); None
            leaves HF's default.
        min_p: drop tokens below ``min_p`` times the most likely token's probability (0 = off).
        stop_token_ids: more ids that end a sequence (kept, like EOS), whatever
            ``stop_at_eos`` says.
        prompt_seeds: one seed per prompt, used instead of ``seed``: each prompt's samples
            are then the same whatever else is in the batch.
        generation_backend: ``"auto"`` (the decode loop on CUDA when ``fast``, HF ``generate``
            otherwise), ``"hf"``, ``"decode_loop"``, or a :class:`RolloutBackend` made by
            :func:`make_backend` (a vLLM engine: ``model`` is then not sampled from; sync the
            engine's weights with ``backend.sync_weights(model)`` after each optimizer step).

    Returns:
        :class:`Completions` with ``len(prompts) * num_samples`` rows.
    """
    sampling = SamplingConfig(
        max_new_tokens=max_new_tokens,
        num_samples=num_samples,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        min_p=min_p,
        seed=seed,
        stop_at_eos=stop_at_eos,
        stop_token_ids=tuple(stop_token_ids),
        return_logprobs=return_logprobs,
    )
    if isinstance(generation_backend, str):
        if generation_backend == "vllm":
            raise ValueError(
                "generation_backend='vllm' needs an engine that lives across calls: make one "
                "with rlhf_core.generation.make_backend('vllm', model, tokenizer, vllm=...) and "
                "pass it as generation_backend"
            )
        if generation_backend not in LOCAL_BACKENDS:
            raise ValueError(
                f"generation_backend must be one of {BACKENDS} or a RolloutBackend, "
                f"got {generation_backend!r}"
            )
        backend: RolloutBackend = LocalBackend(
            model,
            tokenizer,
            generation_backend,
            fast=fast,
            batch_size=batch_size,
            synced_gpus=synced_gpus,
        )
    else:
        backend = generation_backend
    return backend.generate(prompts, sampling, prompt_seeds=prompt_seeds)
