"""The optimiser, its schedule, and the seeds and data order of a step.

- :func:`build_optimizer` (AdamW with the config's hyper-parameters) and
  :func:`build_scheduler` (warm-up, then constant / linear / cosine over ``total_steps``, or
  any schedule of ``transformers.get_scheduler``), a :class:`TrainerStepLR` stepped once per
  trainer step;
- :func:`step_seed`: every random draw of a step comes from a seed derived from
  ``(run seed, step, purpose)``, so a resumed run draws what an uninterrupted one would;
- :class:`IndexSampler`: the seeded, resumable order of a trainer's items (prompts,
  examples, pairs).

``IndexSampler`` draws its permutations with numpy's generator: the Rust planner's
``permutation`` (SplitMix64) gives another stream, so switching would change which prompts
every recorded run sees (``tests/data/behaviour.json``); it stays until a change of the data
order is wanted anyway.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from rlhf_core.trainers.config import TrainerConfig

__all__ = [
    "IndexSampler",
    "TrainerStepLR",
    "build_optimizer",
    "build_scheduler",
    "step_seed",
    "trainable_parameters",
    "warmup_steps_of",
]


def step_seed(seed: int, step: int, purpose: int = 0, index: int | None = None) -> int:
    """A 31-bit seed derived from (run seed, step, purpose[, index]): independent streams per
    step, and with ``index`` per item of the step (e.g. the position of a prompt in the step's
    global prompt list)."""
    words = [int(seed) & 0xFFFFFFFF, int(step), int(purpose)]
    if index is not None:
        words.append(int(index))
    ss = np.random.SeedSequence(words)
    return int(ss.generate_state(1)[0] & 0x7FFFFFFF)


def trainable_parameters(*modules: nn.Module) -> list[nn.Parameter]:
    """Parameters with ``requires_grad`` of the given modules, each once."""
    seen: set[int] = set()
    out: list[nn.Parameter] = []
    for m in modules:
        for p in m.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def build_optimizer(
    params: Iterable[nn.Parameter], config: TrainerConfig, *, lr: float | None = None
) -> torch.optim.Optimizer:
    """AdamW with the config's hyper-parameters (``lr`` overrides ``config.learning_rate``)."""
    params = list(params)
    if not params:
        raise ValueError("no trainable parameters: every parameter has requires_grad=False")
    return torch.optim.AdamW(
        params,
        lr=config.learning_rate if lr is None else lr,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_eps,
        weight_decay=config.weight_decay,
    )


def warmup_steps_of(config: TrainerConfig) -> int:
    """Warm-up steps: ``warmup_steps``, else ``ceil(warmup_ratio × total_steps)`` (as the
    transformers ``Trainer`` counts a ratio)."""
    if config.warmup_steps > 0:
        return int(config.warmup_steps)
    return math.ceil(config.warmup_ratio * config.total_steps)


def _lr_factor(step: int, config: TrainerConfig) -> float:
    """Multiplier of the peak learning rate at (0-based) trainer step ``step`` for
    rlhf-core's three schedules."""
    warmup = warmup_steps_of(config)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if config.lr_scheduler == "constant":
        return 1.0
    span = max(1, config.total_steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    if config.lr_scheduler == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _transformers_factor(config: TrainerConfig) -> Callable[[int], float]:
    """The multiplier of a ``transformers.get_scheduler`` schedule, read one step ahead: at
    trainer step ``s`` it is the schedule's value at ``s + 1`` with ``warmup + 1`` warm-up steps
    out of ``total_steps + 1``, so warm-up step ``s`` gives ``(s + 1) / (warmup + 1)`` (no step
    runs at 0) as rlhf-core's own schedules do, and after the warm-up the schedule runs over
    the remaining steps exactly as transformers defines it."""
    from transformers import get_scheduler

    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    try:
        sched = get_scheduler(
            config.lr_scheduler,
            dummy,
            num_warmup_steps=warmup_steps_of(config) + 1,
            num_training_steps=config.total_steps + 1,
            scheduler_specific_kwargs=dict(config.lr_scheduler_kwargs) or None,
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"lr_scheduler={config.lr_scheduler!r} with lr_scheduler_kwargs="
            f"{config.lr_scheduler_kwargs!r}: transformers.get_scheduler refused them: {exc}"
        ) from exc
    factor = sched.lr_lambdas[0]
    return lambda s: float(factor(s + 1))


class TrainerStepLR(torch.optim.lr_scheduler.LambdaLR):
    """The learning-rate schedule of a trained model: ``base_lr × factor(trainer step)``.

    :meth:`step` after a trainer step with an optimizer update, :meth:`skip` after one
    without (e.g. every completion masked): the schedule follows the trainer step either way,
    and ``skip`` sets the next step's learning rate without torch's check that an optimizer
    step came first (no update used the old one)."""

    def skip(self) -> None:
        """Advance one trainer step without an optimizer update."""
        self.last_epoch += 1
        lrs = [
            base * f(self.last_epoch)
            for base, f in zip(self.base_lrs, self.lr_lambdas, strict=True)
        ]
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        self._last_lr = lrs


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainerConfig) -> TrainerStepLR:
    """The schedule of ``config.lr_scheduler``, stepped once per trainer step.

    ``constant`` / ``linear`` / ``cosine``: warm-up (step ``s < warmup`` uses ``(s + 1) /
    (warmup + 1)`` of the peak), then a constant rate, ``1 − progress`` or ``(1 + cos(π ·
    progress)) / 2`` with ``progress = (s − warmup) / (total_steps − warmup)``. Every other
    name is ``transformers.get_scheduler``'s schedule (with ``lr_scheduler_kwargs``), read one
    step ahead so that its warm-up matches (see :func:`_transformers_factor`). The warm-up is
    ``warmup_steps``, or ``warmup_ratio`` of ``total_steps``."""
    if config.lr_scheduler in ("constant", "linear", "cosine"):
        return TrainerStepLR(optimizer, lambda s: _lr_factor(s, config))
    return TrainerStepLR(optimizer, _transformers_factor(config))


class IndexSampler:
    """Seeded, resumable order over ``n`` items: each epoch is a fresh permutation drawn from
    ``(seed, epoch)``; :meth:`next` returns the next ``k`` indices, crossing epochs as needed.

    ``state_dict()`` holds ``{"epoch", "position"}``; with the same ``n`` and ``seed`` a loaded
    sampler continues exactly where the saved one stopped.
    """

    def __init__(self, n: int, seed: int = 0, *, shuffle: bool = True) -> None:
        if n < 1:
            raise ValueError(f"IndexSampler needs at least one item, got n={n}")
        self.n = int(n)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n, dtype=np.int64)
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, epoch])
        return rng.permutation(self.n).astype(np.int64)

    def next(self, k: int) -> np.ndarray:
        """The next ``k`` indices (int64 (k,))."""
        out = np.empty(k, dtype=np.int64)
        filled = 0
        while filled < k:
            if self.position >= self.n:
                self.epoch += 1
                self.position = 0
                self._perm = self._permutation(self.epoch)
            take = min(k - filled, self.n - self.position)
            out[filled : filled + take] = self._perm[self.position : self.position + take]
            self.position += take
            filled += take
        return out

    def state_dict(self) -> dict[str, int]:
        return {"n": self.n, "seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["n"]) != self.n or int(state["seed"]) != self.seed:
            raise ValueError(
                f"sampler state was saved for n={state['n']}, seed={state['seed']} but this "
                f"sampler has n={self.n}, seed={self.seed}: resume with the same data and seed"
            )
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._perm = self._permutation(self.epoch)
