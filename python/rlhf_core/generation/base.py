"""What every rollout backend shares: the completion type, the sampling options, the backend
protocol, and the prompt / stop-token helpers.

Nothing here imports a backend. The helpers from the rest of the package that generation uses
(``unwrap_model``, ``is_fsdp2``, the seeded-RNG block, position ids) are imported here and
only here, so a move of those helpers touches one import block.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from torch import nn

from rlhf_core.models.common import default_position_ids, device_of, seeded
from rlhf_core.parallel import is_fsdp2, unwrap_model

__all__ = [
    "BACKENDS_USED",
    "Completions",
    "RolloutBackend",
    "SamplingConfig",
    "default_position_ids",
    "device_of",
    "encode_prompts",
    "eos_ids_of",
    "is_fsdp2",
    "seeded",
    "trim_at_stop",
    "unwrap_model",
]

#: How many ``generate`` batches each sampling path served in this process: ``"static-compiled"``
#: (rlhf_core's decode loop, compiled), ``"static-eager"`` (the same loop uncompiled),
#: ``"hf-static"`` and ``"hf-dynamic"`` (HF ``generate``), ``"vllm"`` (one engine call).
BACKENDS_USED: collections.Counter[str] = collections.Counter()


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
        truncated: bool (N,), True where no EOS (nor stop token) was produced within
            ``max_new_tokens``.
        group_ids: int64 (N,), index of the prompt each row was sampled from.
        texts: decoded responses (special tokens skipped).
        prompts: decoded prompts (special tokens skipped), one per row.
        logprobs: with ``return_logprobs=True``, list of float32 (R_i,) arrays: the sampler's
            own logprob of each response token (the *rollout* logprobs, to store beside the
            trainer's recomputed ones). HF ``generate`` and the decode loop give it under
            ``softmax(logits / temperature)`` before top-k / top-p / min-p truncation; vLLM
            gives its ``processed_logprobs``: the same distribution when top-k, top-p and min-p
            are off, the truncated and renormalised one otherwise (what was sampled from).
            Greedy (temperature 0): the untempered logprobs. Otherwise None.
        backend: which backend sampled the rows: ``"hf"``, ``"decode_loop"`` or ``"vllm"``
            (None for completions put together by hand). A rollout whose backend is not the
            trainer's own model (``"vllm"``) is where rollout/trainer mismatch can occur.
    """

    prompt_ids: list[np.ndarray]
    response_ids: list[np.ndarray]
    truncated: np.ndarray
    group_ids: np.ndarray
    texts: list[str]
    prompts: list[str]
    logprobs: list[np.ndarray] | None = None
    backend: str | None = None

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

    @classmethod
    def concatenate(cls, parts: Sequence[Completions]) -> Completions:
        """The rows of ``parts`` one after the other; group ids are renumbered so that part
        ``k``'s prompts follow those of part ``k - 1``. Logprobs are kept only when every part
        has them; the backend only when every part names the same one."""
        if not parts:
            raise ValueError("concatenate needs at least one Completions")
        group_ids, offset = [], 0
        for c in parts:
            group_ids.append(c.group_ids + offset)
            offset += int(c.group_ids.max()) + 1 if len(c) else 0
        with_lp = all(c.logprobs is not None for c in parts)
        backends = {c.backend for c in parts}
        return cls(
            prompt_ids=[p for c in parts for p in c.prompt_ids],
            response_ids=[r for c in parts for r in c.response_ids],
            truncated=np.concatenate([c.truncated for c in parts]).astype(bool),
            group_ids=np.concatenate(group_ids).astype(np.int64),
            texts=[t for c in parts for t in c.texts],
            prompts=[t for c in parts for t in c.prompts],
            logprobs=[x for c in parts for x in c.logprobs or []] if with_lp else None,
            backend=backends.pop() if len(backends) == 1 else None,
        )


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to sample: one value per option, mapped one to one onto each backend.

    Attributes:
        max_new_tokens: most tokens sampled per completion (vLLM ``max_tokens``).
        num_samples: samples per prompt (G for group methods; vLLM ``n``); rows are
            prompt-major.
        temperature: 0 means greedy decoding; otherwise logits are divided by it.
        top_p: nucleus sampling mass (1.0 = off).
        top_k: keep the k most likely tokens (0 = off; vLLM's "off" is -1).
        min_p: drop tokens whose probability is below ``min_p`` times the most likely one's
            (0.0 = off). HF applies it after top-k / top-p, vLLM before them: the two differ
            when both are on.
        seed: when given, sampling is reproducible for the same seed, prompts and backend
            (and, for HF / the decode loop, the same batch composition and device); torch's
            global RNG state is left as it was.
        stop_at_eos: stop a sequence at its first EOS (the tokenizer's and the model's
            generation-config EOS ids). With False every response is ``max_new_tokens`` long
            unless a ``stop_token_ids`` token ends it.
        stop_token_ids: more token ids that end a sequence (kept in the response, like EOS),
            whatever ``stop_at_eos`` says.
        return_logprobs: also return the sampler's logprobs (:attr:`Completions.logprobs`).
    """

    max_new_tokens: int
    num_samples: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop_at_eos: bool = True
    stop_token_ids: tuple[int, ...] = ()
    return_logprobs: bool = False

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 <= self.min_p < 1.0:
            raise ValueError(f"min_p must be in [0, 1) (0 = off), got {self.min_p}")
        stops = tuple(int(t) for t in self.stop_token_ids)
        if any(t < 0 for t in stops):
            raise ValueError(f"stop_token_ids must be token ids >= 0, got {list(stops)}")
        object.__setattr__(self, "stop_token_ids", stops)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@runtime_checkable
class RolloutBackend(Protocol):
    """A sampler of ragged completions with per-token logprobs of the sampled tokens.

    ``"hf"`` and ``"decode_loop"`` sample from the live torch model (nothing to sync);
    ``"vllm"`` holds its own copy of the weights, which :meth:`sync_weights` refreshes.
    """

    #: ``"hf"``, ``"decode_loop"``, ``"auto"`` or ``"vllm"``.
    name: str

    def generate(
        self,
        prompts: Sequence[Sequence[int]] | Sequence[str],
        sampling: SamplingConfig,
        *,
        prompt_seeds: Sequence[int] | None = None,
    ) -> Completions:
        """``sampling.num_samples`` completions of each prompt, prompt-major.

        ``prompt_seeds`` (one per prompt) seed each prompt's samples on their own: the samples
        of a prompt are then the same whatever else is in the batch (they replace
        ``sampling.seed``)."""
        ...

    def sync_weights(self, model: nn.Module | None = None) -> float:
        """Make the backend sample from ``model``'s current weights; returns the seconds it
        took (0.0 for the backends that read the live model)."""
        ...

    def close(self) -> None:
        """Free what the backend holds (an engine, its KV cache, temp folders). Idempotent."""
        ...


def encode_prompts(
    tokenizer: Any, prompts: Sequence[Sequence[int]] | Sequence[str]
) -> list[np.ndarray]:
    """Token-id lists (used as given) or strings (encoded with special tokens) -> int64
    arrays; an empty prompt is an error naming its index."""
    if len(prompts) == 0:
        raise ValueError("prompts is empty")
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


def eos_ids_of(model: nn.Module | None, tokenizer: Any, config: Any = None) -> list[int]:
    """The tokenizer's EOS id, then the extra ones of the model's generation config (or of
    ``config``, a ``GenerationConfig``-like object, when there is no model)."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    gc = getattr(model, "generation_config", None) if model is not None else config
    extra = getattr(gc, "eos_token_id", None) if gc is not None else None
    if isinstance(extra, int):
        extra = [extra]
    for e in extra or []:
        if int(e) not in ids:
            ids.append(int(e))
    return ids


def stop_ids(eos_ids: Sequence[int], sampling: SamplingConfig) -> list[int]:
    """The ids that end a sequence: the EOS ids when ``stop_at_eos``, plus the stop tokens."""
    out = list(eos_ids) if sampling.stop_at_eos else []
    out += [t for t in sampling.stop_token_ids if t not in out]
    return out


def trim_at_stop(
    tokens: np.ndarray, flag_ids: Sequence[int], stopping_ids: Sequence[int]
) -> tuple[int, bool]:
    """(length to keep, truncated) for one row of sampled ``tokens``: cut after the first
    token of ``stopping_ids`` (kept); truncated when no token of ``flag_ids`` (EOS and stop
    ids, whether or not they stop) occurs in what is kept."""
    hits = np.flatnonzero(np.isin(tokens, stopping_ids)) if stopping_ids else np.array([])
    n = int(hits[0]) + 1 if hits.size else tokens.shape[0]
    flagged = np.isin(tokens[:n], flag_ids).any() if flag_ids else False
    return n, not bool(flagged)


def decode_rows(
    tokenizer: Any,
    base_prompts: list[np.ndarray],
    num_samples: int,
    responses: list[np.ndarray],
    truncated: list[bool],
    logprobs: list[np.ndarray] | None,
    backend: str,
) -> Completions:
    """Assemble :class:`Completions` (texts decoded with ``tokenizer``) from prompt-major
    rows."""
    group_ids = np.repeat(np.arange(len(base_prompts), dtype=np.int64), num_samples)
    texts = tokenizer.batch_decode([r.tolist() for r in responses], skip_special_tokens=True)
    prompt_texts = tokenizer.batch_decode(
        [p.tolist() for p in base_prompts], skip_special_tokens=True
    )
    return Completions(
        prompt_ids=[base_prompts[g].copy() for g in group_ids],
        response_ids=responses,
        truncated=np.asarray(truncated, dtype=bool),
        group_ids=group_ids,
        texts=list(texts),
        prompts=[prompt_texts[g] for g in group_ids],
        logprobs=logprobs,
        backend=backend,
    )
