"""The training commands: ``sft``, ``reward``, ``dpo`` on fixed data; ``ppo``, ``grpo``,
``rloo``, ``reinforce-pp``, ``best-of-n`` on samples of the policy. Each loads what its config
names, trains, saves the final model into the run folder and plots the main metrics."""

from __future__ import annotations

import pathlib
from typing import Any

from rlhf_core.cli.loading import (
    is_builtin,
    load_model,
    load_pairs,
    load_prompt_rows,
    load_reference,
    load_reward_sources,
    load_scalar_model,
    load_sft_data,
    load_tokenizer_for,
)
from rlhf_core.cli.outputs import already_finished, finish_training, save_model
from rlhf_core.cli.reward_models import (
    add_check_model,
    ensemble_reward_model,
    split_for_check,
    train_check_model,
)
from rlhf_core.cli.run_configs import (
    BestOfNRunConfig,
    DPORunConfig,
    GRPORunConfig,
    PPORunConfig,
    ReinforcePPRunConfig,
    RewardRunConfig,
    RLOORunConfig,
    SFTRunConfig,
)
from rlhf_core.models import RewardEnsemble, RewardModel, ValueModel
from rlhf_core.trainers.best_of_n import BestOfNTrainer
from rlhf_core.trainers.dpo import DPOTrainer
from rlhf_core.trainers.grpo import GRPOTrainer, ReinforcePPTrainer, RLOOTrainer
from rlhf_core.trainers.ppo import PPOTrainer
from rlhf_core.trainers.reward import RewardTrainer
from rlhf_core.trainers.sft import SFTTrainer

__all__ = [
    "run_sft",
    "run_reward",
    "run_dpo",
    "run_ppo",
    "run_grpo",
    "run_rloo",
    "run_reinforce_pp",
    "run_best_of_n",
]


def run_sft(cfg: SFTRunConfig) -> int:
    """``rlhf-core sft``: the final model goes to ``run_dir/model``."""
    tok = load_tokenizer_for(cfg.model, cfg.tokenizer)
    model = load_model(cfg.model, tok, seed=cfg.seed)
    trainer = SFTTrainer(cfg, model, tok, load_sft_data(cfg, tok))
    res = trainer.train()
    if res.already_finished:
        return already_finished("sft", res)
    saved = {"model": save_model(model, tok, pathlib.Path(cfg.run_dir) / "model")}
    return finish_training("sft", cfg, res, ["loss", "grad_norm", "lr"], saved)


def run_reward(cfg: RewardRunConfig) -> int:
    """``rlhf-core reward``: a fresh head on ``cfg.model``'s body (or a reward model folder,
    continued; ``--ensemble K``: K heads); the reward model goes to ``run_dir/reward_model``,
    a check model (``--check_fraction``) to ``run_dir/check_model``."""
    tok = load_tokenizer_for(cfg.model, cfg.tokenizer)
    rm: Any = ensemble_reward_model(cfg, lambda: load_model(cfg.model, tok, seed=cfg.seed))
    if rm is None and not is_builtin(cfg.model) and (
        pathlib.Path(cfg.model) / "rlhf_core_head.json"
    ).is_file():
        rm = load_scalar_model(RewardModel, cfg.model, "model")
    elif rm is None:
        rm = RewardModel.from_policy(load_model(cfg.model, tok, seed=cfg.seed), seed=cfg.seed)
    pairs = load_pairs(cfg.dataset, cfg, tok)
    held = load_pairs(cfg.eval_dataset, cfg, tok) if cfg.eval_dataset else None
    pairs, check, held = split_for_check(cfg, pairs, held)
    saved: dict[str, pathlib.Path] = {}
    if check is not None:  # before the proxy trains the body it copies
        saved["check model"] = train_check_model(cfg, tok, rm, check, held)
    trainer = RewardTrainer(cfg, rm, tok, pairs, eval_pairs=held)
    res = trainer.train()
    if res.already_finished:
        return already_finished("reward", res)
    out = pathlib.Path(cfg.run_dir) / "reward_model"
    if isinstance(rm, RewardEnsemble) and cfg.save_members:
        save_model(_WithMembers(rm), tok, out)
    else:
        save_model(rm, tok, out)
    saved = {"reward model": out, **saved}
    keys = ["loss", "accuracy", "margin", "eval/accuracy", "eval/margin", "grad_norm"]
    return finish_training("reward", cfg, res, keys, saved)


