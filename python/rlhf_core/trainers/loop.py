"""The step loop every trainer shares: resume, steps, logging, progress, checkpoint cadence.

A trainer is orchestration only. :class:`Trainer` owns the loop::

    resume from the latest checkpoint in run_dir (if any)
    for step in range(start, total_steps):
        metrics = trainer.train_step(step)      # rollout -> scoring -> buffer -> losses -> step
        + per-phase timings, learning rate
        log metrics (run_dir/metrics.jsonl, TensorBoard), progress bar
        checkpoint every ``save_every`` steps and at the end

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
rank takes part in gathering the state and loads it to resume. With one process none of this
does anything (``docs/scaling.md``).
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
from rlhf_core.trainers import runtime
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
    """

    step: int
    metrics: dict[str, float]
    already_finished: bool = False
    message: str = ""


@dataclass
class TrainedModel:
    """A model the trainer optimises: its trainable parameters, AdamW and schedule, the
    prefix of its logged gradient norm (``""`` for the main model, ``"value_"`` for PPO's),
    and whether its optimizer stepped in the current trainer step."""

    model: nn.Module
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    prefix: str = ""
    updated: bool = False


class Trainer:
    """Base class: the step loop, logging, checkpoint and resume.

    Subclasses set ``self.config`` (a :class:`~rlhf_core.trainers.config.TrainerConfig`),
    build their models in ``__init__``, call :meth:`setup_optimization` with the trained model
    (more with :meth:`add_trained`) and implement :meth:`train_step`. Checkpoints then save
    every trained model, optimizer and scheduler under its name and every registered state.
    """

    config: TrainerConfig
    name: str = "trainer"
    #: Name under which the main trained model, its optimizer and scheduler are checkpointed.
    checkpoint_key: str = "policy"
    sampler: IndexSampler

    def __init__(self, config: TrainerConfig) -> None:
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
            t.updated = True
        return norms

    def step_schedulers(self) -> None:
        """One learning-rate schedule step of every trained model (once per trainer step, at
        its end). The schedule follows the trainer step: a model whose optimizer did not step
        in this trainer step (e.g. every completion masked) has its schedule advanced without
        a scheduler step (:meth:`rlhf_core.trainers.optim.TrainerStepLR.skip`), which torch
        would take for a scheduler stepped before its optimizer."""
        for t in self.trained.values():
            skip = getattr(t.scheduler, "skip", None)
            if t.updated or skip is None:
                t.scheduler.step()
            else:
                skip()
            t.updated = False

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

    def apply_lora(self, model: nn.Module, *, pad_token_id: int | None = None) -> nn.Module:
        """:func:`rlhf_core.trainers.runtime.apply_lora` with this trainer's config. Call it
        before :meth:`wrap_trained` and before making the reference, so that
        :func:`rlhf_core.models.make_reference` returns the adapter-disabled base."""
        return runtime.apply_lora(model, self.config, pad_token_id=pad_token_id)

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
        """:func:`rlhf_core.trainers.runtime.check_finite_everywhere` at the current step."""
        runtime.check_finite_everywhere(
            metrics, batch, self.dump_dir, step=self.global_step + 1, dist=self.dist,
            run_dir=self.run_dir,
        )  # fmt: skip

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

    def load(self, checkpoint: str | os.PathLike[str]) -> int:
        """See :func:`rlhf_core.trainers.checkpointing.load_trainer_checkpoint`."""
        return load_trainer_checkpoint(self, checkpoint)

    # ---- the loop ---------------------------------------------------------------------------
    def train(self, *, stop_at_step: int | None = None) -> TrainResult:
        """Train until ``config.total_steps`` (or ``stop_at_step``, for time-sliced jobs; a
        checkpoint is then saved so the next call continues exactly).

        With ``config.resume`` the latest checkpoint in ``run_dir`` is loaded first; a run that
        already reached ``total_steps`` is reported (``TrainResult.already_finished``) instead
        of silently training nothing.
        """
        from tqdm.auto import tqdm

        from rlhf_core.checkpoint import latest_checkpoint, resume_or_start
        from rlhf_core.monitor import MetricsLogger

        cfg = self.config
        start = 0
        if not cfg.resume or latest_checkpoint(self.run_dir) is not None:
            # raises when resume=false but run_dir already holds checkpoints
            info = resume_or_start(self.run_dir, cfg.resume, cfg.total_steps)
            if info.finished:
                msg = f"{self.name}: {info.message}"
                return TrainResult(step=info.step, metrics={}, already_finished=True, message=msg)
            if info.checkpoint is not None:
                start = self.load(info.checkpoint)
                log.info("%s: %s", self.name, info.message)
        end = cfg.total_steps if stop_at_step is None else min(int(stop_at_step), cfg.total_steps)
        if end <= start:
            raise ValueError(
                f"stop_at_step={stop_at_step} is not after the step the run starts from ({start})"
            )
        self.global_step = start
        main = self.is_main_process
        logger = None
        if main:  # only rank 0 writes metrics.jsonl / TensorBoard events
            self.run_dir.mkdir(parents=True, exist_ok=True)
            logger = MetricsLogger(self.run_dir, tensorboard=cfg.tensorboard, resume_step=start)
        last: dict[str, float] = {}
        bar = tqdm(total=cfg.total_steps, initial=start, disable=not (cfg.progress_bar and main),
                   desc=self.name, dynamic_ncols=True)  # fmt: skip
        try:
            for step in range(start, end):
                self.timer.reset()
                metrics = dict(self.train_step(step))
                metrics.update(self.timer.summary())
                metrics["lr"] = self.current_lr()
                self.global_step = step + 1
                if logger is not None:
                    logger.log(self.global_step, metrics)
                last = metrics
                bar.update(1)
                bar.set_postfix(self.progress_postfix(metrics), refresh=False)
                periodic = cfg.save_every > 0 and self.global_step % cfg.save_every == 0
                if periodic or self.global_step == end:
                    self.save_checkpoint()
        finally:
            bar.close()
            if logger is not None:
                logger.close()
        msg = (
            f"{self.name}: trained steps {start + 1}..{end} of {cfg.total_steps} in {self.run_dir}"
        )
        if main:
            log.info(msg)
        return TrainResult(step=self.global_step, metrics=last, message=msg)

    def current_lr(self) -> float:
        """The main model's learning rate now (``config.learning_rate`` before any model)."""
        for t in self.trained.values():
            return float(t.scheduler.get_last_lr()[0])
        return float(self.config.learning_rate)

    def progress_postfix(self, metrics: Mapping[str, float]) -> dict[str, str]:
        """A few metrics shown on the progress bar."""
        keys = ("loss", "reward/mean", "kl", "accuracy")
        return {k: f"{metrics[k]:.4g}" for k in keys if k in metrics}
