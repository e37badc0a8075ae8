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
(gold-peak early stopping, :class:`rlhf_core.monitor.OveroptimizationMonitor`),
:class:`GoldFreeEarlyStop` (the same without a gold reward: a reward ensemble's disagreement, a
check model's reward and the KL, :class:`rlhf_core.monitor.GoldFreeStop`) and
:class:`InstabilityWarnings` (KL spikes, entropy collapse,
:class:`rlhf_core.monitor.InstabilityDetector`) are opt-in.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf_core.monitor import GoldFreeStop, InstabilityDetector, OveroptimizationMonitor

__all__ = [
    "TrainerState",
    "TrainerControl",
    "TrainerCallback",
    "CallbackList",
    "NonFiniteGuard",
    "OveroptimizationEarlyStop",
    "GoldFreeEarlyStop",
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


class GoldFreeEarlyStop(TrainerCallback):
    """Stop a policy-gradient run when over-optimisation shows in what a run can compute,
    without a gold reward (:class:`rlhf_core.monitor.GoldFreeStop`), and keep the best model.

    Reads, at each evaluation (``on="eval"``, needs ``eval_steps`` and an eval dataset) or each
    step (``on="step"``, the rollout's own numbers: noisier, smooth them), the optimised reward
    ``reward/<source>`` (a reward model or :class:`~rlhf_core.models.RewardEnsemble` named
    ``source``), the ensemble's disagreement ``reward/<source>/std``, the check model's reward
    ``reward/<check>`` (a weight-0 reward source, e.g. the CLI's ``--check_model``) and ``kl``
    (``eval/`` in front for evaluations). Signals whose inputs are not logged are left out; at
    least one signal with a threshold must have its input. The spreads the check signals are
    measured in are the std over the first rollout's completions of the proxy's and the check's
    scores.

    With ``save_best`` each new kept candidate (:attr:`GoldFreeStop.candidate_step`) is saved
    to ``run_dir/gold_free_best`` (``save_pretrained`` of the policy and the tokenizer), so the
    model the rule keeps is on disk when it stops; ``run_dir/gold_free.json`` holds the rule's
    :meth:`~rlhf_core.monitor.GoldFreeStop.summary` after each update.

    Args:
        source: name of the optimised reward source; None: ``reward_model`` (a reward model)
            or else ``reward_ensemble`` (an ensemble given as a model), whichever is logged.
        check: name of the check model's source (``"check_model"``: the CLI's).
        on: ``"eval"`` or ``"step"``.
        save_best: save each new candidate's policy.
        **rule: :class:`~rlhf_core.monitor.GoldFreeStop` parameters (thresholds, ``patience``,
            ``smoothing``, ``keep``).
    """

    def __init__(
        self,
        *,
        source: str | None = None,
        check: str = "check_model",
        on: str = "eval",
        save_best: bool = True,
        **rule: Any,
    ) -> None:
        if on not in ("eval", "step"):
            raise ValueError(f"GoldFreeEarlyStop: on={on!r}, expected 'eval' or 'step'")
        self.source, self.check, self.on, self.save_best = source, check, on, save_best
        self.rule = GoldFreeStop(**rule)
        self._scales: dict[str, float | None] | None = None

    def _keys(self, metrics: Mapping[str, float]) -> dict[str, str]:
        pre = "eval/" if self.on == "eval" else ""
        if self.source is None:
            names = ("reward_model", "reward_ensemble")
            found = [s for s in names if f"{pre}reward/{s}" in metrics]
            self.source = found[0] if found else "reward_model"
        return {
            "proxy": f"{pre}reward/{self.source}",
            "disagreement": f"{pre}reward/{self.source}/std",
            "check": f"{pre}reward/{self.check}",
            "kl": f"{pre}kl",
        }

    def on_train_begin(self, state: TrainerState, control: TrainerControl) -> None:
        from rlhf_core import parallel as P

        model = state.trainer.trained_model
        if self.save_best and P.is_fsdp2(model):
            raise ValueError("GoldFreeEarlyStop: save_best cannot save an FSDP2-sharded policy "
                             "at every candidate; pass save_best=False")  # fmt: skip
        if self.on == "eval" and not getattr(state.trainer, "eval_collector", None):
            raise ValueError(
                "GoldFreeEarlyStop(on='eval') reads the periodic evaluations: give the trainer "
                "an eval_dataset and eval_steps > 0, or use on='step'"
            )

    def on_evaluate(
        self, state: TrainerState, control: TrainerControl, metrics: Mapping[str, float]
    ) -> None:
        if self.on == "eval":
            self._update(state, control, metrics)

    def on_step_end(self, state: TrainerState, control: TrainerControl) -> None:
        if self.on == "step":
            self._update(state, control, state.metrics)

    def _first_scales(self, trainer: Any) -> dict[str, float | None]:
        """The std over the latest rollout's completions of the proxy's and the check's
        scores (every rank's, gathered)."""
        import numpy as np

        from rlhf_core.rollout.metrics import gather

        parts = getattr(getattr(trainer, "last_rollout", None), "score_parts", None) or {}
        out: dict[str, float | None] = {}
        for what, name in (("proxy_scale", str(self.source)), ("check_scale", self.check)):
            if name not in parts:
                out[what] = None
                continue
            x = gather(np.asarray(parts[name], dtype=np.float64), trainer.dist)
            x = x[np.isfinite(x)]
            out[what] = float(x.std()) if x.size > 1 else None
        return out

    def _update(
        self, state: TrainerState, control: TrainerControl, metrics: Mapping[str, float]
    ) -> None:
        keys = self._keys(metrics)
        if keys["proxy"] not in metrics:
            raise KeyError(
                f"GoldFreeEarlyStop: no metric {keys['proxy']!r} (source={self.source!r}); the "
                f"metrics hold {sorted(k for k in metrics if 'reward/' in k)}"
            )
        if self._scales is None:
            self._scales = self._first_scales(state.trainer)
            inputs = {"disagreement": "disagreement", "check_gap": "check",
                      "check_drop": "check", "sqrt_kl": "kl", "kl_growth": "kl"}  # fmt: skip
            usable = [s for s, th in self.rule.thresholds.items()
                      if th is not None and keys[inputs[s]] in metrics]  # fmt: skip
            if not usable:
                raise ValueError(
                    "GoldFreeEarlyStop: none of the signals with a threshold has its input "
                    f"logged (looked for {keys['disagreement']!r}: a reward ensemble as "
                    f"{self.source!r}; {keys['check']!r}: a weight-0 check model; "
                    f"{keys['kl']!r} with max_sqrt_kl or max_kl_growth)"
                )
        stopped = self.rule.should_stop
        self.rule.update(
            state.step,
            float(metrics[keys["proxy"]]),
            disagreement=metrics.get(keys["disagreement"]),
            check=metrics.get(keys["check"]),
            kl=metrics.get(keys["kl"]),
            **self._scales,
        )
        if state.is_main_process:
            if self.rule.improved and self.save_best:
                self._save_best(state)
            from rlhf_core._io import atomic_write_text, json_safe

            atomic_write_text(
                state.run_dir / "gold_free.json",
                json.dumps(json_safe(self.rule.summary()), indent=2) + "\n",
            )
        if self.rule.should_stop:
            r = self.rule
            if not stopped and state.is_main_process:
                log.warning("gold-free stop at step %s (%s); kept step %s", r.stop_step,
                            ", ".join(r.reasons), r.best_step)  # fmt: skip
            control.stop(
                f"gold-free stop ({', '.join(r.reasons)} over the threshold for {r.patience} "
                f"updates at step {r.stop_step}); kept step {r.best_step}"
                + (f" in {state.run_dir / 'gold_free_best'}" if self.save_best else "")
            )

    def _save_best(self, state: TrainerState) -> None:
        import shutil

        out = state.run_dir / "gold_free_best"
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        t = state.trainer
        t.trained_model.save_pretrained(str(tmp))
        tok = getattr(t, "tokenizer", None)
        if tok is not None and hasattr(tok, "save_pretrained"):
            tok.save_pretrained(str(tmp))
        (tmp / "gold_free_step.json").write_text(json.dumps({"step": state.step}) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)

    def state_dict(self) -> dict[str, Any]:
        return {"rule": self.rule.state_dict(), "scales": self._scales, "source": self.source}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rule.load_state_dict(state["rule"])
        self._scales = state["scales"]
        self.source = state["source"]


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
