"""Models for RLHF: policy, frozen reference, reward model, value model, and token logprobs.

Everything here is a plain ``transformers`` / ``torch.nn`` object, so the built-in demo model
and a user's own checkpoint go through the same code paths.

* :func:`load_tokenizer` - the built-in character-level tokenizer (shipped in
  ``rlhf_core/assets/tokenizer``) or any tokenizer from a local folder.
* :func:`tiny_config`, :func:`build_builtin_policy`, :func:`load_policy` - the built-in
  ``LlamaForCausalLM`` built from a config (nothing downloaded) or any local
  ``AutoModelForCausalLM`` checkpoint.
* :class:`RewardModel` / :class:`ValueModel` - a transformer body with a linear ``d -> 1`` head;
  the reward model reads the hidden state of the last non-padding token, the value model
  every position.
* :func:`make_reference` - frozen deep copy of the policy, or the adapter-disabled base when
  the policy carries LoRA adapters (:func:`apply_lora`).
* :func:`token_logprobs` - logprobs of each next token, chunked so that full-vocabulary float32
  log-softmax is never materialised for the whole batch at once.
* :func:`encode_prompt_completion` - the one way prompt and completion texts become token ids
  (used by reward scoring and by trainers that start from text).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlhf_core.distributed import is_fsdp2, unwrap_model

__all__ = [
    "BUILTIN_SIZES",
    "BUILTIN_TOKENIZER_DIR",
    "ReferenceModel",
    "RewardModel",
    "ValueModel",
    "apply_lora",
    "build_builtin_policy",
    "encode_prompt_completion",
    "default_position_ids",
    "enable_activation_checkpointing",
    "is_activation_checkpointing",
    "load_policy",
    "load_tokenizer",
    "make_reference",
    "resolve_dtype",
    "tiny_config",
    "token_logprobs",
]

BUILTIN_TOKENIZER_DIR = Path(__file__).resolve().parent / "assets" / "tokenizer"

#: Sizes of the built-in model. ``tiny`` trains in seconds on a CPU (tests); ``small`` is the
#: demo's model (minutes on a 2-core CPU).
BUILTIN_SIZES: dict[str, dict[str, int]] = {
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
    "small": {
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
}

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


# --------------------------------------------------------------------------------------------
# Tokenizer and policy
# --------------------------------------------------------------------------------------------


def load_tokenizer(path: str | os.PathLike[str] | None = None) -> Any:
    """Load a fast tokenizer.

    ``path=None`` (or ``"builtin"``) gives the built-in character-level tokenizer: one token per
    printable ASCII character and newline, specials ``<pad>`` (id 0), ``<bos>`` (1), ``<eos>``
    (2), ``<unk>`` (3), role markers ``<|system|>``, ``<|user|>``, ``<|assistant|>``, and a chat
    template (``<bos><|user|>question\\n<|assistant|>answer<eos>``). Encoding with
    ``add_special_tokens=True`` (the default) prepends ``<bos>``.

    Any other value is a local folder loaded with ``AutoTokenizer.from_pretrained`` (nothing is
    downloaded). A tokenizer without a pad token gets its EOS token as pad.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if path is None or str(path) in ("builtin", "builtin:tiny", "builtin:small"):
        tok = PreTrainedTokenizerFast.from_pretrained(str(BUILTIN_TOKENIZER_DIR))
    else:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(
                f"tokenizer path {str(path)!r} does not exist; pass a local folder holding "
                "tokenizer.json / tokenizer_config.json, or None for the built-in tokenizer"
            )
        tok = AutoTokenizer.from_pretrained(str(p))
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError(
                f"tokenizer at {str(path)!r} has neither a pad token nor an EOS token; "
                "set tokenizer.pad_token before use"
            )
        tok.pad_token = tok.eos_token
    return tok


def tiny_config(vocab_size: int, **overrides: Any) -> Any:
    """A ``LlamaConfig`` for the built-in model (the ``tiny`` size unless overridden).

    Defaults: hidden 64, 2 layers, 4 heads (2 KV heads), tied input/output embeddings, no
    dropout, ``max_position_embeddings=1024``, special-token ids of the built-in tokenizer
    (pad 0, bos 1, eos 2). Any ``LlamaConfig`` field can be overridden by keyword.
    """
    from transformers import LlamaConfig

    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    fields: dict[str, Any] = dict(BUILTIN_SIZES["tiny"])
    fields.update(
        vocab_size=int(vocab_size),
        max_position_embeddings=1024,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        attention_dropout=0.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.02,
    )
    fields.update(overrides)
    return LlamaConfig(**fields)


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device | None = None) -> Iterator[None]:
    """Seed torch's global RNG inside the block and restore its previous state afterwards."""
    if seed is None:
        yield
        return
    devices: list[Any] = []
    if device is not None and device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


