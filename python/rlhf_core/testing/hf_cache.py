"""A Hugging Face cache built on the spot, so that Hub ids resolve with no network.

Tests (and users checking an offline setup) call :func:`build_tiny_hub` on an empty folder
``home``; with ``HF_HOME=home`` and ``HF_HUB_OFFLINE=1`` (:func:`offline_env` for a
subprocess, :func:`offline_hub` inside this process), ``from_pretrained("tiny-org/chat-a")``
and ``datasets.load_dataset("tiny-org/messages")`` then read what an earlier download would
have left:

- models in the standard ``hub/models--org--name/`` layout (``refs/main`` holding a commit
  hash, ``snapshots/<hash>/`` an ordinary ``save_pretrained`` folder): tiny Qwen2-shaped
  causal LMs with byte-level BPE tokenizers and a ChatML-style chat template (tools, tool
  calls, ``enable_thinking``). Two of them have different vocabularies.
- datasets in the ``datasets`` cache (``datasets/org___name/<config>/<version>/<hash>/`` with
  the Arrow file of each split), written by loading JSON Lines once through ``datasets`` and
  moving the result to the place a Hub load would have filled.

Nothing here downloads anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CHAT_TEMPLATE",
    "TinyHub",
    "build_tiny_hub",
    "byte_tokenizer",
    "cache_dataset",
    "cache_model",
    "offline_env",
    "offline_hub",
    "tiny_qwen2",
]

#: ChatML with tool definitions (a system block), tool calls as ``<tool_call>{json}</tool_call>``
#: and Qwen3's ``enable_thinking=False`` (an empty think block after the generation prompt)
CHAT_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\\n# Tools\\n' }}{% for t in tools %}"
    "{{ t | tojson }}{{ '\\n' }}{% endfor %}{{ '<|im_end|>\\n' }}{% endif %}"
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + (m['content'] or '') }}"
    "{% if m['tool_calls'] %}{% for c in m['tool_calls'] %}"
    "{{ '<tool_call>' + (c['function'] | tojson) + '</tool_call>' }}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}"
    "{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}{% endif %}"
)

_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
#: extra merges of the second tokenizer (so that the two vocabularies differ)
_MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("o", "n")]


def byte_tokenizer(merges: bool = False) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` (any text encodes, nothing is unknown):
    the 256 byte symbols, optionally a few merges (a different vocabulary), and the specials
    ``<|endoftext|>`` (pad), ``<|im_start|>``, ``<|im_end|>`` (EOS, the end of a turn); no BOS;
    :data:`CHAT_TEMPLATE`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    pairs = _MERGES if merges else []
    for a, b in pairs:
        vocab.setdefault(a + b, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=list(pairs)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(_SPECIALS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )


def tiny_qwen2(tokenizer: Any, *, seed: int = 0, hidden_size: int = 32, layers: int = 2) -> Any:
    """A randomly initialised ``Qwen2ForCausalLM`` (float32) for ``tokenizer``'s vocabulary:
    ``hidden_size`` wide, ``layers`` deep, 4 heads (2 KV heads), tied embeddings."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def _commit(*parts: str) -> str:
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()


def cache_model(
    home: str | os.PathLike[str],
    repo_id: str,
    *objects: Any,
    revision: str = "main",
    commit: str | None = None,
) -> Path:
    """``save_pretrained`` every one of ``objects`` (a model, a tokenizer, ...) into
    ``home/hub/models--org--name/snapshots/<commit>/`` and point ``refs/<revision>`` at that
    commit (a stable hash of the id and revision unless given). Returns the snapshot folder."""
    repo = Path(home) / "hub" / ("models--" + repo_id.replace("/", "--"))
    commit = commit or _commit(repo_id, revision)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for obj in objects:
        obj.save_pretrained(str(snapshot))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snapshot


def cache_dataset(
    home: str | os.PathLike[str],
    repo_id: str,
    splits: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    config: str = "default",
) -> Path:
    """Put ``splits`` (split name -> rows) into ``home/datasets`` where
    ``datasets.load_dataset(repo_id)`` finds them offline: the rows are loaded once as JSON
    Lines through ``datasets`` (which writes its Arrow cache), and that cache folder is moved
    to ``org___name/<config>/<version>/<hash>/`` with each ``json-<split>.arrow`` renamed
    ``<name>-<split>.arrow``. Returns the folder."""
    import datasets

    org_name = repo_id.replace("/", "___")
    short = repo_id.split("/")[-1]
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for split, rows in splits.items():
            f = Path(tmp) / f"{split}.jsonl"
            f.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
            files[split] = str(f)
        cache = Path(tmp) / "cache"
        datasets.load_dataset("json", data_files=files, cache_dir=str(cache))
        info = next((cache / "json").glob("*/*/*/dataset_info.json"))
        built = info.parent
        target = Path(home) / "datasets" / org_name / config / built.parent.name / built.name
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(built, target)
    for split in splits:
        for f in target.glob(f"json-{split}*.arrow"):
            f.rename(target / f.name.replace("json-", f"{short}-", 1))
    return target


