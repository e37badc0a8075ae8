"""Helpers for testing trainers: the built-in model and tokenizer, parameter snapshots and the
checks made on them, gradient capture, and synthetic preference pairs.

The trainer tests of this package use them, and so can a user's tests of a trainer built on
:mod:`rlhf_core.trainers` (each trainer deserves a smoke test asserting that every trainable
parameter changed, and an invariance test asserting that 1 × N micro-batches accumulate the
gradient of N × 1)::

    before = snapshot(trainer.policy)
    grads = capture_grads(trainer)
    trainer.train()
    assert_all_changed(before, trainer.policy)
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, cast

import numpy as np
import torch

__all__ = [
    "FAST",
    "assert_all_changed",
    "assert_finite_metrics",
    "assert_grads_close",
    "assert_unchanged",
    "capture_grads",
    "count_layer_calls",
    "count_pairs",
    "params_close",
    "params_equal",
    "policy",
    "snapshot",
    "snapshot_all",
    "strip_times",
    "tokenizer",
]

#: Config fields for quick test runs: no progress bar, no TensorBoard, on the CPU.
FAST: dict[str, Any] = dict(progress_bar=False, tensorboard=False, device="cpu")


def tokenizer() -> Any:
    """The built-in tokenizer (:func:`rlhf_core.models.load_tokenizer`)."""
    from rlhf_core.models import load_tokenizer

    return load_tokenizer()


def policy(seed: int = 0) -> Any:
    """A fresh built-in tiny policy, initialised from ``seed``."""
    from rlhf_core.models import build_builtin_policy

    return build_builtin_policy(tokenizer(), seed=seed)


def snapshot(*modules: torch.nn.Module) -> list[torch.Tensor]:
    """Copies of the trainable parameters of ``modules``."""
    return [p.detach().clone() for m in modules for p in m.parameters() if p.requires_grad]


def snapshot_all(*modules: torch.nn.Module) -> list[torch.Tensor]:
    """Copies of every parameter, trainable or frozen (to check that a frozen model stayed)."""
    return [p.detach().clone() for m in modules for p in m.parameters()]


def assert_unchanged(before: list[torch.Tensor], *modules: torch.nn.Module) -> None:
    """Every parameter of ``modules`` equals its :func:`snapshot_all` copy bit for bit."""
    after = [p.detach() for m in modules for p in m.parameters()]
    assert len(after) == len(before) and after
    changed = [
        i for i, (a, b) in enumerate(zip(after, before, strict=True)) if not torch.equal(a, b)
    ]
    assert not changed, f"{len(changed)} of {len(after)} frozen tensors changed"


def assert_all_changed(before: list[torch.Tensor], *modules: torch.nn.Module) -> None:
    """Every trainable parameter of ``modules`` differs from its :func:`snapshot` copy."""
    after = [p.detach() for m in modules for p in m.parameters() if p.requires_grad]
    assert len(after) == len(before) and after
    unchanged = [i for i, (a, b) in enumerate(zip(after, before, strict=True)) if torch.equal(a, b)]
    assert not unchanged, f"{len(unchanged)} of {len(after)} trainable tensors did not change"


def count_layer_calls(model: torch.nn.Module) -> list[int]:
    """A list that grows by one at every run of the MLP of ``model``'s first transformer
    layer (activation checkpointing runs it again in the backward pass; the recomputation
    calls ``forward`` without the module's hooks, so ``forward`` itself is wrapped)."""
    layer = next(m for m in model.modules() if type(m).__name__.endswith("DecoderLayer"))
    mlp = cast(torch.nn.Module, layer.mlp)
    calls: list[int] = []
    inner = mlp.forward

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return inner(*args, **kwargs)

    mlp.forward = counted  # type: ignore[method-assign]
    return calls


def assert_finite_metrics(metrics: Mapping[str, float]) -> None:
    """At least one metric, and every metric finite."""
    assert metrics
    bad = {k: v for k, v in metrics.items() if not np.isfinite(v)}
    assert not bad, bad


def count_pairs(n: int, seed: int = 0, length: int = 8) -> list[tuple[str, str, str]]:
    """Synthetic preferences labelled by a known reward: more "ab" bigrams is better (a count
    of single characters would be too easy: a random reward head already ranks it well)."""
    rng = random.Random(seed)
    out: list[tuple[str, str, str]] = []
    while len(out) < n:
        x = "".join(rng.choice("ab") for _ in range(length))
        y = "".join(rng.choice("ab") for _ in range(length))
        if x.count("ab") == y.count("ab"):
            continue
        c, r = (x, y) if x.count("ab") > y.count("ab") else (y, x)
        out.append(("Q:", c, r))
    return out


def params_close(a: torch.nn.Module, b: torch.nn.Module, **tol: Any) -> None:
    """The parameters of ``a`` and ``b`` are close (``torch.testing.assert_close`` options)."""
    for (na, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        try:
            torch.testing.assert_close(pa, pb, **tol)
        except AssertionError as exc:
            raise AssertionError(f"{na}: {exc}") from None


def params_equal(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """The parameters of ``a`` and ``b`` are equal bit for bit."""
    for (na, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb), f"parameter {na} differs"


def capture_grads(trainer: Any) -> list[list[torch.Tensor]]:
    """Record the accumulated gradients (before clipping) each time ``trainer`` checks them for
    an optimizer step (one entry per trained model and optimizer step)."""
    seen: list[list[torch.Tensor]] = []
    original = trainer.clip_and_check

    def spy(params: Any, metrics: Any, **kw: Any) -> float:
        seen.append([p.grad.detach().clone() for p in params])
        return float(original(params, metrics, **kw))

    trainer.clip_and_check = spy
    return seen


def assert_grads_close(a: list[list[torch.Tensor]], b: list[list[torch.Tensor]]) -> None:
    """Two :func:`capture_grads` records agree: the same steps, each gradient to rtol 1e-4 and
    an atol of 1e-5 × its largest entry."""
    assert len(a) == len(b) and a
    for step_a, step_b in zip(a, b, strict=True):
        for ga, gb in zip(step_a, step_b, strict=True):
            scale = float(ga.abs().max()) + 1e-12
            torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-5 * scale)


def strip_times(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Metrics rows without the timings (``time/*``, ``wall_time``), which differ run to run."""
    return [
        {k: v for k, v in r.items() if not k.startswith("time/") and k != "wall_time"} for r in rows
    ]