def build_builtin_policy(
    tokenizer: Any | None = None, seed: int = 0, size: str = "tiny", **overrides: Any
) -> Any:
    """Build the built-in policy: a randomly initialised ``LlamaForCausalLM`` from a config.

    ``size`` is a key of :data:`BUILTIN_SIZES` (``"tiny"``: about 0.1M parameters, trains in
    seconds on a CPU; ``"small"``: about 0.8M, the demo's model). The same ``seed`` gives the
    same weights; torch's global RNG state is left as it was. ``overrides`` go to
    :func:`tiny_config`. The model is float32, in train mode, on the CPU.
    """
    from transformers import LlamaForCausalLM

    if size not in BUILTIN_SIZES:
        raise ValueError(f"size must be one of {sorted(BUILTIN_SIZES)}, got {size!r}")
    tok = tokenizer if tokenizer is not None else load_tokenizer()
    fields: dict[str, Any] = dict(BUILTIN_SIZES[size])
    fields.update(
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    fields.update(overrides)
    config = tiny_config(len(tok), **fields)
    with _seeded(seed):
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    return model


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


# --------------------------------------------------------------------------------------------
# Helpers shared by the models
# --------------------------------------------------------------------------------------------


def default_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids from a (B, T) 0/1 attention mask: ``cumsum(mask) - 1`` clamped at 0.

    For right padding this equals ``arange(T)`` on the real tokens; for left padding the first
    real token gets position 0, as in HF ``generate``. Returns int64 (B, T).
    """
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp_(min=0)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-padding token per row of a (B, T) mask (right or left padding).

    Returns int64 (B,). A row with no real token gets index T-1 (callers should not pass one).
    """
    mask = attention_mask.bool()
    t = mask.shape[-1]
    # position of the last True = T-1 - (first True in the reversed row)
    rev_first = torch.flip(mask, dims=[-1]).long().argmax(dim=-1)
    return (t - 1 - rev_first).long()


def _is_peft(model: Any) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


def _body_of(model: nn.Module) -> nn.Module:
    """The transformer body (no LM head) of an HF causal LM, possibly wrapped by peft / DDP."""
    m: Any = unwrap_model(model)
    if _is_peft(m):
        m = m.get_base_model()
    base = getattr(m, "base_model", None)
    if base is None or base is m:
        raise TypeError(
            f"cannot find the transformer body of {type(m).__name__}: expected a transformers "
            "PreTrainedModel with a base model (e.g. LlamaForCausalLM.model)"
        )
    return base


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each layer's activations in the backward pass instead of storing them
    (non-reentrant ``torch.utils.checkpoint``) for an HF model, a peft-wrapped one or a
    :class:`RewardModel` / :class:`ValueModel`. Active in train mode only, as in HF.

    Raises ``ValueError`` for a model without HF's checkpointing switch."""
    kw = {"use_reentrant": False}
    enable = getattr(model, "activation_checkpointing_enable", None)  # newer transformers
    if callable(enable):
        enable(activation_checkpointing_kwargs=kw)
        return
    enable = getattr(model, "gradient_checkpointing_enable", None)
    if not callable(enable):
        raise ValueError(
            f"{type(model).__name__} has no activation_checkpointing_enable() or "
            "gradient_checkpointing_enable(); activation checkpointing needs an HF model"
        )
    enable(gradient_checkpointing_kwargs=kw)


def is_activation_checkpointing(model: nn.Module) -> bool:
    """True when some layer of ``model`` recomputes its activations (HF's flag)."""
    return any(bool(getattr(m, "gradient_checkpointing", False)) for m in model.modules())


def _apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits if temperature == 1.0 else logits / temperature


# --------------------------------------------------------------------------------------------
# Token logprobs
# --------------------------------------------------------------------------------------------

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
    if _is_peft(m):
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
            :class:`ReferenceModel`).
        input_ids: int64 (B, T).
        attention_mask: 0/1 (B, T), right or left padding; None means all ones.
        position_ids: int64 (B, T); default ``cumsum(attention_mask) - 1`` (see
            :func:`default_position_ids`), which matches HF ``generate`` for left-padded
            prompts. Pass explicit ids for packed sequences.
        chunk_size: tokens per chunk of the float32 log-softmax; default
            ``2**27 // vocab_size`` (512 MiB of float32 logits per chunk).
        temperature: logits are divided by it before the softmax (as the sampler does).
        return_entropy: also return the entropy of each next-token distribution.

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
            return token_logprobs(
                inner,
                input_ids,
                attention_mask,
                position_ids=position_ids,
                chunk_size=chunk_size,
                temperature=temperature,
                return_entropy=return_entropy,
            )
    if position_ids is None:
        position_ids = default_position_ids(attention_mask)
    device = input_ids.device
    out_lp = torch.zeros(b, max(t - 1, 0), dtype=torch.float32, device=device)
    out_ent = torch.zeros_like(out_lp) if return_entropy else None
    if t < 2:
        return (out_lp, out_ent) if out_ent is not None else out_lp

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
        fn = _head_chunk(head, temperature, return_entropy)
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
            if return_entropy:
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
                lg.index_select(0, rows), targets[s : s + step], temperature, return_entropy
            )
            lps.append(lp)
            if ent is not None:
                ents.append(ent)

    if lps:
        out_lp = out_lp.reshape(-1).index_put((flat_idx,), torch.cat(lps)).reshape(b, t - 1)
        if out_ent is not None:
            out_ent = out_ent.reshape(-1).index_put((flat_idx,), torch.cat(ents)).reshape(b, t - 1)
    return (out_lp, out_ent) if out_ent is not None else out_lp


