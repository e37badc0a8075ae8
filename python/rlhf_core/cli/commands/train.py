"""The training commands: ``sft``, ``reward``, ``dpo`` on fixed data; ``ppo``, ``grpo``,
``rloo``, ``reinforce-pp``, ``best-of-n`` on samples of the policy. Each loads what its config
names, trains, saves the final model with its model card (``README.md``) into the run folder
and plots the main metrics.

What a run leaves: ``RUN_DIR/model`` (the trained policy, a ``save_pretrained`` folder);
with LoRA (``lora_r > 0``) instead ``RUN_DIR/adapter`` (a PEFT adapter folder, loadable with
``PeftModel.from_pretrained``) and, with ``merge_lora``, ``RUN_DIR/model`` (the adapters merged
into a full model); for ``reward``, ``RUN_DIR/reward_model`` (an
``AutoModelForSequenceClassification`` checkpoint with one label)."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

from rlhf_core.cli.loading import (
    is_builtin,
    load_eval_pairs,
    load_eval_prompt_rows,
    load_model,
    load_pairs,
    load_prompt_rows,
    load_reference,
    load_reward_sources,
    load_reward_tokenizer,
    load_scalar_model,
    load_sft_data,
    load_tokenizer_for,
)
from rlhf_core.cli.outputs import already_finished, card_fields, finish_training, save_model
from rlhf_core.cli.reward_models import (
    add_check_model,
    ensemble_reward_model,
    new_check_model,
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
from rlhf_core.models import (
    RewardEnsemble,
    RewardModel,
    ValueModel,
    merged_copy,
    merged_reward_model,
    peft_model_of,
)
from rlhf_core.models.head_files import HEAD_CONFIG, SCORE_META
from rlhf_core.models.hub import optional_file
from rlhf_core.trainers.best_of_n import BestOfNTrainer
from rlhf_core.trainers.callbacks import GoldFreeEarlyStop
from rlhf_core.trainers.dpo import DPOTrainer
from rlhf_core.trainers.grpo import GRPOTrainer, ReinforcePPTrainer, RLOOTrainer
from rlhf_core.trainers.ppo import PPOTrainer
from rlhf_core.trainers.reward import RewardTrainer
from rlhf_core.trainers.sft import SFTTrainer

__all__ = [
    "trainer_kind",
    "run_sft",
    "run_reward",
    "run_dpo",
    "run_ppo",
    "run_grpo",
    "run_rloo",
    "run_reinforce_pp",
    "run_best_of_n",
]


def _save_policy(
    cfg: Any, trained: Any, model: Any, tok: Any, card: dict[str, Any]
) -> dict[str, pathlib.Path]:
    """Save the trained policy with its model card: ``RUN_DIR/model``, or for a LoRA run
    ``RUN_DIR/adapter`` (and with ``merge_lora`` the merged ``RUN_DIR/model``)."""
    run = pathlib.Path(cfg.run_dir)
    peft = peft_model_of(trained)
    if peft is None:
        return {"model": save_model(model, tok, run / "model", card)}
    saved = {"LoRA adapter (PEFT)": save_model(peft, tok, run / "adapter", card)}
    if cfg.merge_lora:
        saved["merged model"] = save_model(merged_copy(peft), tok, run / "model", card)
    return saved


def _is_scalar_model(name: str, revision: str | None) -> bool:
    """Whether ``name`` (folder or Hub id) holds a reward / value model rather than an LM."""
    if optional_file(name, HEAD_CONFIG, revision) or optional_file(name, SCORE_META, revision):
        return True
    config = optional_file(name, "config.json", revision)
    if config is None:
        return False
    archs = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    return any(str(a).endswith("ForSequenceClassification") for a in archs)


#: the trainer each training command runs
_TRAINERS: dict[str, Any] = {
    "sft": SFTTrainer,
    "reward": RewardTrainer,
    "dpo": DPOTrainer,
    "ppo": PPOTrainer,
    "grpo": GRPOTrainer,
    "rloo": RLOOTrainer,
    "reinforce-pp": ReinforcePPTrainer,
    "best-of-n": BestOfNTrainer,
}


def trainer_kind(command: str) -> str:
    """The name under which the trainer of ``command`` records its runs (``run.json``)."""
    return str(_TRAINERS[command].name)


#: the final outputs a training command leaves in its run folder (any one of them)
_FINAL_OUTPUTS = ("model", "adapter", "reward_model")


def _unsaved_final(name: str, cfg: Any, trainer: Any, res: Any) -> Any:
    """``res`` when the run trained now. For a run that had already finished: None when its
    final model is in the run folder (nothing to do), else the run was stopped after its last
    checkpoint and before its final model was written: that checkpoint is loaded into the
    trainer and a result with the run's last logged metrics is returned, for the caller to
    save the final model as the uninterrupted run would have."""
    if not res.already_finished:
        return res
    run = pathlib.Path(cfg.run_dir)
    if any((run / out).exists() for out in _FINAL_OUTPUTS):
        already_finished(name, res)
        return None
    from rlhf_core.checkpoint import latest_checkpoint
    from rlhf_core.monitor import read_metrics

    ckpt = latest_checkpoint(run)
    trainer.load(ckpt)
    rows = read_metrics(run / "metrics.jsonl") if (run / "metrics.jsonl").is_file() else []
    print(
        f"{name}: the run had finished training but its final model was not saved (stopped "
        f"after its last checkpoint); saving it from {ckpt}"
    )
    return dataclasses.replace(res, already_finished=False, metrics=dict(rows[-1]) if rows else {})


def run_sft(cfg: SFTRunConfig) -> int:
    """``rlhf-core sft``: the final model goes to ``run_dir/model`` (LoRA: ``run_dir/adapter``)."""
    tok = load_tokenizer_for(cfg.model, cfg.tokenizer, cfg=cfg)
    model = load_model(cfg.model, tok, seed=cfg.seed, cfg=cfg)
    trainer = SFTTrainer(cfg, model, tok, load_sft_data(cfg, tok))
    res = trainer.train()
    res = _unsaved_final("sft", cfg, trainer, res)
    if res is None:
        return 0
    card = card_fields("sft", cfg, res, [cfg.dataset])
    saved = _save_policy(cfg, trainer.model, model, tok, card)
    return finish_training("sft", cfg, res, ["loss", "grad_norm", "lr"], saved)


def run_reward(cfg: RewardRunConfig) -> int:
    """``rlhf-core reward``: a fresh head on ``cfg.model``'s body (or a reward model, continued;
    ``--ensemble K``: K heads); the reward model goes to ``run_dir/reward_model`` (a single one
    as an ``AutoModelForSequenceClassification`` checkpoint), a check model
    (``--check_fraction``) to ``run_dir/check_model``. With LoRA the adapters (and the score
    head) go to ``run_dir/adapter`` (a PEFT folder for a sequence-classification base), and
    with ``merge_lora`` the merged reward model to ``run_dir/reward_model``."""
    tok = load_tokenizer_for(cfg.model, cfg.tokenizer, cfg=cfg)
    rm: Any = ensemble_reward_model(
        cfg, lambda: load_model(cfg.model, tok, seed=cfg.seed, cfg=cfg)
    )
    if rm is None and not is_builtin(cfg.model) and _is_scalar_model(cfg.model, cfg.revision):
        rm = load_scalar_model(RewardModel, cfg.model, "model", cfg)
    elif rm is None:
        policy = load_model(cfg.model, tok, seed=cfg.seed, cfg=cfg)
        rm = RewardModel.from_policy(policy, seed=cfg.seed)
    pairs = load_pairs(cfg.dataset, cfg, tok)
    pairs, check, held = split_for_check(cfg, pairs, load_eval_pairs(cfg, tok))
    checker = new_check_model(cfg, rm) if check is not None else None  # the untrained body
    trainer = RewardTrainer(cfg, rm, tok, pairs, eval_pairs=held)
    res = trainer.train()
    saved: dict[str, pathlib.Path] = {}
    if checker is not None and check is not None:  # in RUN_DIR/check, once RUN_DIR is a run's
        saved["check model"] = train_check_model(cfg, tok, checker, check, held)
    res = _unsaved_final("reward", cfg, trainer, res)
    if res is None:
        return 0
    card = card_fields("reward", cfg, res, [cfg.dataset, cfg.eval_dataset])
    run = pathlib.Path(cfg.run_dir)
    peft = peft_model_of(trainer.model)
    if isinstance(rm, RewardEnsemble):
        out = run / "reward_model"
        save_model(_WithMembers(rm) if cfg.save_members else rm, tok, out)
        saved = {"reward model": out, **saved}
    elif peft is None:
        saved = {"reward model": save_model(rm, tok, run / "reward_model", card), **saved}
    else:
        saved = {
            "LoRA adapter (PEFT, sequence classification)": save_model(
                peft, tok, run / "adapter", card
            ),
            **saved,
        }
        if cfg.merge_lora:
            merged = merged_reward_model(trainer.model)
            saved["merged reward model"] = save_model(merged, tok, run / "reward_model", card)
    keys = ["loss", "accuracy", "margin", "eval/accuracy", "eval/margin", "grad_norm"]
    return finish_training("reward", cfg, res, keys, saved)


class _WithMembers:
    """An ensemble whose ``save_pretrained`` also writes each member's folder."""

    def __init__(self, ensemble: RewardEnsemble) -> None:
        self.ensemble = ensemble

    def save_pretrained(self, path: str) -> None:
        self.ensemble.save_pretrained(path, members=True)