class _WithMembers:
    """An ensemble whose ``save_pretrained`` also writes each member's folder."""

    def __init__(self, ensemble: RewardEnsemble) -> None:
        self.ensemble = ensemble

    def save_pretrained(self, path: str) -> None:
        self.ensemble.save_pretrained(path, members=True)


def run_dpo(cfg: DPORunConfig) -> int:
    """``rlhf-core dpo``: the final model goes to ``run_dir/model``."""
    tok = load_tokenizer_for(cfg.model, cfg.tokenizer)
    policy = load_model(cfg.model, tok, seed=cfg.seed)
    pairs = load_pairs(cfg.dataset, cfg, tok)
    held = load_pairs(cfg.eval_dataset, cfg, tok) if cfg.eval_dataset else None
    reference = load_reference(cfg, tok)
    trainer = DPOTrainer(cfg, policy, tok, pairs, reference=reference, eval_pairs=held)
    res = trainer.train()
    if res.already_finished:
        return already_finished("dpo", res)
    saved = {"model": save_model(policy, tok, pathlib.Path(cfg.run_dir) / "model")}
    keys = ["loss", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward"]
    return finish_training("dpo", cfg, res, keys, saved)


#: the metrics the sampling trainers plot (those logged), then every other ``reward/*``
_RL_KEYS = [
    "reward/mean",
    "kl",
    "response_length/mean",
    "entropy",
    "policy_loss",
    "clip_frac",
    "value_loss",
    "best_of_n/selected_reward",
    "loss",
]


def _run_rl(name: str, cfg: Any, trainer_cls: Any) -> int:
    tok = load_tokenizer_for(cfg.model, cfg.tokenizer)
    policy = load_model(cfg.model, tok, seed=cfg.seed)
    prompts = load_prompt_rows(cfg, tok)
    sources = add_check_model(cfg, load_reward_sources(cfg), tok)
    kwargs: dict[str, Any] = {"reference": load_reference(cfg, tok)}
    if getattr(cfg, "value_model", None):
        kwargs["value_model"] = load_scalar_model(ValueModel, cfg.value_model, "value_model")
    trainer = trainer_cls(cfg, policy, tok, prompts, sources, **kwargs)
    res = trainer.train()
    if res.already_finished:
        return already_finished(name, res)
    saved = {"model": save_model(policy, tok, pathlib.Path(cfg.run_dir) / "model")}
    keys = list(_RL_KEYS) + [
        k for k in res.metrics if k.startswith("reward/") and k not in _RL_KEYS
    ]
    return finish_training(name, cfg, res, keys, saved)


def run_ppo(cfg: PPORunConfig) -> int:
    """``rlhf-core ppo``: the final policy goes to ``run_dir/model``."""
    return _run_rl("ppo", cfg, PPOTrainer)


def run_grpo(cfg: GRPORunConfig) -> int:
    """``rlhf-core grpo``: the final policy goes to ``run_dir/model``."""
    return _run_rl("grpo", cfg, GRPOTrainer)


def run_rloo(cfg: RLOORunConfig) -> int:
    """``rlhf-core rloo``: the final policy goes to ``run_dir/model``."""
    return _run_rl("rloo", cfg, RLOOTrainer)


def run_reinforce_pp(cfg: ReinforcePPRunConfig) -> int:
    """``rlhf-core reinforce-pp``: the final policy goes to ``run_dir/model``."""
    return _run_rl("reinforce-pp", cfg, ReinforcePPTrainer)


def run_best_of_n(cfg: BestOfNRunConfig) -> int:
    """``rlhf-core best-of-n``: the final policy goes to ``run_dir/model``."""
    return _run_rl("best-of-n", cfg, BestOfNTrainer)
