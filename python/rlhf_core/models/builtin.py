"""The built-in model: a character-level tokenizer shipped with the package and a small
``LlamaForCausalLM`` built from a config (nothing is downloaded), in two sizes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rlhf_core.models.common import seeded
from rlhf_core.models.hub import is_builtin, pretrained, split_revision

__all__ = [
    "BUILTIN_SIZES",
    "BUILTIN_TOKENIZER_DIR",
    "build_builtin_policy",
    "load_tokenizer",
    "tiny_config",
]

BUILTIN_TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "assets" / "tokenizer"

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


def load_tokenizer(
    path: str | os.PathLike[str] | None = None,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    what: str = "tokenizer",
) -> Any:
    """Load a fast tokenizer.

    ``path=None`` (or ``"builtin"``) gives the built-in character-level tokenizer: one token per
    printable ASCII character and newline, specials ``<pad>`` (id 0), ``<bos>`` (1), ``<eos>``
    (2), ``<unk>`` (3), role markers ``<|system|>``, ``<|user|>``, ``<|assistant|>``, and a chat
    template (``<bos><|user|>question\\n<|assistant|>answer<eos>``). Encoding with
    ``add_special_tokens=True`` (the default) prepends ``<bos>``.

    Any other value is a local folder or a Hugging Face Hub id (``"org/name"``, optionally
    ``"org/name@revision"``) loaded with ``AutoTokenizer.from_pretrained`` through the Hugging
    Face cache (:class:`~rlhf_core.models.hub.ModelNotFoundError` when it is nowhere).
    A tokenizer without a pad token gets its EOS token as pad. ``what`` is how error
    messages name it (e.g. ``"model"`` when it is a model's own tokenizer).
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if path is None or is_builtin(str(path)):
        tok = PreTrainedTokenizerFast.from_pretrained(str(BUILTIN_TOKENIZER_DIR))
    else:
        name, rev = split_revision(str(path))
        kwargs: dict[str, Any] = {"trust_remote_code": True} if trust_remote_code else {}
        tok = pretrained(
            AutoTokenizer.from_pretrained,
            name,
            what=what,
            revision=rev or revision,
            **kwargs,
        )
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
    with seeded(seed):
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    return model
