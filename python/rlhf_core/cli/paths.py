"""Paths in a command's config made absolute at the start of a run, so that the run folder's
record (``run.json``, ``config.toml``) names the files the run read, whatever folder a resume is
started from.

A field of :data:`PATH_FIELDS` whose value names an existing file or folder relative to the
working directory becomes its absolute path; so does the file of a ``path/to/file.py:function``
reward function. Anything else is kept as written: ``builtin:*`` names, Hub ids, module names
(``package.module:function`` is imported from ``sys.path`` when the run starts).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

__all__ = ["PATH_FIELDS", "absolute_paths"]

#: the fields of the command configs that name local files or folders (when they exist)
PATH_FIELDS = (
    "model",
    "tokenizer",
    "reference",
    "dataset",
    "eval_dataset",
    "reward_model",
    "value_model",
    "judge_model",
    "judge_tokenizer",
    "output",
)


def _absolute(value: str) -> str:
    if value and not os.path.isabs(value) and os.path.exists(value):
        return os.path.abspath(value)
    return value


def _absolute_spec(spec: str) -> str:
    """``file.py:function`` with the file made absolute (other specs unchanged)."""
    if ":" not in spec:
        return spec
    module, attr = spec.rsplit(":", 1)
    if not module.endswith(".py"):
        return spec
    return f"{_absolute(module)}:{attr}"


def absolute_paths(cfg: Any) -> Any:
    """``cfg`` with every existing relative path of :data:`PATH_FIELDS` and of the
    ``file.py:function`` entries of ``reward_funcs`` made absolute (a new instance, validated
    again; ``cfg`` itself when nothing changes)."""
    names = {f.name for f in dataclasses.fields(cfg)}
    changes: dict[str, Any] = {}
    for name in PATH_FIELDS:
        value = getattr(cfg, name, None) if name in names else None
        if isinstance(value, str) and _absolute(value) != value:
            changes[name] = _absolute(value)
    funcs = getattr(cfg, "reward_funcs", None) if "reward_funcs" in names else None
    if isinstance(funcs, list):
        resolved = [_absolute_spec(s) if isinstance(s, str) else s for s in funcs]
        if resolved != funcs:
            changes["reward_funcs"] = resolved
    return dataclasses.replace(cfg, **changes) if changes else cfg
