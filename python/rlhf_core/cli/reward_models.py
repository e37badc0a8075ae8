"""Reward ensembles and check models on the command line.

- ``rlhf-core reward --ensemble K`` trains K reward heads on one body
  (:class:`~rlhf_core.models.RewardEnsemble`); ``--check_fraction F`` first holds out a share F
  of the training pairs and trains an independent check model on it (saved to
  ``RUN_DIR/check_model``, its trainer's files in ``RUN_DIR/check/``).
- The RL commands take an ensemble folder as ``--reward_model`` (reduced by
  ``--ensemble_reduce``) and a ``--check_model`` folder, scored on every rollout with weight 0
  (logged as ``reward/check_model``, never optimised).
"""

from __future__ import annotations

import copy
import dataclasses
import pathlib
from typing import Any

from rlhf_core.cli.outputs import save_model
from rlhf_core.cli.parser import CLIError
from rlhf_core.models import RewardEnsemble, RewardModel, is_reward_ensemble, load_reward_model
from rlhf_core.rewards import RewardModelScorer
from rlhf_core.trainers.pairwise import split_held_out
from rlhf_core.trainers.reward import RewardTrainer, split_check_pairs

__all__ = [
    "CHECK_MODEL_NAME",
    "ensemble_reward_model",
    "load_ensemble",
    "add_check_model",
    "split_for_check",
    "new_check_model",
    "train_check_model",
]

#: What logs call a check model's reward (``reward/check_model``).
CHECK_MODEL_NAME = "check_model"


def load_ensemble(path: str, field_name: str) -> RewardEnsemble:
    """The :class:`~rlhf_core.models.RewardEnsemble` saved in the folder ``path``."""
    try:
        return RewardEnsemble.from_pretrained(path)
    except (ValueError, OSError) as exc:
        raise CLIError(f"{field_name}={path!r}: {exc}") from exc


def ensemble_reward_model(cfg: Any, policy: Any) -> RewardEnsemble | None:
    """The ensemble ``rlhf-core reward`` trains: ``cfg.model`` itself when it is an ensemble
    folder (its K must match ``--ensemble`` unless that is left at 1), K fresh heads on the
    policy's body for ``--ensemble K`` > 1, else None (a single reward model)."""
    if not str(cfg.model).startswith("builtin") and is_reward_ensemble(cfg.model):
        ens = load_ensemble(cfg.model, "model")
        if cfg.ensemble not in (1, ens.num_members):
            raise CLIError(
                f"ensemble={cfg.ensemble}: model={cfg.model!r} is an ensemble of "
                f"{ens.num_members} members; leave --ensemble out to continue it"
            )
        return ens
    if cfg.ensemble > 1:
        return RewardEnsemble.from_policy(policy(), cfg.ensemble, seed=cfg.seed)
    return None


def split_for_check(
    cfg: Any, pairs: list[Any], held: list[Any] | None
) -> tuple[list[Any], list[Any] | None, list[Any] | None]:
    """``(proxy pairs, check pairs, held-out pairs)``. With ``check_fraction`` > 0 the
    held-out pairs are set apart first (``eval_dataset``, else ``eval_fraction`` of the data)
    so that the proxy and the check model are measured on the same pairs, then the rest is
    split by :func:`~rlhf_core.trainers.reward.split_check_pairs`. Without a check model the
    pairs pass through (the trainer makes its own held-out split)."""
    if not cfg.check_fraction:
        return pairs, None, held
    if held is None:
        if cfg.eval_fraction > 0:
            tr, ev = split_held_out(len(pairs), cfg.eval_fraction, cfg.seed)
            held = [pairs[i] for i in ev]
            pairs = [pairs[i] for i in tr]
        else:
            held = []
    if len(pairs) < 2:
        raise CLIError(
            f"check_fraction={cfg.check_fraction}: only {len(pairs)} training pair(s) left to "
            "split between the proxy and the check model"
        )
    proxy, check = split_check_pairs(pairs, cfg.check_fraction, cfg.seed)
    return proxy, check, held


def new_check_model(cfg: Any, body_source: Any) -> RewardModel:
    """The untrained check model: a fresh head on a copy of ``body_source``'s body (taken
    before the proxy trains it)."""
    model = RewardModel(copy.deepcopy(body_source.body), seed=cfg.seed + 1)
    model.body.requires_grad_(True)
    return model


def train_check_model(
    cfg: Any, tokenizer: Any, model: RewardModel, pairs: list[Any], held: list[Any] | None
) -> pathlib.Path:
    """Train the check model ``model`` (:func:`new_check_model`) on ``pairs`` in
    ``RUN_DIR/check`` with the proxy's settings, after the proxy's trainer has made
    ``RUN_DIR`` its run folder, and save it to ``RUN_DIR/check_model``. A finished check run
    is not trained again."""
    from rlhf_core.checkpoint import latest_checkpoint

    run = pathlib.Path(cfg.run_dir)
    out = run / CHECK_MODEL_NAME
    check_cfg = dataclasses.replace(
        cfg, run_dir=str(run / "check"), ensemble=1, check_fraction=0.0
    )
    trainer = RewardTrainer(check_cfg, model, tokenizer, pairs, eval_pairs=held)
    res = trainer.train()
    if res.already_finished:
        if out.is_dir():
            return out
        found = latest_checkpoint(run / "check")
        if found is not None:
            trainer.load(found)
    acc = res.metrics.get("eval/accuracy")
    shown = f", held-out accuracy {acc:.4g}" if acc is not None else ""
    print(f"reward: check model trained on {len(pairs)} pairs{shown}")
    return save_model(model, tokenizer, out)


def add_check_model(cfg: Any, sources: list[Any], tokenizer: Any) -> list[Any]:
    """``sources`` plus the ``--check_model`` (when given) as a weight-0 source named
    :data:`CHECK_MODEL_NAME`; ``cfg.reward_weights`` gets the 0 appended (the config was
    checked against the other sources already)."""
    if not cfg.check_model:
        return sources
    path = pathlib.Path(cfg.check_model)
    if not path.is_dir():
        raise CLIError(f"check_model={cfg.check_model!r}: no such folder")
    try:
        model = load_reward_model(path)
    except (ValueError, OSError) as exc:
        raise CLIError(f"check_model={cfg.check_model!r}: {exc}") from exc
    if isinstance(model, RewardEnsemble):
        raise CLIError(
            f"check_model={cfg.check_model!r} is an ensemble; a check model is one reward "
            "model trained on other pairs (rlhf-core reward --check_fraction)"
        )
    weights = list(cfg.reward_weights) if cfg.reward_weights is not None else [1.0] * len(sources)
    cfg.reward_weights = [*weights, 0.0]
    return [*sources, RewardModelScorer(model, tokenizer, name=CHECK_MODEL_NAME)]
