"""Sampling from the live torch model: HF ``generate`` or rlhf_core's decode loop.

:class:`LocalBackend` left-pads the prompts (repeated ``num_samples`` times, prompt-major) into
batches of ``batch_size`` rows, samples each batch with the decode loop or HF ``generate``, and
trims every row after its first stop token. Which path serves a batch:

- ``"hf"``: HF ``generate`` (with ``fast`` on CUDA, a compiled static cache first);
- ``"decode_loop"``: rlhf_core's decode loop on any device (compiled on CUDA, eager on the
  CPU), HF ``generate`` when the loop cannot serve the model (with a ``RuntimeWarning``, once
  per model);
- ``"auto"``: the decode loop on CUDA when ``fast`` (today's choice), HF ``generate``
  otherwise.

Nothing is copied out of the model, so :meth:`LocalBackend.sync_weights` has nothing to do.
"""

from __future__ import annotations

import dataclasses
import warnings
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from rlhf_core.generation import decode_loop, hf
from rlhf_core.generation.base import (
    Completions,
    SamplingConfig,
    decode_rows,
    device_of,
    encode_prompts,
    eos_ids_of,
    is_fsdp2,
    seeded,
    stop_ids,
    trim_at_stop,
    unwrap_model,
)

__all__ = ["LOCAL_BACKENDS", "LocalBackend"]

#: The backends that sample from the live torch model.
LOCAL_BACKENDS = ("auto", "hf", "decode_loop")