def run_dpo(cfg: DPORunConfig) -> int:
    """``rlhf-core dpo``: the final model goes to ``run_dir/model`` (LoRA: ``run_dir/adapter``)."""
    tok = load_tokenizer_for(cfg.model, cfg.tokenizer, cfg=cfg)
    policy = load_model(cfg.model, tok, seed=cfg.seed, cfg=cfg)
    pairs = load_pairs(cfg.dataset, cfg, tok)
    held = load_eval_pairs(cfg, tok)
    reference = load_reference(cfg, tok)
    trainer = DPOTrainer(cfg, policy, tok, pairs, reference=reference, eval_pairs=held)
    res = trainer.train()
    res = _unsaved_final("dpo", cfg, trainer, res)
    if res is None:
        return 0
    card = card_fields("dpo", cfg, res, [cfg.dataset, cfg.eval_dataset])
    saved = _save_policy(cfg, trainer.policy, policy, tok, card)
    keys = ["loss", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward"]
    return finish_training("dpo", cfg, res, keys, saved)


#: the metrics the sampling trainers plot (those logged), then every other ``reward/*``
_RL_KEYS = [
    "reward/mean",
    "kl",
    "teacher_kl",
    "response_length/mean",
    "entropy",
    "policy_loss",
    "clip_frac",
    "value_loss",
    "best_of_n/selected_reward",
    "loss",
    "eval/reward/mean",
    "eval/kl",
]


def _run_rl(name: str, cfg: Any, trainer_cls: Any) -> int:
    tok = load_tokenizer_for(cfg.model, cfg.tokenizer, cfg=cfg)
    policy = load_model(cfg.model, tok, seed=cfg.seed, cfg=cfg)
    prompts = load_prompt_rows(cfg, tok)
    sources = add_check_model(cfg, load_reward_sources(cfg), tok)
    kwargs: dict[str, Any] = {
        "reference": load_reference(cfg, tok),
        "eval_dataset": load_eval_prompt_rows(cfg, tok),
    }
    if cfg.reward_model:  # the reward model reads its own tokenizer, the functions none
        rm_tok = load_reward_tokenizer(cfg, tok)
        kwargs["reward_processing_classes"] = [
            rm_tok if isinstance(s, RewardModel) else None for s in sources
        ]
    if getattr(cfg, "value_model", None):
        kwargs["value_model"] = load_scalar_model(ValueModel, cfg.value_model, "value_model", cfg)
    if getattr(cfg, "teacher_model", None):
        kwargs["teacher_model"] = load_model(
            cfg.teacher_model, tok, seed=cfg.seed, field_name="teacher_model", cfg=cfg
        )
    if getattr(cfg, "gold_free_stop", False):
        on = "eval" if cfg.eval_dataset and cfg.eval_steps else "step"
        kwargs["callbacks"] = [GoldFreeEarlyStop(on=on, **cfg.gold_free_rule())]
    trainer = trainer_cls(cfg, policy, tok, prompts, sources, **kwargs)
    res = trainer.train()
    res = _unsaved_final(name, cfg, trainer, res)
    if res is None:
        return 0
    card = card_fields(name, cfg, res, [cfg.dataset, cfg.eval_dataset])
    saved = _save_policy(cfg, trainer.policy, policy, tok, card)
    if res.stopped_early and (pathlib.Path(cfg.run_dir) / "gold_free_best").is_dir():
        saved["model kept by the gold-free stop"] = pathlib.Path(cfg.run_dir) / "gold_free_best"
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
