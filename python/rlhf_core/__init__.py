"""rlhf_core: RLHF training with a Rust core.

Fast CPU-side bookkeeping (advantage estimators, rollout buffers, minibatch planning) lives in
the Rust extension ``rlhf_core._core``; PyTorch runs the models. Submodules are imported
lazily so that ``import rlhf_core`` stays cheap and ``rlhf_core.ops`` works without torch.

Submodules, lowest layer first (``docs/architecture.md`` draws the layers): ``errors``;
``parallel`` (process group, collectives, DDP / FSDP2 wrapping, full state dicts); ``ops``
(kernels) and ``buffer`` (RolloutBuffer and minibatch planning); ``advantages`` (the
estimators: GAE, group-relative, REINFORCE++, each with its several-process path);
``losses``; ``models``; ``generation``; ``rewards``; ``rollout`` (sampling, scoring and the
no-grad forwards of a step); ``trainers``; and beside them ``data``, ``monitor``,
``checkpoint``, ``model_card`` (the README card of a saved model), ``evaluation`` (policy evaluation on fixed prompts), ``distributed``
(``parallel``'s names plus the global token count), ``config``, ``cli``, ``demo``, ``tasks``
(the built-in synthetic tasks) and ``testing`` (float64 references, hypothesis strategies and
trainer test helpers).
"""

from __future__ import annotations

import importlib
from typing import Any

from rlhf_core._core import __version__
from rlhf_core.errors import (
    AllocationError,
    CapacityError,
    DtypeError,
    FieldError,
    InvalidOptionError,
    OffsetsError,
    RlhfCoreError,
    ShapeError,
    StateError,
)

_SUBMODULES = {
    "advantages",
    "rollout",
    "evaluation",
    "demo",
    "tasks",
    "ops",
    "buffer",
    "models",
    "generation",
    "rewards",
    "losses",
    "trainers",
    "data",
    "distributed",
    "parallel",
    "monitor",
    "checkpoint",
    "model_card",
    "config",
    "cli",
    "testing",
}

__all__ = [
    "__version__",
    "RlhfCoreError",
    "ShapeError",
    "DtypeError",
    "OffsetsError",
    "InvalidOptionError",
    "CapacityError",
    "FieldError",
    "StateError",
    "AllocationError",
    *sorted(_SUBMODULES),
]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"rlhf_core.{name}")
    raise AttributeError(f"module 'rlhf_core' has no attribute {name!r}")
