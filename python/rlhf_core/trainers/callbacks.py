"""Callbacks: code that watches a trainer's step loop, reads its metrics and can stop it.

A callback is an object with some of these methods (subclass :class:`TrainerCallback`, whose
methods do nothing, and override the ones you need); each gets the :class:`TrainerState`
(step, metrics, the trainer) and the :class:`TrainerControl`::

    on_train_begin(state, control)                 after resuming, before the first step
    on_pre_update(state, control, metrics, batch)  before values are used for an update: the
                                                   loss parts and gradient norms before each
                                                   optimizer step, a rollout's rewards after
                                                   scoring (raise to stop at once)
    on_evaluate(state, control, metrics)           after a periodic evaluation ("eval/..." keys)
    on_step_end(state, control)                    after each step (and its evaluation)
    on_log(state, control, logs)                   on each logging step (``logging_steps``)
    on_save(state, control, checkpoint)            after each checkpoint is written
    on_train_end(state, control)                   after the last step (also after a stop)

**Stopping.** A callback stops training with ``control.stop("reason")`` (it sets
``control.should_stop`` and ``control.reason``; a hook's return value is not read). The loop
finishes the current step, logs it, saves a checkpoint, calls ``on_train_end`` and returns a
:class:`~rlhf_core.trainers.loop.TrainResult` with ``stopped_early=True`` and the reason.
Running the same command again resumes from that checkpoint.

**Several processes.** Callbacks run on every rank with the same (global) metrics; a stop on
any rank stops all of them. Only rank 0 writes files, so a callback that writes should check
``state.is_main_process``.

**State.** A callback with ``state_dict()`` / ``load_state_dict()`` is saved in every
checkpoint and restored on resume, so a resumed run decides as an uninterrupted one would.

The defaults: every trainer starts with :class:`NonFiniteGuard` (the NaN tripwire: stop with
:class:`rlhf_core.monitor.NonFiniteError` on a non-finite loss, gradient norm or reward, after
saving the batch). Replace it by passing an instance of a subclass in ``callbacks=[...]``, or
remove it with ``trainer.remove_callback(NonFiniteGuard)``. :class:`OveroptimizationEarlyStop`
(gold-peak early stopping, :class:`rlhf_core.monitor.OveroptimizationMonitor`) and
:class:`InstabilityWarnings` (KL spikes, entropy collapse,
:class:`rlhf_core.monitor.InstabilityDetector`) are opt-in.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf_core.monitor import InstabilityDetector, OveroptimizationMonitor

__all__ = [
    "TrainerState",
    "TrainerControl",
    "TrainerCallback",
    "CallbackList",
    "NonFiniteGuard",
    "OveroptimizationEarlyStop",
    "InstabilityWarnings",
    "EVENTS",
]

log = logging.getLogger("rlhf_core.trainers")

#: The hooks, in the order they can fire within a step.
EVENTS = (
    "on_train_begin",
    "on_pre_update",
    "on_evaluate",
    "on_step_end",
    "on_log",
    "on_save",
    "on_train_end",
)


@dataclass
class TrainerState:
    """What a callback reads about the run.

    Attributes:
        step: global steps done (the step of the latest ``metrics.jsonl`` line).
        total_steps: the configured number of steps.
        start_step: the step this ``train()`` call started from (after resuming).
        metrics: the latest step's metrics (with its ``eval/...`` keys when it evaluated,
            timings and ``lr``).
        eval_metrics: the latest evaluation's metrics (``eval/...`` keys; empty before one).
        run_dir: the run folder.
        is_main_process: rank 0 (the process that writes files).
        world_size: number of processes.
        trainer: the trainer itself (its models, config, ``global_step``).
    """

    total_steps: int
    run_dir: Path
    trainer: Any = field(repr=False)
    step: int = 0
    start_step: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    is_main_process: bool = True
    world_size: int = 1


@dataclass
class TrainerControl:
    """What a callback asks of the loop: ``stop(reason)`` ends training after this step."""

    should_stop: bool = False
    reason: str = ""

    def stop(self, reason: str) -> None:
        """Stop training after the current step; ``reason`` ends up in the result (the first
        reason given wins)."""
        if not self.should_stop:
            self.reason = str(reason)
        self.should_stop = True


class TrainerCallback:
    """Base class of callbacks: every hook does nothing. See the module docstring for when
    each fires."""

    def on_train_begin(self, state: TrainerState, control: TrainerControl) -> None:
        """Training starts (after resuming)."""

    def on_pre_update(
        self,
        state: TrainerState,
        control: TrainerControl,
        metrics: Mapping[str, Any],
        batch: Mapping[str, Any] | None,
    ) -> None:
        """``metrics`` (loss parts and gradient norms, or ``reward/<source>`` arrays) are about
        to be used for an update; ``batch`` is what produced them (for a dump)."""

    def on_evaluate(
        self, state: TrainerState, control: TrainerControl, metrics: Mapping[str, float]
    ) -> None:
        """An evaluation finished; ``metrics`` are its ``eval/...`` values."""

    def on_step_end(self, state: TrainerState, control: TrainerControl) -> None:
        """A step finished; ``state.metrics`` are its metrics."""

    def on_log(
        self, state: TrainerState, control: TrainerControl, logs: Mapping[str, float]
    ) -> None:
        """``logs`` went to the trackers (every ``logging_steps``)."""

    def on_save(self, state: TrainerState, control: TrainerControl, checkpoint: Path) -> None:
        """A checkpoint was written to ``checkpoint``."""

    def on_train_end(self, state: TrainerState, control: TrainerControl) -> None:
        """Training ended (at ``total_steps``, a ``stop_at_step`` or a stop)."""


class CallbackList:
    """The callbacks of a trainer, called in order."""

    def __init__(self, callbacks: Sequence[Any] = ()) -> None:
        self._items: list[Any] = []
        for cb in callbacks:
            self.add(cb)

    def add(self, callback: Any) -> None:
        """Append ``callback`` (an instance: a class is refused, the usual slip)."""
        if isinstance(callback, type):
            raise TypeError(
                f"callbacks: got the class {callback.__name__}; pass an instance "
                f"({callback.__name__}())"
            )
        if not any(callable(getattr(callback, e, None)) for e in EVENTS):
            raise TypeError(
                f"callbacks: {callback!r} has none of the hooks {', '.join(EVENTS)}; "
                "subclass rlhf_core.trainers.callbacks.TrainerCallback"
            )
        self._items.append(callback)

    def remove(self, callback: Any) -> list[Any]:
        """Remove ``callback`` (an instance), or every instance of it when it is a class;
        returns what was removed."""
        if isinstance(callback, type):
            gone = [c for c in self._items if isinstance(c, callback)]
        else:
            gone = [c for c in self._items if c is callback]
        self._items = [c for c in self._items if all(c is not g for g in gone)]
        return gone

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def fire(self, event: str, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        """Call ``event`` on every callback that has it."""
        for cb in list(self._items):
            hook = getattr(cb, event, None)
            if hook is not None:
                hook(state, control, **kw)


class NonFiniteGuard(TrainerCallback):
    """The NaN tripwire: raise :class:`rlhf_core.monitor.NonFiniteError` naming every
    non-finite loss part, gradient norm or reward, after saving the batch to
    ``run_dir/nonfinite`` (:func:`rlhf_core.trainers.runtime.check_finite_everywhere`; with
    several processes every rank raises when one found a value). On by default."""

    def on_pre_update(
        self,
        state: TrainerState,
        control: TrainerControl,
        metrics: Mapping[str, Any],
        batch: Mapping[str, Any] | None,
    ) -> None:
        from rlhf_core.trainers.runtime import check_finite_everywhere

        t = state.trainer
        check_finite_everywhere(metrics, batch, t.dump_dir, step=t.global_step + 1,
                                dist=t.dist, run_dir=t.run_dir)  # fmt: skip


class OveroptimizationEarlyStop(TrainerCallback):
    """Stop at the gold peak (Goodhart early stopping) from the periodic evaluations.

    Each evaluation feeds :class:`rlhf_core.monitor.OveroptimizationMonitor` with the proxy
    (``proxy_key``, default the total eval reward) and the gold reward (``gold_key``, e.g.
    ``"eval/reward/gold_reward"`` of a reward function given weight 0, which is logged but not
    optimised). Once ``patience`` evaluations in a row brought no gold improvement larger than
    ``min_delta``, training stops; proxy-up / gold-down divergence is logged as a warning.
    Needs an eval dataset (``eval_steps``).
    """

    def __init__(
        self,
        gold_key: str,
        *,
        proxy_key: str = "eval/reward/mean",
        kl_key: str = "eval/kl",
        patience: int = 3,
        min_delta: float = 0.0,
        window: int = 4,
    ) -> None:
        self.gold_key = gold_key
        self.proxy_key = proxy_key
        self.kl_key = kl_key
        self.monitor = OveroptimizationMonitor(patience=patience, min_delta=min_delta,
                                               window=window)  # fmt: skip

    def on_evaluate(
        self, state: TrainerState, control: TrainerControl, metrics: Mapping[str, float]
    ) -> None:
        for key in (self.proxy_key, self.gold_key):
            if key not in metrics:
                raise KeyError(
                    f"OveroptimizationEarlyStop: the evaluation has no metric {key!r} (it has "
                    f"{sorted(metrics)}); set gold_key / proxy_key to one of those"
                )
        self.monitor.update(state.step, metrics[self.proxy_key], metrics[self.gold_key],
                            metrics.get(self.kl_key))  # fmt: skip
        for warning in self.monitor.warnings():
            if state.is_main_process:
                log.warning("%s", warning)
        if self.monitor.should_stop:
            m = self.monitor
            control.stop(
                f"over-optimisation: {self.gold_key} did not improve by more than "
                f"{m.min_delta} for {m.patience} evaluations (best {m.best_gold:.4g} at step "
                f"{m.best_step})"
            )

    def state_dict(self) -> dict[str, Any]:
        return self.monitor.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.monitor.load_state_dict(state)


class InstabilityWarnings(TrainerCallback):
    """Log KL spikes and entropy collapse (:class:`rlhf_core.monitor.InstabilityDetector`)
    from each step's ``kl_key`` and ``entropy_key`` metrics; with ``stop=True`` the first
    warning also stops training. Keyword arguments go to the detector."""

    def __init__(
        self,
        *,
        kl_key: str = "kl",
        entropy_key: str = "entropy",
        stop: bool = False,
        **detector: Any,
    ) -> None:
        self.kl_key = kl_key
        self.entropy_key = entropy_key
        self.stop = stop
        self.detector = InstabilityDetector(**detector)
        #: every warning so far, as (step, sentence)
        self.warnings: list[tuple[int, str]] = []

    def on_step_end(self, state: TrainerState, control: TrainerControl) -> None:
        found = self.detector.update(state.step, kl=state.metrics.get(self.kl_key),
                                     entropy=state.metrics.get(self.entropy_key))  # fmt: skip
        for w in found:
            self.warnings.append((state.step, w))
            if state.is_main_process:
                log.warning("%s", w)
        if found and self.stop:
            control.stop(found[0])

    def state_dict(self) -> dict[str, Any]:
        return self.detector.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.detector.load_state_dict(state)
