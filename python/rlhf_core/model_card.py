"""Model cards: the ``README.md`` of a saved model folder.

A card says how the model was made: the base model, the method, the datasets, the final
metrics, the resolved config and the rlhf_core version, under a YAML header in the Hugging Face
model-card style (``library_name``, ``tags``, ``base_model``, ``datasets``), so the folder
reads as a model repository. ``rlhf-core`` writes one into every model folder it saves
(``RUN_DIR/model``, ``RUN_DIR/reward_model``, LoRA adapter folders); library users call
:func:`write_model_card` after their own ``save_pretrained``.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from rlhf_core import __version__
from rlhf_core._io import atomic_write_text

__all__ = ["METHODS", "model_card", "write_model_card"]

#: One line per method name (the CLI's command names) for the card's summary.
METHODS: dict[str, str] = {
    "sft": "supervised fine-tuning on prompt-completion pairs",
    "reward": "a Bradley–Terry reward model trained on preference pairs",
    "dpo": "Direct Preference Optimization (DPO / IPO) against a frozen reference",
    "ppo": "PPO with a value model, GAE and a KL penalty to a frozen reference",
    "grpo": "GRPO: group-relative advantages, no value model",
    "rloo": "RLOO: a leave-one-out baseline with the KL in the reward",
    "reinforce-pp": "REINFORCE++: per-token returns with batch-whitened advantages",
    "best-of-n": "iterated best-of-N rejection sampling with SFT on the winners",
}


def _yaml_str(s: str) -> str:
    return json.dumps(str(s), ensure_ascii=False)  # a JSON string is a YAML scalar


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return f"{v:.6g}"


def model_card(
    *,
    base_model: str,
    method: str,
    config_toml: str = "",
    datasets: Sequence[str] = (),
    metrics: Mapping[str, Any] | None = None,
    title: str | None = None,
    library_name: str = "transformers",
    tags: Sequence[str] = (),
) -> str:
    """The text of a model card (see :func:`write_model_card` for the arguments)."""
    import torch
    import transformers

    all_tags = ["rlhf_core", method, "rlhf", *tags]
    head = ["---", f"library_name: {library_name}", f"base_model: {_yaml_str(base_model)}",
            "tags:", *(f"- {_yaml_str(t)}" for t in dict.fromkeys(all_tags))]  # fmt: skip
    if datasets:
        head += ["datasets:", *(f"- {_yaml_str(d)}" for d in dict.fromkeys(datasets))]
    head.append("---")
    what = METHODS.get(method, method)
    lines = [
        *head,
        "",
        f"# {title or method}",
        "",
        f"Trained with rlhf_core {__version__} by `{method}`: {what}.",
        "",
        "## Training",
        "",
        "| | |",
        "|---|---|",
        f"| base model | `{base_model}` |",
        f"| method | `{method}` |",
        f"| datasets | {', '.join(f'`{d}`' for d in datasets) or '-'} |",
        f"| rlhf_core | {__version__} |",
        f"| torch | {torch.__version__} |",
        f"| transformers | {transformers.__version__} |",
    ]
    shown = {k: v for k, v in (metrics or {}).items() if not str(k).startswith("time/")}
    if shown:
        lines += ["", "## Final metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| `{k}` | {_fmt(v)} |" for k, v in shown.items()]
    if config_toml.strip():
        lines += ["", "## Config", "", "The resolved config of the run:", "", "```toml",
                  config_toml.rstrip(), "```"]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_model_card(
    folder: str | os.PathLike[str],
    *,
    base_model: str,
    method: str,
    config_toml: str = "",
    datasets: Sequence[str] = (),
    metrics: Mapping[str, Any] | None = None,
    title: str | None = None,
    tags: Sequence[str] = (),
) -> pathlib.Path:
    """Write ``folder/README.md`` (replacing one ``save_pretrained`` may have written).

    Args:
        folder: the saved model folder.
        base_model: the model training started from (a folder or a built-in name).
        method: how it was trained (a key of :data:`METHODS`, e.g. ``"grpo"``).
        config_toml: the resolved config as TOML (:func:`rlhf_core.config.dumps_toml`).
        datasets: the datasets it was trained (and evaluated) on.
        metrics: the final metrics (``time/*`` timings are left out).
        title: the card's heading (default: ``method``).
        tags: more tags besides ``rlhf_core``, the method and ``rlhf``.

    ``library_name`` is ``peft`` for an adapter folder (one with ``adapter_config.json``),
    ``transformers`` otherwise. Returns the card's path.
    """
    path = pathlib.Path(folder)
    library = "peft" if (path / "adapter_config.json").is_file() else "transformers"
    text = model_card(base_model=base_model, method=method, config_toml=config_toml,
                      datasets=datasets, metrics=metrics, title=title, library_name=library,
                      tags=tags)  # fmt: skip
    return atomic_write_text(path / "README.md", text)