@dataclass(frozen=True)
class TinyHub:
    """The ids :func:`build_tiny_hub` put into the cache at ``home``."""

    home: Path
    #: a causal LM saved in bfloat16 (loads as float32 by default), byte tokenizer
    policy: str = "tiny-org/chat-a"
    #: another causal LM whose tokenizer has a different vocabulary (extra merges)
    other: str = "tiny-org/chat-b"
    #: SFT conversations (``messages``; one with a tool call and a ``tools`` column)
    messages: str = "tiny-org/messages"
    #: preference pairs, conversational, explicit prompt; splits ``train`` and ``test``
    preferences: str = "tiny-org/prefs"
    #: conversational prompts with an ``answer`` column
    prompts: str = "tiny-org/prompts"


def _conversations(n: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for i in range(n):
        a, b = i % 7, (3 * i) % 5
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": "Answer briefly."},
                    {"role": "user", "content": f"What is {a}+{b}?"},
                    {"role": "assistant", "content": f"{a + b}"},
                    {"role": "user", "content": "And doubled?"},
                    {"role": "assistant", "content": f"{2 * (a + b)}"},
                ]
            }
        )
    tool = {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two integers.",
            "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}},
        },
    }
    call = {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}
    rows.append(
        {
            "messages": [
                {"role": "user", "content": "Use the tool: 2+3?"},
                {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "content": "5"},
                {"role": "assistant", "content": "5"},
            ],
            "tools": [tool],
        }
    )
    return rows


def build_tiny_hub(home: str | os.PathLike[str]) -> TinyHub:
    """Fill an empty Hugging Face cache at ``home`` with :class:`TinyHub`'s models and
    datasets (a few seconds on a CPU)."""
    import torch

    hub = TinyHub(Path(home))
    tok_a, tok_b = byte_tokenizer(), byte_tokenizer(merges=True)
    cache_model(home, hub.policy, tiny_qwen2(tok_a, seed=0).to(torch.bfloat16), tok_a)
    cache_model(home, hub.other, tiny_qwen2(tok_b, seed=1), tok_b)
    cache_dataset(home, hub.messages, {"train": _conversations(12)})
    pairs = [
        {
            "prompt": [{"role": "user", "content": f"Say something about {x}."}],
            "chosen": [{"role": "assistant", "content": f"{x} is fine."}],
            "rejected": [{"role": "assistant", "content": ""}],
        }
        for x in ("cats", "dogs", "owls", "bees", "fish", "frogs", "mice", "ants")
    ]
    cache_dataset(home, hub.preferences, {"train": pairs[:6], "test": pairs[6:]})
    prompts = [
        {"prompt": [{"role": "user", "content": f"{a}+{b}="}], "answer": str(a + b)}
        for a in range(4)
        for b in range(4)
    ]
    cache_dataset(home, hub.prompts, {"train": prompts})
    return hub


def offline_env(home: str | os.PathLike[str]) -> dict[str, str]:
    """Environment variables that make a new process read the cache at ``home`` and never
    reach for the network (merge them into ``os.environ`` for ``subprocess``)."""
    h = Path(home)
    return {
        "HF_HOME": str(h),
        "HF_HUB_CACHE": str(h / "hub"),
        "HF_DATASETS_CACHE": str(h / "datasets"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }


@contextlib.contextmanager
def offline_hub(home: str | os.PathLike[str]) -> Iterator[Path]:
    """Inside this process, for the duration of the block: the Hugging Face cache is ``home``
    and the Hub is offline. ``huggingface_hub`` and ``datasets`` read these settings from the
    environment when they are imported, so besides the variables of :func:`offline_env` the
    block sets the module constants they read at call time, and restores everything after."""
    import datasets.config as dc
    from huggingface_hub import constants as hc

    h = Path(home)
    patches: list[tuple[Any, str, Any]] = [
        (hc, "HF_HOME", str(h)),
        (hc, "HF_HUB_CACHE", str(h / "hub")),
        (hc, "HF_HUB_OFFLINE", True),
        (dc, "HF_DATASETS_CACHE", h / "datasets"),
        (dc, "HF_HUB_OFFLINE", True),
        (dc, "HF_DATASETS_OFFLINE", True),
    ]
    saved_attrs = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    env = offline_env(h)
    saved_env = {k: os.environ.get(k) for k in env}
    try:
        for obj, name, value in patches:
            setattr(obj, name, value)
        os.environ.update(env)
        yield h
    finally:
        for obj, name, value in saved_attrs:
            setattr(obj, name, value)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