# --------------------------------------------------------------------------------------------
# Reference model and LoRA
# --------------------------------------------------------------------------------------------


class ReferenceModel(nn.Module):
    """The frozen reference of a LoRA policy: the same module with its adapters disabled.

    Shares all weights with the policy (no copy). Calling it runs the policy's forward inside
    ``disable_adapter()``, under ``torch.no_grad``. The policy is deliberately not registered
    as a submodule, so ``reference.parameters()`` is empty and freezing or moving the reference
    never touches the policy. Built by :func:`make_reference`.
    """

    def __init__(self, peft_model: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_peft_model", peft_model)

    @property
    def config(self) -> Any:
        return self._peft.config

    @property
    def _peft(self) -> Any:
        return self.__dict__["_peft_model"]

    @contextlib.contextmanager
    def adapters_disabled(self) -> Iterator[nn.Module]:
        """Context in which the wrapped peft model computes with its adapters off."""
        with torch.no_grad(), self._peft.disable_adapter():
            yield self._peft

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with self.adapters_disabled() as m:
            return m(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """HF ``generate`` of the base model (adapters disabled)."""
        with self.adapters_disabled() as m:
            return m.generate(*args, **kwargs)  # type: ignore[operator]


def make_reference(policy: nn.Module) -> nn.Module:
    """The frozen reference policy.

    * A peft model with adapters: a :class:`ReferenceModel` sharing the base weights with the
      policy and computing with the adapters disabled (no extra memory).
    * Anything else (DDP wrappers are unwrapped first): a deep copy in eval mode with
      ``requires_grad=False`` on every parameter.
    """
    if _is_peft(policy):
        return ReferenceModel(policy)
    ref = copy.deepcopy(unwrap_model(policy))
    ref.eval()
    ref.requires_grad_(False)
    return ref


def apply_lora(
    model: nn.Module,
    r: int = 8,
    alpha: float = 16.0,
    target_modules: Sequence[str] | str | None = None,
    dropout: float = 0.0,
) -> nn.Module:
    """Wrap a causal LM with LoRA adapters through ``peft`` (an optional dependency).

    ``target_modules`` defaults to the attention and MLP projections of Llama/Qwen-style
    models (``q_proj k_proj v_proj o_proj gate_proj up_proj down_proj``); ``"all-linear"`` is
    passed through to peft. Only the adapter weights are trainable afterwards; use
    :func:`make_reference` on the result for the adapter-disabled reference.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:  # pragma: no cover - exercised only without peft
        raise ImportError(
            "apply_lora needs the optional dependency peft: pip install 'rlhf-core[peft]'"
        ) from exc
    if r <= 0:
        raise ValueError(f"r (LoRA rank) must be positive, got {r}")
    if alpha <= 0:
        raise ValueError(f"alpha (LoRA scale) must be positive, got {alpha}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if target_modules is None:
        target_modules = [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
    elif not isinstance(target_modules, str):
        target_modules = list(target_modules)
    cfg = LoraConfig(
        r=int(r),
        lora_alpha=alpha,  # type: ignore[arg-type]  # peft annotates int; floats work
        target_modules=target_modules,
        lora_dropout=float(dropout),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, cfg)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Reward and value models
# --------------------------------------------------------------------------------------------

_HEAD_CONFIG = "rlhf_core_head.json"
_HEAD_WEIGHTS = "rlhf_core_head.safetensors"


def _init_head(head: nn.Linear, hidden_size: int, seed: int | None) -> None:
    # std 1/sqrt(d+1), zero bias: the reward-head initialisation of OpenAI's
    # summarize-from-feedback reward model (Stiennon et al. 2020).
    with _seeded(seed):
        nn.init.normal_(head.weight, std=1.0 / math.sqrt(hidden_size + 1))
    if head.bias is not None:
        nn.init.zeros_(head.bias)


def _hidden_size(body: nn.Module) -> int:
    cfg = getattr(body, "config", None)
    for attr in ("hidden_size", "n_embd", "d_model"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int):
            return v
    raise ValueError(
        f"cannot read the hidden size of {type(body).__name__}; pass hidden_size= explicitly"
    )


class _ScalarHeadModel(nn.Module):
    """Transformer body + linear d -> 1 head. Base of RewardModel and ValueModel."""

    kind = "scalar"

    def __init__(
        self,
        body: nn.Module,
        head: nn.Linear | None = None,
        *,
        hidden_size: int | None = None,
        seed: int | None = 0,
    ) -> None:
        super().__init__()
        self.body = body
        d = hidden_size if hidden_size is not None else _hidden_size(body)
        if head is None:
            head = nn.Linear(d, 1, bias=True)
            _init_head(head, d, seed)
            p = next(body.parameters(), None)
            if p is not None:
                head = head.to(device=p.device, dtype=p.dtype)
        elif head.out_features != 1:
            raise ValueError(f"head must map to 1 output, got out_features={head.out_features}")
        self.head = head

    @property
    def config(self) -> Any:
        return getattr(self.body, "config", None)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Last hidden states (B, T, d) of the body, positions from the mask by default."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if position_ids is None:
            position_ids = default_position_ids(attention_mask)
        out = self.body(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        )
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        """Turn on activation checkpointing in the body (HF bodies only; non-reentrant)."""
        enable_activation_checkpointing(self.body)

    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> None:
        """Save to a folder: the body with its own ``save_pretrained`` (``config.json`` +
        ``model.safetensors``), the head as ``rlhf_core_head.safetensors`` and a small
        ``rlhf_core_head.json`` (kind, hidden size, bias). Reload with ``from_pretrained``."""
        from safetensors.torch import save_file

        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        self.body.save_pretrained(str(out))  # type: ignore[operator]
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()}
        save_file(tensors, str(out / _HEAD_WEIGHTS))
        meta = {
            "format": "rlhf_core.scalar_head",
            "version": 1,
            "kind": self.kind,
            "hidden_size": self.head.in_features,
            "bias": self.head.bias is not None,
        }
        (out / _HEAD_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def _load_parts(
        cls, path: str | os.PathLike[str], dtype: torch.dtype | None
    ) -> tuple[nn.Module, nn.Linear]:
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

        p = Path(path)
        if not p.is_dir():
            raise FileNotFoundError(f"model folder {str(path)!r} does not exist")
        kwargs: dict[str, Any] = {"dtype": dtype} if dtype is not None else {}
        meta_file = p / _HEAD_CONFIG
        if meta_file.exists():
            meta = json.loads(meta_file.read_text())
            if meta.get("format") != "rlhf_core.scalar_head":
                raise ValueError(f"{meta_file} is not an rlhf_core head config: {meta}")
            body = AutoModel.from_pretrained(str(p), **kwargs)
            head = nn.Linear(int(meta["hidden_size"]), 1, bias=bool(meta["bias"]))
            head.load_state_dict(load_file(str(p / _HEAD_WEIGHTS)))
            w = next(body.parameters())
            return body, head.to(device=w.device, dtype=w.dtype)
        config = AutoConfig.from_pretrained(str(p))
        archs = list(getattr(config, "architectures", None) or [])
        if any(a.endswith("ForSequenceClassification") for a in archs):
            num_labels = getattr(config, "num_labels", None)
            if num_labels != 1:
                raise ValueError(
                    f"{p}: a sequence-classification model must have num_labels=1 to be used "
                    f"as a scalar model, got num_labels={num_labels}"
                )
            seq = AutoModelForSequenceClassification.from_pretrained(str(p), **kwargs)
            body = seq.base_model
            found = getattr(seq, "score", None)
            if found is None:
                found = getattr(seq, "classifier", None)
            if not isinstance(found, nn.Linear):
                raise ValueError(
                    f"{p}: cannot find a linear score head on {type(seq).__name__} "
                    "(expected attribute 'score' or 'classifier' of type nn.Linear)"
                )
            return body, found
        raise ValueError(
            f"{p} holds neither an rlhf_core reward/value model ({_HEAD_CONFIG} missing) nor an "
            f"AutoModelForSequenceClassification checkpoint (architectures={archs})"
        )

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike[str], *, dtype: str | torch.dtype | None = None
    ) -> Any:
        """Load from a folder written by ``save_pretrained``, or from a local
        ``AutoModelForSequenceClassification`` checkpoint with ``num_labels=1`` (its base model
        becomes the body, its ``score`` layer the head; padding is then read from the
        attention mask, not from ``pad_token_id``)."""
        body, head = cls._load_parts(path, resolve_dtype(dtype))
        return cls(body, head)

    @classmethod
    def from_policy(cls, policy: nn.Module, *, seed: int | None = 0) -> Any:
        """A new model whose body is a deep copy of the policy's transformer body (no LM head)
        and whose head is freshly initialised (normal, std ``1/sqrt(d+1)``, zero bias).
        A LoRA policy's adapters are merged into the copied weights (the policy is untouched)."""
        m: Any = unwrap_model(policy)
        if _is_peft(m):  # fold the adapters into a copy: the body is a plain model
            body = copy.deepcopy(m).merge_and_unload().base_model
        else:
            body = copy.deepcopy(_body_of(m))
        body.requires_grad_(True)
        return cls(body, seed=seed)


class RewardModel(_ScalarHeadModel):
    """Reward model: transformer body + linear head on the last non-padding token.

    ``forward(input_ids, attention_mask)`` -> float32 (B,) scores. ``input_ids`` int64 (B, T),
    ``attention_mask`` 0/1 (B, T) with right padding (what the buffer and data produce) or
    left padding: the last real token is found from the mask, so both work; rows must hold at
    least one real token. Position ids default to ``cumsum(mask) - 1``.
    """

    kind = "reward"

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.hidden_states(input_ids, attention_mask, position_ids)  # (B, T, d)
        idx = last_token_index(attention_mask)  # (B,)
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]  # (B, d)
        return self.head(last).squeeze(-1).float()  # (B,)


class ValueModel(_ScalarHeadModel):
    """Value model: transformer body + linear head at every position.

    ``forward(input_ids, attention_mask)`` -> float32 (B, T) values; ``values[:, t]`` is read
    from the hidden state at position ``t`` (after the model has seen tokens ``0..t``), so it
    estimates the return of the state in which token ``t+1`` is generated. It aligns with
    :func:`token_logprobs` output through ``values[:, :-1]``. Padding positions carry
    arbitrary values; mask them.
    """

    kind = "value"

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden = self.hidden_states(input_ids, attention_mask, position_ids)  # (B, T, d)
        return self.head(hidden).squeeze(-1).float()  # (B, T)

    @classmethod
    def from_reward_model(cls, reward_model: _ScalarHeadModel) -> ValueModel:
        """A value model initialised as a deep copy of a reward model's body and head (the
        InstructGPT choice)."""
        body = copy.deepcopy(reward_model.body)
        head = copy.deepcopy(reward_model.head)
        body.requires_grad_(True)
        head.requires_grad_(True)
        return cls(body, head)


# --------------------------------------------------------------------------------------------
# Text -> ids
# --------------------------------------------------------------------------------------------


def encode_prompt_completion(
    tokenizer: Any, prompt: str, completion: str, *, add_eos: bool = True
) -> tuple[list[int], int]:
    """Token ids of ``prompt + completion`` and the prompt length in tokens.

    The prompt is encoded with the tokenizer's special tokens (``<bos>`` for the built-in
    tokenizer), the completion without, and ``eos_token_id`` is appended when ``add_eos``
    (the default; a sampled completion that stopped ends in EOS too). Encoding the two parts
    separately keeps the boundary exact for any tokenizer. Returns (ids, prompt_len).
    """
    p_ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    c_ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    if add_eos:
        if tokenizer.eos_token_id is None:
            raise ValueError("add_eos=True but the tokenizer has no eos_token_id")
        c_ids.append(int(tokenizer.eos_token_id))
    return p_ids + c_ids, len(p_ids)
