"""The step loop every trainer shares: resume, steps, logging, progress, checkpoint cadence.

A trainer is orchestration only. :class:`Trainer` owns the loop::

    resume from the latest checkpoint in run_dir (if any); callbacks: on_train_begin
    for step in range(start, total_steps):
        metrics = trainer.train_step(step)      # rollout -> scoring -> buffer -> losses -> step
        evaluation when due (trainer.evaluate(), logged under eval/); on_evaluate
        + per-phase timings, learning rate; on_step_end
        metrics.jsonl; every ``logging_steps`` the trackers of ``report_to``, the sampled
        completions (``log_completions``) and on_log; progress bar
        checkpoint every ``save_every`` steps, at the end and when a callback stops; on_save
    on_train_end

A trainer registers what it trains (:meth:`Trainer.add_trained`: a model with its AdamW and
schedule) and what else it must checkpoint (:meth:`Trainer.add_state`: the data sampler, a
buffer, a controller), and implements :meth:`Trainer.train_step`; checkpoints, the optimizer
step over every trained model and the scheduler steps follow from the registries.

Determinism: all randomness of a step comes from seeds derived from ``(config.seed, step)``
(:func:`rlhf_core.trainers.optim.step_seed`) and from state saved in the checkpoint, so a run
resumed from a checkpoint continues exactly as if it had never stopped: same metrics and, on
CPU, bit-identical weights.

Several processes (``torchrun``): the trainer reads the process group from the environment
(:func:`rlhf_core.distributed.init_distributed`), places its models with
:mod:`rlhf_core.trainers.runtime` (DDP or FSDP2, ``config.parallel``) and gives each rank its
share of every batch; :func:`rlhf_core.trainers.step.accumulate_step` normalises losses by the
counts of the global batch and reduces metrics over ranks, so a step equals the single-process
step on the same global batch. Only rank 0 logs, shows progress and writes checkpoints; every
rank takes part in gathering the state and loads it to resume. Callbacks
(:mod:`rlhf_core.trainers.callbacks`) run on every rank; a stop on one rank stops all. With one
process none of this does anything (``docs/scaling.md``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rlhf_core import distributed as D
from rlhf_core.errors import check_field
from rlhf_core.run_dir import RunDirError, RunFolder
from rlhf_core.trainers import runtime
from rlhf_core.trainers.callbacks import (
    CallbackList,
    NonFiniteGuard,
    TrainerControl,
    TrainerState,
)
from rlhf_core.trainers.checkpointing import load_trainer_checkpoint, save_trainer_checkpoint
from rlhf_core.trainers.config import TrainerConfig
from rlhf_core.trainers.optim import (
    IndexSampler,
    build_optimizer,
    build_scheduler,
    trainable_parameters,
)

__all__ = ["TrainResult", "TrainedModel", "Trainer"]

log = logging.getLogger("rlhf_core.trainers")


@dataclass
class TrainResult:
    """What :meth:`Trainer.train` returns.

    Attributes:
        step: the global step reached.
        metrics: metrics of the last step trained in this call (empty when none was).
        already_finished: True when the run had already reached ``total_steps`` at start.
        message: a human-readable summary (also logged).
        stopped_early: True when a callback stopped training (a checkpoint was saved).
        stop_reason: the callback's reason ("" when it did not stop).
    """

    step: int
    metrics: dict[str, float]
    already_finished: bool = False
    message: str = ""
    stopped_early: bool = False
    stop_reason: str = ""


@dataclass
class TrainedModel:
    """A model the trainer optimises: its trainable parameters, AdamW and schedule, and the
    prefix of its logged gradient norm (``""`` for the main model, ``"value_"`` for PPO's)."""

    model: nn.Module
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    prefix: str = ""


class Trainer:
    """Base class: the step loop, logging, checkpoint and resume.

    Subclasses set ``self.config`` (a :class:`~rlhf_core.trainers.config.TrainerConfig`),
    build their models in ``__init__``, call :meth:`setup_optimization` with the trained model
    (more with :meth:`add_trained`) and implement :meth:`train_step`. Checkpoints then save
    every trained model, optimizer and scheduler under its name and every registered state.
    A trainer that evaluates implements :meth:`evaluation_due` and :meth:`evaluate`.

    ``callbacks``: :class:`~rlhf_core.trainers.callbacks.TrainerCallback` instances, after the
    default :class:`~rlhf_core.trainers.callbacks.NonFiniteGuard` (replaced when one of them
    is a ``NonFiniteGuard``); see :meth:`add_callback` / :meth:`remove_callback`.
    """

    config: TrainerConfig
    name: str = "trainer"
    #: Name under which the main trained model, its optimizer and scheduler are checkpointed.
    checkpoint_key: str = "policy"
    sampler: IndexSampler

    def __init__(self, config: TrainerConfig, *, callbacks: Sequence[Any] | None = None) -> None:
        from rlhf_core.monitor import PhaseTimer

        self.config = config
        device = runtime.resolve_device(config.device)  # validates the name first
        #: where this process sits in a torchrun job (world_size 1 for a plain run)
        self.dist = D.init_distributed(device=config.device)
        self.device = self.dist.device if self.dist.is_distributed else device
        if self.dist.is_distributed:
            # dropout and anything else unseeded differ per rank; trainers' own draws come
            # from step_seed(...) and are the same on every rank where they must be
            D.seed_everything(config.seed, self.dist)
        self.run_dir = Path(config.run_dir)
        self.timer = PhaseTimer(cuda_sync=self.device.type == "cuda")
        #: what a failed non-finite check saves (set before each optimizer step)
        self.batch_to_dump: dict[str, Any] = {}
        self.global_step = 0
        #: what is optimised, by checkpoint name (the main model under ``checkpoint_key``)
        self.trained: dict[str, TrainedModel] = {}
        #: other checkpointed state by name: objects with state_dict / load_state_dict
        self._states: dict[str, tuple[Any, bool]] = {}
        #: the run folder once claimed (:meth:`claim_run_dir`; rank 0 only)
        self.run_folder: RunFolder | None = None
        self._claimed = False
        #: what callbacks read (updated by :meth:`train`) and how they ask to stop
        self.state = TrainerState(
            total_steps=config.total_steps, run_dir=self.run_dir, trainer=self,
            is_main_process=self.dist.is_main_process, world_size=self.dist.world_size,
        )  # fmt: skip
        self.control = TrainerControl()
        self.callbacks = CallbackList()
        given = list(callbacks or [])
        if not any(isinstance(c, NonFiniteGuard) for c in given):
            self.add_callback(NonFiniteGuard())
        for cb in given:
            self.add_callback(cb)

    # ---- what is trained and saved ----------------------------------------------------------
    def train_step(self, step: int) -> dict[str, float]:
        """Run training step ``step`` (0-based); return its metrics as plain numbers."""
        raise NotImplementedError

    def setup_optimization(self, model: nn.Module, num_items: int) -> None:
        """The seeded, resumable sampler over ``num_items`` training items, and AdamW with the
        configured learning-rate schedule over ``model``'s trainable parameters; ``model`` is
        what the checkpoints save under :attr:`checkpoint_key`."""
        self.sampler = IndexSampler(num_items, seed=self.config.seed)
        self.add_state("sampler", self.sampler)
        self.add_trained(self.checkpoint_key, model)

    def add_trained(self, name: str, model: nn.Module, *, lr: float | None = None) -> TrainedModel:
        """Optimise ``model``'s trainable parameters with AdamW (``lr``: instead of
        ``config.learning_rate``) and the configured schedule; checkpointed under ``name``, its
        gradient norm logged as ``grad_norm`` (the main model) or ``<name>_grad_norm``."""
        params = trainable_parameters(model)
        optimizer = build_optimizer(params, self.config, lr=lr)
        prefix = "" if name == self.checkpoint_key else f"{name}_"
        entry = TrainedModel(model, params, optimizer, build_scheduler(optimizer, self.config),
                             prefix)  # fmt: skip
        self.trained[name] = entry
        return entry

    def add_state(self, name: str, obj: Any, *, optional: bool = False) -> None:
        """Checkpoint ``obj.state_dict()`` under ``name`` and restore it on resume (a
        checkpoint without it is an error unless ``optional``)."""
        self._states[name] = (obj, optional)

    # ---- callbacks --------------------------------------------------------------------------
    def add_callback(self, callback: Any) -> None:
        """Append a callback. One with ``state_dict`` / ``load_state_dict`` is checkpointed
        (as ``callback:<ClassName>``, numbered when repeated) and restored on resume."""
        self.callbacks.add(callback)
        if callable(getattr(callback, "state_dict", None)) and callable(
            getattr(callback, "load_state_dict", None)
        ):
            base = f"callback:{type(callback).__name__}"
            name, k = base, 1
            while name in self._states:
                k += 1
                name = f"{base}:{k}"
            self.add_state(name, callback, optional=True)

    def remove_callback(self, callback: Any) -> list[Any]:
        """Remove a callback instance, or every instance of a class (e.g.
        ``remove_callback(NonFiniteGuard)`` turns the NaN tripwire off); returns them."""
        gone = self.callbacks.remove(callback)
        self._states = {
            k: v for k, v in self._states.items() if all(v[0] is not g for g in gone)
        }
        return gone

    # ---- evaluation (trainers that evaluate override both) -----------------------------------
    def evaluation_due(self, step: int) -> bool:
        """Whether to evaluate after global step ``step`` (1-based: steps done)."""
        return False

    def evaluate(self) -> dict[str, float]:
        """Held-out metrics (logged under ``eval/``)."""
        raise NotImplementedError(f"the {self.name} trainer has no evaluation")

    def sample_rows(self) -> list[dict[str, Any]]:
        """The completions of the latest step as rows of ``samples.jsonl`` (trainers that
        sample; a collective with several processes)."""
        return []

    @property
    def trained_model(self) -> nn.Module:
        return self.trained[self.checkpoint_key].model

    @property
    def params(self) -> list[nn.Parameter]:
        return self.trained[self.checkpoint_key].params

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.trained[self.checkpoint_key].optimizer

    @property
    def scheduler(self) -> Any:
        return self.trained[self.checkpoint_key].scheduler

    def optimizer_step(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        """Clip and check the gradients of **every** trained model before stepping any (a
        non-finite gradient cannot leave a half-applied update behind), then step and zero
        them all. Returns the norms before clipping (``grad_norm``, ``value_grad_norm``...)."""
        norms = {
            f"{t.prefix}grad_norm": self.clip_and_check(t.params, metrics, prefix=t.prefix)
            for t in self.trained.values()
        }
        for t in self.trained.values():
            t.optimizer.step()
            t.optimizer.zero_grad(set_to_none=True)
        return norms

    def step_schedulers(self) -> None:
        """One learning-rate schedule step of every trained model (once per trainer step)."""
        for t in self.trained.values():
            t.scheduler.step()

    def synced_models(self) -> list[nn.Module]:
        """The (wrapped) trained models, whose gradients every backward synchronises."""
        return [t.model for t in self.trained.values()]

    # ---- where it runs -----------------------------------------------------------------------
    @property
    def is_main_process(self) -> bool:
        """Rank 0 (or the only process): the one that logs and writes checkpoints."""
        return self.dist.is_main_process

    @property
    def world_size(self) -> int:
        return self.dist.world_size

    @property
    def lockstep_forwards(self) -> bool:
        """True when every forward pass is a collective (FSDP2 with several processes), so all
        ranks must run the same number of them, even without data of their own."""
        return self.dist.is_distributed and self.config.parallel == "fsdp2"

    def shard(self, n: int, *, allow_uneven: bool = False) -> np.ndarray:
        """int64 indices ``0..n-1`` of the items this rank keeps (a contiguous block;
        ``arange(n)`` for a single process), see :func:`rlhf_core.distributed.shard_indices`."""
        return D.shard_indices(n, self.dist.rank, self.dist.world_size, allow_uneven=allow_uneven)

    def check_divisible(self, name: str, value: int) -> None:
        """Refuse a global batch size the processes cannot share equally."""
        w = self.dist.world_size
        check_field(
            value % w == 0,
            name,
            value,
            f"must be a multiple of the number of processes ({w}) so that every process gets "
            f"the same share (e.g. {max(w, value - value % w)})",
        )

    def apply_lora(self, model: nn.Module) -> nn.Module:
        """:func:`rlhf_core.trainers.runtime.apply_lora` with this trainer's config. Call it
        before :meth:`wrap_trained` and before making the reference, so that
        :func:`rlhf_core.models.make_reference` returns the adapter-disabled base."""
        return runtime.apply_lora(model, self.config)

    def wrap_trained(self, model: nn.Module) -> nn.Module:
        """:func:`rlhf_core.trainers.runtime.place_trained` on this rank."""
        return runtime.place_trained(model, self.config, self.dist, self.device)

    def wrap_frozen(self, model: nn.Module) -> nn.Module:
        """:func:`rlhf_core.trainers.runtime.place_frozen` on this rank."""
        return runtime.place_frozen(model, self.config, self.dist, self.device)

    def autocast(self) -> AbstractContextManager[Any]:
        """bf16 autocast on CUDA when ``config.bf16``; a no-op otherwise."""
        if self.device.type == "cuda" and self.config.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    @property
    def dump_dir(self) -> Path:
        """Where batches with non-finite values are saved (one folder per rank when there are
        several)."""
        base = self.run_dir / "nonfinite"
        return base / f"rank{self.dist.rank}" if self.dist.is_distributed else base

    def check_finite(self, metrics: Mapping[str, Any], batch: Mapping[str, Any] | None) -> None:
        """The callbacks' ``on_pre_update``: ``metrics`` are about to be used for an update.
        The default :class:`~rlhf_core.trainers.callbacks.NonFiniteGuard` stops on a
        non-finite value (:func:`rlhf_core.trainers.runtime.check_finite_everywhere`)."""
        self.callbacks.fire("on_pre_update", self.state, self.control, metrics=metrics,
                            batch=batch)  # fmt: skip

    def clip_and_check(
        self, params: Sequence[nn.Parameter], metrics: Mapping[str, Any], *, prefix: str = ""
    ) -> float:
        """Clip the gradient norm to ``max_grad_norm`` and check that the loss metrics and the
        norm are finite; otherwise stop with :class:`rlhf_core.monitor.NonFiniteError` after
        dumping the batch to ``run_dir/nonfinite``. Returns the norm before clipping. With
        several processes the gradients are already synchronised and ``metrics`` must be the
        reduced ones, so every rank takes the same decision."""
        norm = runtime.clip_grad_norm(params, self.config.max_grad_norm)
        self.check_finite({**metrics, f"{prefix}grad_norm": norm}, self.batch_to_dump)
        return float(norm)

    # ---- checkpoints ------------------------------------------------------------------------
    def checkpoint_models(self) -> dict[str, nn.Module]:
        """The models whose weights change (saved and restored by checkpoints)."""
        return {k: t.model for k, t in self.trained.items()}

    def checkpoint_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {k: t.optimizer for k, t in self.trained.items()}

    def checkpoint_schedulers(self) -> dict[str, Any]:
        return {k: t.scheduler for k, t in self.trained.items()}

    def extra_state(self) -> dict[str, Any]:
        """The registered states (:meth:`add_state`), JSON/torch-serialisable."""
        return {name: obj.state_dict() for name, (obj, _) in self._states.items()}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""
        for name, (obj, optional) in self._states.items():
            if name in state:
                obj.load_state_dict(state[name])
            elif not optional:
                raise ValueError(f"the checkpoint holds no {name!r} state for the {self.name} "
                                 "trainer; it was written by another version")  # fmt: skip

    def save_checkpoint(self) -> Path:
        """See :func:`rlhf_core.trainers.checkpointing.save_trainer_checkpoint`."""
        return save_trainer_checkpoint(self)

    def load(self, checkpoint: str | os.PathLike[str], *, verify: bool = True) -> int:
        """See :func:`rlhf_core.trainers.checkpointing.load_trainer_checkpoint`."""
        return load_trainer_checkpoint(self, checkpoint, verify=verify)

    # ---- the run folder ---------------------------------------------------------------------
    def claim_run_dir(self) -> None:
        """Make ``run_dir`` this run's (:meth:`rlhf_core.run_dir.RunFolder.claim`): the path is
        allowed, this process holds its lock, it holds nothing but this run (with ``resume``,
        a recorded config must match but for the options that may change). A new folder gets
        the run's record (``run.json``, ``config.toml``) at once. :meth:`train` calls it first;
        call it yourself before writing into the folder ahead of training. With several
        processes rank 0 claims and every rank raises its :class:`~rlhf_core.run_dir.
        RunDirError`. Idempotent."""
        if self._claimed:
            return
        error: str | None = None
        try:
            if self.is_main_process:
                folder = RunFolder.claim(
                    self.config.run_dir, kind=self.name, config=self.config,
                    resume=self.config.resume,
                )  # fmt: skip
                if folder.is_new:
                    folder.write_record(self.config)
                self.run_folder = folder
        except RunDirError as exc:
            if not self.dist.is_distributed:
                raise
            error = str(exc)
        if self.dist.is_distributed:
            errors = [e for e in D.all_gather_object(error, self.dist) if e]
            if errors:
                raise RunDirError(errors[0])
        self._claimed = True

    # ---- the loop ---------------------------------------------------------------------------
    def train(self, *, stop_at_step: int | None = None) -> TrainResult:
        """Train until ``config.total_steps`` (or ``stop_at_step``, for time-sliced jobs; a
        checkpoint is then saved so the next call continues exactly), or until a callback
        stops it (``TrainResult.stopped_early``; a checkpoint is saved too).

        With ``config.resume`` the latest checkpoint in ``run_dir`` is loaded first; a run that
        already reached ``total_steps`` is reported (``TrainResult.already_finished``) instead
        of silently training nothing.
        """
        from tqdm.auto import tqdm

        from rlhf_core.checkpoint import latest_checkpoint, resume_or_start
        from rlhf_core.trainers.reporting import RunReporter

        cfg = self.config
        self.claim_run_dir()
        start = 0
        if not cfg.resume or latest_checkpoint(self.run_dir) is not None:
            # raises when resume=false but run_dir already holds checkpoints, or when the latest
            # checkpoint is damaged (unless resume_last_good)
            info = resume_or_start(
                self.run_dir, cfg.resume, cfg.total_steps, last_good=cfg.resume_last_good
            )
            if info.finished:  # reported, and nothing in the folder is rewritten
                msg = f"{self.name}: {info.message}"
                return TrainResult(step=info.step, metrics={}, already_finished=True, message=msg)
            if info.checkpoint is not None:
                start = self.load(info.checkpoint, verify=False)  # verified when chosen
                if self.is_main_process:
                    log.info("%s: %s", self.name, info.message)
                if info.damaged:
                    D.barrier(self.dist)  # every rank has read what it resumes from
                    if self.is_main_process:
                        info.set_aside_damaged()
        if self.run_folder is not None:  # every check passed: the record of this run
            self.run_folder.write_record(cfg)
        end = cfg.total_steps if stop_at_step is None else min(int(stop_at_step), cfg.total_steps)
        if end <= start:
            raise ValueError(
                f"stop_at_step={stop_at_step} is not after the step the run starts from ({start})"
            )
        self.global_step = start
        main = self.is_main_process
        state, control = self.state, self.control
        state.step = state.start_step = start
        state.total_steps, state.metrics, state.eval_metrics = cfg.total_steps, {}, {}
        control.should_stop, control.reason = False, ""
        reporter = RunReporter(self, start)  # only rank 0 writes metrics, samples, trackers
        last: dict[str, float] = {}
        bar = tqdm(total=cfg.total_steps, initial=start, disable=not (cfg.progress_bar and main),
                   desc=self.name, dynamic_ncols=True)  # fmt: skip
        try:
            self.callbacks.fire("on_train_begin", state, control)
            for step in range(start, end):
                metrics, evaluated = self._run_step(step)
                done = self.global_step
                self.callbacks.fire("on_step_end", state, control)
                stop = self._stop_requested()  # agreed by every rank before the logging branch
                logging_step = stop or reporter.is_logging_step(
                    done, evaluated=evaluated, last=done == end
                )
                reporter.log(done, metrics, track=logging_step)
                if logging_step:
                    if reporter.log_completions:
                        reporter.log_samples(done, self.sample_rows(), bar)
                    self.callbacks.fire("on_log", state, control, logs=metrics)
                last = metrics
                bar.update(1)
                bar.set_postfix(self.progress_postfix(metrics), refresh=False)
                stop = stop or self._stop_requested()  # on_log may have asked
                periodic = cfg.save_every > 0 and done % cfg.save_every == 0
                if periodic or done == end or stop:
                    path = self.save_checkpoint()
                    self.callbacks.fire("on_save", state, control, checkpoint=path)
                if stop:
                    break
            self.callbacks.fire("on_train_end", state, control)
        finally:
            bar.close()
            reporter.close()
        if control.should_stop:
            msg = (
                f"{self.name}: stopped early at step {self.global_step} of {cfg.total_steps} "
                f"({control.reason}); the checkpoint is in {self.run_dir}"
            )
        else:
            msg = (f"{self.name}: trained steps {start + 1}..{end} of {cfg.total_steps} in "
                   f"{self.run_dir}")  # fmt: skip
        if main:
            log.info(msg)
        return TrainResult(step=self.global_step, metrics=last, message=msg,
                           stopped_early=control.should_stop, stop_reason=control.reason)  # fmt: skip

    def _run_step(self, step: int) -> tuple[dict[str, float], bool]:
        """Step ``step`` (0-based) and, when due, the evaluation after it (``eval/`` keys,
        ``on_evaluate``); then the timings and the learning rate. Returns the metrics and
        whether it evaluated."""
        self.timer.reset()
        metrics = dict(self.train_step(step))
        evaluated: dict[str, float] = {}
        if self.evaluation_due(step + 1):
            with self.timer.phase("evaluation"):
                evaluated = {f"eval/{k}": v for k, v in self.evaluate().items()}
            metrics.update(evaluated)
        metrics.update(self.timer.summary())
        metrics["lr"] = self.current_lr()
        self.global_step = step + 1
        self.state.step, self.state.metrics = self.global_step, metrics
        if evaluated:
            self.state.eval_metrics = evaluated
            self.callbacks.fire("on_evaluate", self.state, self.control, metrics=evaluated)
        return metrics, bool(evaluated)

    def _stop_requested(self) -> bool:
        """Whether a callback asked to stop, on any rank (then on every rank)."""
        if not self.dist.is_distributed:
            return self.control.should_stop
        ranks = D.flagged_ranks(self.control.should_stop, self.dist)
        if ranks and not self.control.should_stop:
            self.control.stop(f"a callback on rank(s) {ranks} stopped training")
        return bool(ranks)

    def current_lr(self) -> float:
        """The main model's learning rate now (``config.learning_rate`` before any model)."""
        for t in self.trained.values():
            return float(t.scheduler.get_last_lr()[0])
        return float(self.config.learning_rate)

    def progress_postfix(self, metrics: Mapping[str, float]) -> dict[str, str]:
        """A few metrics shown on the progress bar."""
        keys = ("loss", "reward/mean", "kl", "accuracy")
        return {k: f"{metrics[k]:.4g}" for k in keys if k in metrics}