class LocalBackend:
    """HF ``generate`` / the decode loop behind the :class:`RolloutBackend` interface.

    Args:
        model: an HF causal LM (or peft model / :class:`rlhf_core.models.ReferenceModel`;
            DDP wrappers are unwrapped).
        tokenizer: its tokenizer (pad and EOS ids; decoding).
        name: ``"auto"``, ``"hf"`` or ``"decode_loop"`` (see the module docstring).
        fast: for ``"auto"`` and ``"hf"``: on CUDA, the decode loop (``"auto"``) or HF's
            compiled static cache (``"hf"``). Ignored on CPU.
        batch_size: rows per ``generate`` call (default: all rows at once).
        synced_gpus: passed to HF ``generate`` (an FSDP2-sharded model needs True); it also
            keeps the decode loop out, which cannot step in lockstep with other ranks.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        name: str = "auto",
        *,
        fast: bool = False,
        batch_size: int | None = None,
        synced_gpus: bool | None = None,
    ) -> None:
        if name not in LOCAL_BACKENDS:
            raise ValueError(f"name must be one of {LOCAL_BACKENDS}, got {name!r}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer.pad_token_id is None; set a pad token before generating")
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.fast = bool(fast)
        self.batch_size = batch_size
        self.synced_gpus = synced_gpus

    def sync_weights(self, model: nn.Module | None = None) -> float:
        """Sample from ``model`` from now on (when given); nothing is copied: 0.0 s."""
        if model is not None:
            self.model = model
        return 0.0

    def close(self) -> None:
        """Nothing to free."""

    def generate(
        self,
        prompts: Sequence[Sequence[int]] | Sequence[str],
        sampling: SamplingConfig,
        *,
        prompt_seeds: Sequence[int] | None = None,
    ) -> Completions:
        base_prompts = encode_prompts(self.tokenizer, prompts)
        if prompt_seeds is not None:
            if len(prompt_seeds) != len(base_prompts):
                raise ValueError(
                    f"prompt_seeds has {len(prompt_seeds)} seeds for {len(base_prompts)} prompts"
                )
            # one call per prompt: its samples do not depend on the rest of the batch
            parts = [
                self._sample([p], dataclasses.replace(sampling, seed=int(s)))
                for p, s in zip(base_prompts, prompt_seeds, strict=True)
            ]
            return Completions.concatenate(parts)
        return self._sample(base_prompts, sampling)

    def _paths(self, device: torch.device) -> tuple[bool, str | None, bool]:
        """(try the decode loop, its compile backend, HF's static cache first) on ``device``.

        The compiled paths are for CUDA (or the CPU under the test hook ``_FAST_ON_CPU``);
        ``"decode_loop"`` runs the loop eagerly elsewhere."""
        if self.synced_gpus:
            return False, None, False
        fast_device = device.type == "cuda" or decode_loop._FAST_ON_CPU
        compile_backend = decode_loop._FAST_COMPILE_BACKEND if fast_device else None
        if self.name == "decode_loop":
            return True, compile_backend, fast_device
        if self.name == "auto":
            use = self.fast and fast_device
            return use, compile_backend, use
        return False, None, self.fast and fast_device

    def _sample(self, base_prompts: list[np.ndarray], sampling: SamplingConfig) -> Completions:
        model = unwrap_model(self.model)  # sampling needs no gradient sync
        tokenizer = self.tokenizer
        device = device_of(model)
        rows = [p for p in base_prompts for _ in range(sampling.num_samples)]  # prompt-major
        eos_ids = eos_ids_of(model, tokenizer)
        if sampling.stop_at_eos and not eos_ids:
            raise ValueError(
                "stop_at_eos=True but neither the tokenizer nor the model has an EOS id"
            )
        stopping = stop_ids(eos_ids, sampling)
        flagged = list(dict.fromkeys([*eos_ids, *sampling.stop_token_ids]))
        pad_id = int(tokenizer.pad_token_id)
        want_lp = sampling.return_logprobs
        gcfg = hf.generation_config(sampling, pad_id, stopping, want_lp)
        use_loop, compile_backend, hf_fast = self._paths(device)
        served: set[str] = set()
        step = self.batch_size or len(rows)
        responses: list[np.ndarray] = []
        truncated: list[bool] = []
        sampler_lp: list[np.ndarray] = []
        was_training = model.training
        model.eval()
        try:
            # an FSDP2-sharded model keeps the buffers of its gathered parameters between
            # calls: made under inference_mode they could not be reused by a training forward
            no_grad = torch.no_grad() if is_fsdp2(model) else torch.inference_mode()
            with seeded(sampling.seed, device), no_grad:
                for s in range(0, len(rows), step):
                    chunk = rows[s : s + step]
                    width = max(len(p) for p in chunk)
                    ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
                    mask = torch.zeros((len(chunk), width), dtype=torch.long)
                    for i, p in enumerate(chunk):  # left padding
                        ids[i, width - len(p) :] = torch.from_numpy(p)
                        mask[i, width - len(p) :] = 1
                    ids, mask = ids.to(device), mask.to(device)
                    new, lp = None, None
                    if use_loop and id(model) not in decode_loop._FAST_FAILED:
                        new, lp = _try_decode_loop(
                            model, ids, mask, sampling, stopping, pad_id, compile_backend
                        )
                    served.add("hf" if new is None else "decode_loop")
                    if new is None:
                        out = hf.run_generate(model, ids, mask, gcfg, hf_fast, self.synced_gpus)
                        new = out.sequences[:, width:]  # (b, n_new)
                        if want_lp:
                            lp = hf.sampled_logprobs(out.logits, new, sampling.temperature)
                    new_np = new.cpu().numpy()
                    lp_np = lp.cpu().numpy() if lp is not None else None
                    for i in range(new_np.shape[0]):
                        r = new_np[i]
                        n, trunc = trim_at_stop(r, flagged, stopping)
                        truncated.append(trunc)
                        responses.append(r[:n].astype(np.int64, copy=True))
                        if lp_np is not None:
                            sampler_lp.append(lp_np[i, :n].astype(np.float32, copy=True))
        finally:
            model.train(was_training)
        return decode_rows(
            tokenizer,
            base_prompts,
            sampling.num_samples,
            responses,
            truncated,
            sampler_lp if want_lp else None,
            served.pop() if len(served) == 1 else "hf",
        )


def _try_decode_loop(
    model: nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    sampling: SamplingConfig,
    stopping: list[int],
    pad_id: int,
    compile_backend: str | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The decode loop's (tokens, logprobs), or (None, None) after a failure (warned once;
    the model is not tried again)."""
    try:
        return decode_loop._static_decode(
            model,
            ids,
            mask,
            max_new_tokens=int(sampling.max_new_tokens),
            temperature=float(sampling.temperature),
            top_p=float(sampling.top_p),
            top_k=int(sampling.top_k),
            min_p=float(sampling.min_p),
            eos_ids=stopping,
            pad_id=pad_id,
            return_logprobs=sampling.return_logprobs,
            compile_backend=compile_backend,
        )
    except Exception as exc:  # noqa: BLE001 - any failure: HF's generate
        decode_loop._FAST_FAILED.add(id(model))  # not retried for this model
        weakref.finalize(model, decode_loop._FAST_FAILED.discard, id(model))
        warnings.warn(
            f"rlhf_core's compiled decode loop is not usable here, using HF "
            f"generate: {type(exc).__name__}: {exc}",
            RuntimeWarning,
            stacklevel=4,
        )
        return None, None
