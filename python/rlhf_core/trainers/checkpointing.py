"""A trainer's checkpoints: what it saves, how several processes gather it, how it loads.

A checkpoint holds every trained model, its optimizer and scheduler (the trainer's
``trained`` registry), the RNG states, and the trainer's own state (``extra_state``: data
sampler position, the buffer of the last rollout, a KL controller, ...), written by
:func:`rlhf_core.checkpoint.save_checkpoint`. With the same starting models, a run resumed
from it continues exactly as if it had never stopped (``tests/test_resume.py``).

Several processes: every rank takes part in gathering the full (unwrapped, unsharded) states
(a collective under FSDP2), rank 0 writes them with every rank's RNG state, all ranks wait
until it is written; every rank reads the same files to resume, whatever the number of
processes that wrote them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rlhf_core import distributed as D

if TYPE_CHECKING:
    from rlhf_core.trainers.loop import Trainer

__all__ = ["load_trainer_checkpoint", "save_trainer_checkpoint"]


def save_trainer_checkpoint(trainer: Trainer) -> Path:
    """Save ``trainer`` at its ``global_step`` under its ``run_dir`` (keeping the last
    ``config.keep_last``); with several processes every rank must call it. Returns the
    checkpoint folder."""
    from rlhf_core.checkpoint import capture_rng_state, checkpoint_dir, save_checkpoint

    extra = {"trainer": trainer.name, "total_steps": trainer.config.total_steps}
    extra.update(trainer.extra_state())
    models: Mapping[str, Any] = trainer.checkpoint_models()
    optimizers: Mapping[str, Any] = trainer.checkpoint_optimizers()
    dist = trainer.dist
    if dist.is_distributed:
        models, optimizers = _full_states(models, optimizers)
        extra["world_size"] = dist.world_size
        extra["rng_per_rank"] = D.all_gather_object(capture_rng_state(), dist)
        if not dist.is_main_process:
            D.barrier(dist)
            return checkpoint_dir(trainer.run_dir, trainer.global_step)
    try:
        path = save_checkpoint(
            trainer.run_dir,
            trainer.global_step,
            models=models,
            optimizers=optimizers,
            schedulers=trainer.checkpoint_schedulers(),
            extra_state=extra,
            keep_last=trainer.config.keep_last,
        )
    finally:
        if dist.is_distributed:
            D.barrier(dist)
    return Path(path)


def load_trainer_checkpoint(
    trainer: Trainer, checkpoint: str | os.PathLike[str], *, verify: bool = True
) -> int:
    """Restore a checkpoint folder (or a run folder's latest) into ``trainer``: models,
    optimizers, schedulers, RNG states and its ``extra_state``. Returns the step. Its files are
    checked against their SHA-256 first unless ``verify=False`` (already checked). A checkpoint
    written by another trainer is refused."""
    from rlhf_core.checkpoint import load_checkpoint, restore_rng_state

    raw: Mapping[str, Any] = trainer.checkpoint_models()  # wrapped as trained
    models = raw
    optimizers: Mapping[str, Any] = trainer.checkpoint_optimizers()
    dist = trainer.dist
    if dist.is_distributed:
        models = {k: m if D.is_fsdp2(m) else D.unwrap_model(m) for k, m in raw.items()}
        optimizers = {
            k: _FullOptimizerLoader(raw[k], opt) if k in raw else opt
            for k, opt in optimizers.items()
        }
    step, extra = load_checkpoint(
        checkpoint,
        models=models,
        optimizers=optimizers,
        schedulers=trainer.checkpoint_schedulers(),
        verify=verify,
    )
    per_rank = extra.get("rng_per_rank")
    if dist.is_distributed:
        if per_rank is not None and len(per_rank) == dist.world_size:
            restore_rng_state(per_rank[dist.rank])
        elif not dist.is_main_process:
            # written by another number of processes: rank 0 continues the saved stream,
            # the others start fresh ones of their own
            D.seed_everything(trainer.config.seed + int(step), dist)
    saved_by = extra.get("trainer")
    if saved_by is not None and saved_by != trainer.name:
        raise ValueError(
            f"checkpoint {checkpoint} was written by the {saved_by!r} trainer, not "
            f"{trainer.name!r}: use a different run_dir or the matching trainer"
        )
    trainer.load_extra_state(extra)
    trainer.global_step = int(step)
    return int(step)


def _full_states(
    models: Mapping[str, nn.Module], optimizers: Mapping[str, torch.optim.Optimizer]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Unwrapped models (DDP) or gathered full state dicts (FSDP2), and optimizer states in
    the single-process layout, as :func:`rlhf_core.checkpoint.save_checkpoint` takes them.
    An optimizer is matched with the model of the same name."""
    out_models: dict[str, Any] = {}
    for name, m in models.items():
        out_models[name] = D.gather_full_state_dict(m) if D.is_fsdp2(m) else D.unwrap_model(m)
    out_opts: dict[str, Any] = {}
    for name, opt in optimizers.items():
        model = models.get(name)
        state = (
            D.gather_full_optimizer_state_dict(model, opt)
            if model is not None
            else opt.state_dict()
        )
        out_opts[name] = _StateHolder(state)
    return out_models, out_opts


class _StateHolder:
    """A state dict gathered before writing, handed to the checkpoint writer as an object with
    ``state_dict()`` (rank 0 writes what every rank helped gather)."""

    def __init__(self, state: Mapping[str, Any]) -> None:
        self._state = state

    def state_dict(self) -> Mapping[str, Any]:
        return self._state


class _FullOptimizerLoader:
    """``load_state_dict`` of a checkpointed optimizer state (single-process layout) into an
    optimizer of a possibly FSDP2-sharded model."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model = model
        self.optimizer = optimizer

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        D.load_full_optimizer_state_dict(self.model, self.optimizer, state)
