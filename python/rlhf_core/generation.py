"""Batched sampling from a policy, returning ragged completions for the rollout buffer.

:func:`generate` left-pads all prompts (repeated ``num_samples`` times, prompt-major) into one
batch and runs HF ``model.generate`` with its KV cache. The result, :class:`Completions`, holds
per-sequence numpy arrays: prompt ids without padding and response ids trimmed after the first
EOS (EOS kept), plus a ``truncated`` flag for responses that hit ``max_new_tokens`` without EOS.

Logprobs used in losses are not taken from the sampler: trainers recompute them with
:func:`rlhf_core.models.token_logprobs` on the same model, so the PPO ratio at the first epoch
is exactly 1. ``return_logprobs=True`` additionally returns the sampler's own logprobs (for
diagnosing sampler/trainer mismatch).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["Completions", "generate"]


@dataclasses.dataclass
class Completions:
    """Sampled completions, one row per (prompt, sample), prompt-major order.

    Row ``i`` belongs to prompt ``group_ids[i]``; rows ``g*num_samples .. (g+1)*num_samples-1``
    are the samples of prompt ``g``.

    Attributes:
        prompt_ids: list of int64 (P_i,) arrays, the prompt tokens without padding.
        response_ids: list of int64 (R_i,) arrays, the sampled tokens, cut after the first EOS
            (the EOS is included) when the sequence stopped. Tokens are raw samples: an
            untrained model can emit any id, the pad id included, so build masks from the
            lengths, never from ``ids != pad_token_id``.
        truncated: bool (N,), True where no EOS was produced within ``max_new_tokens``.
        group_ids: int64 (N,), index of the prompt each row was sampled from.
        texts: decoded responses (special tokens skipped).
        prompts: decoded prompts (special tokens skipped), one per row.
        logprobs: with ``return_logprobs=True``, list of float32 (R_i,) arrays of the sampler's
            logprob of each response token under ``softmax(logits / temperature)`` (before
            top-k / top-p truncation); otherwise None.
    """

    prompt_ids: list[np.ndarray]
    response_ids: list[np.ndarray]
    truncated: np.ndarray
    group_ids: np.ndarray
    texts: list[str]
    prompts: list[str]
    logprobs: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.response_ids)

    @property
    def response_lengths(self) -> np.ndarray:
        """int64 (N,) number of response tokens per row."""
        return np.array([len(r) for r in self.response_ids], dtype=np.int64)

    @property
    def prompt_lengths(self) -> np.ndarray:
        """int64 (N,) number of prompt tokens per row."""
        return np.array([len(p) for p in self.prompt_ids], dtype=np.int64)

    def sequences(self) -> list[np.ndarray]:
        """Prompt + response ids per row: list of int64 (P_i + R_i,) arrays."""
        return [
            np.concatenate([p, r]) for p, r in zip(self.prompt_ids, self.response_ids, strict=True)
        ]


def _is_fsdp2(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - depends on the torch build
        return False
    return isinstance(model, FSDPModule)


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    if p is not None:
        return p.device
    inner = getattr(model, "_peft_model", None)
    if inner is not None:
        return _device_of(inner)
    return torch.device("cpu")


def _encode_prompts(
    tokenizer: Any, prompts: Sequence[Sequence[int]] | Sequence[str]
) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            ids = tokenizer(p, add_special_tokens=True)["input_ids"]
        else:
            ids = [int(x) for x in p]  # type: ignore[call-overload]
        if len(ids) == 0:
            raise ValueError(f"prompts[{i}] is empty; every prompt needs at least one token")
        out.append(np.asarray(ids, dtype=np.int64))
    return out


def _eos_ids(model: nn.Module, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    gc = getattr(model, "generation_config", None)
    extra = getattr(gc, "eos_token_id", None) if gc is not None else None
    if isinstance(extra, int):
        extra = [extra]
    for e in extra or []:
        if int(e) not in ids:
            ids.append(int(e))
    return ids


@contextlib.contextmanager
def _rng(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNG for the block, then restore the caller's RNG state."""
    if seed is None:
        yield
        return
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


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
        fast: on CUDA, try a static KV cache with ``torch.compile`` of the decode step; falls
            back to the plain dynamic cache if that fails. Ignored on CPU.
        synced_gpus: passed to HF ``generate``: True keeps every process of a
            ``torch.distributed`` job stepping the decoder until all of them are done, which an
            FSDP2-sharded model needs (each forward gathers parameters collectively); None
            leaves HF's default.

    Returns:
        :class:`Completions` with ``len(prompts) * num_samples`` rows.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    if len(prompts) == 0:
        raise ValueError("prompts is empty")
    if tokenizer.pad_token_id is None:
        raise ValueError("tokenizer.pad_token_id is None; set a pad token before generating")

    from transformers import GenerationConfig

    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module  # sampling needs no gradient sync
    device = _device_of(model)
    base_prompts = _encode_prompts(tokenizer, prompts)
    rows = [p for p in base_prompts for _ in range(num_samples)]  # prompt-major
    group_ids = np.repeat(np.arange(len(base_prompts), dtype=np.int64), num_samples)
    eos_ids = _eos_ids(model, tokenizer)
    if stop_at_eos and not eos_ids:
        raise ValueError("stop_at_eos=True but neither the tokenizer nor the model has an EOS id")
    pad_id = int(tokenizer.pad_token_id)

    greedy = temperature == 0
    gen_kwargs: dict[str, Any] = {
        "max_new_tokens": int(max_new_tokens),
        "do_sample": not greedy,
        "pad_token_id": pad_id,
        "eos_token_id": eos_ids if stop_at_eos else None,
        "num_return_sequences": 1,
        "return_dict_in_generate": True,
        "output_logits": bool(return_logprobs),
    }
    if not greedy:
        gen_kwargs.update(temperature=float(temperature), top_p=float(top_p), top_k=int(top_k))
    else:
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    gcfg = GenerationConfig(**gen_kwargs)

    step = batch_size or len(rows)
    responses: list[np.ndarray] = []
    truncated: list[bool] = []
    sampler_lp: list[np.ndarray] = []
    was_training = model.training
    model.eval()
    try:
        # an FSDP2-sharded model keeps the buffers of its gathered parameters between calls:
        # made under inference_mode they could not be reused by a training forward later
        no_grad = torch.no_grad() if _is_fsdp2(model) else torch.inference_mode()
        with _rng(seed, device), no_grad:
            for s in range(0, len(rows), step):
                chunk = rows[s : s + step]
                width = max(len(p) for p in chunk)
                ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for i, p in enumerate(chunk):  # left padding
                    ids[i, width - len(p) :] = torch.from_numpy(p)
                    mask[i, width - len(p) :] = 1
                ids, mask = ids.to(device), mask.to(device)
                out = _run_generate(
                    model, ids, mask, gcfg, fast and device.type == "cuda", synced_gpus
                )
                new = out.sequences[:, width:]  # (b, n_new)
                new_np = new.cpu().numpy()
                lp_np = None
                if return_logprobs:
                    logits = torch.stack(out.logits, dim=1).float()  # (b, n_new, V)
                    if not greedy:
                        logits = logits / float(temperature)
                    lp = torch.log_softmax(logits, dim=-1).gather(-1, new.unsqueeze(-1))
                    lp_np = lp.squeeze(-1).cpu().numpy()
                for i in range(new_np.shape[0]):
                    r = new_np[i]
                    hits = np.flatnonzero(np.isin(r, eos_ids)) if eos_ids else np.array([])
                    if stop_at_eos:
                        n = int(hits[0]) + 1 if hits.size else r.shape[0]
                        truncated.append(hits.size == 0)
                    else:
                        n = r.shape[0]
                        truncated.append(hits.size == 0)
                    responses.append(r[:n].astype(np.int64, copy=True))
                    if lp_np is not None:
                        sampler_lp.append(lp_np[i, :n].astype(np.float32, copy=True))
    finally:
        model.train(was_training)

    texts = tokenizer.batch_decode([r.tolist() for r in responses], skip_special_tokens=True)
    prompt_texts_base = tokenizer.batch_decode(
        [p.tolist() for p in base_prompts], skip_special_tokens=True
    )
    return Completions(
        prompt_ids=[p.copy() for p in rows],
        response_ids=responses,
        truncated=np.asarray(truncated, dtype=bool),
        group_ids=group_ids,
        texts=list(texts),
        prompts=[prompt_texts_base[g] for g in group_ids],
        logprobs=sampler_lp if return_logprobs else None,
    )


def _run_generate(
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
            return gen(input_ids=ids, attention_mask=mask, generation_config=fast_cfg, **extra)
        except Exception as exc:  # noqa: BLE001 - any failure falls back to the plain path
            warnings.warn(
                f"fast generation (static cache + compile) failed, using the dynamic cache: {exc}",
                RuntimeWarning,
                stacklevel=3,
            )
    return gen(input_ids=ids, attention_mask=mask, generation_config=gcfg, **extra)
