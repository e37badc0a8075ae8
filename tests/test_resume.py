"""Resume exactness: 6 steps straight == 3 steps, a new trainer resumed from the checkpoint,
3 more steps: identical metrics (timings aside) and bit-identical weights on CPU. Also: a
finished run says so; resume=false refuses a folder that holds checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rlhf_core.checkpoint import CheckpointError
from rlhf_core.models import RewardModel
from rlhf_core.monitor import read_metrics
from rlhf_core.testing.trainers import (
    FAST,
    count_pairs,
    params_equal,
    policy,
    strip_times,
    tokenizer,
)
from rlhf_core.trainers import (
    BestOfNConfig,
    BestOfNTrainer,
    DPOConfig,
    DPOTrainer,
    GRPOConfig,
    GRPOTrainer,
    PPOConfig,
    PPOTrainer,
    RewardConfig,
    RewardTrainer,
    SFTConfig,
    SFTTrainer,
)


def digit_reward(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
    return [sum(c.isdigit() for c in t) / max(len(t), 1) for t in completions]


PROMPTS = ["Q:", "A:", "x=", "y="]


def make_sft(run: Path, **kw: Any) -> SFTTrainer:
    cfg = SFTConfig(run_dir=str(run), learning_rate=1e-3, batch_size=3, **FAST, **kw)
    return SFTTrainer(cfg, policy(), tokenizer(), [("1+1=", "2"), ("2+2=", "4"), "hello"] * 3)


def make_reward(run: Path, **kw: Any) -> RewardTrainer:
    cfg = RewardConfig(
        run_dir=str(run), learning_rate=1e-3, batch_size=4, eval_every=2, **FAST, **kw
    )
    return RewardTrainer(cfg, RewardModel.from_policy(policy()), tokenizer(), count_pairs(30))


def make_dpo(run: Path, **kw: Any) -> DPOTrainer:
    cfg = DPOConfig(run_dir=str(run), learning_rate=1e-3, batch_size=4, **FAST, **kw)
    return DPOTrainer(cfg, policy(), tokenizer(), count_pairs(10))


def make_bon(run: Path, **kw: Any) -> BestOfNTrainer:
    cfg = BestOfNConfig(
        run_dir=str(run),
        learning_rate=1e-3,
        rollout_batch_size=8,
        num_samples=4,
        max_new_tokens=6,
        **FAST,
        **kw,
    )
    return BestOfNTrainer(cfg, policy(), tokenizer(), PROMPTS, digit_reward)


def make_grpo(run: Path, **kw: Any) -> GRPOTrainer:
    cfg = GRPOConfig(
        run_dir=str(run),
        learning_rate=1e-3,
        rollout_batch_size=8,
        num_samples=4,
        max_new_tokens=6,
        ppo_epochs=2,
        minibatch_size=4,
        kl_coef=0.05,
        **FAST,
        **kw,
    )
    return GRPOTrainer(cfg, policy(), tokenizer(), PROMPTS, digit_reward)


def make_ppo(run: Path, **kw: Any) -> PPOTrainer:
    cfg = PPOConfig(
        run_dir=str(run),
        learning_rate=1e-3,
        rollout_batch_size=4,
        max_new_tokens=6,
        ppo_epochs=2,
        minibatch_size=2,
        kl_target=1.0,
        kl_horizon=100,
        **FAST,
        **kw,
    )
    rm = RewardModel.from_policy(policy(1))
    return PPOTrainer(cfg, policy(), tokenizer(), PROMPTS, [rm, digit_reward])


FACTORIES: dict[str, Callable[..., Any]] = {
    "sft": make_sft,
    "reward": make_reward,
    "dpo": make_dpo,
    "best_of_n": make_bon,
    "grpo": make_grpo,
    "ppo": make_ppo,
}
try:
    import peft  # noqa: F401
except ImportError:  # pragma: no cover - peft is in the dev extra
    pass
else:
    FACTORIES["grpo_lora"] = lambda run, **kw: make_grpo(run, lora_r=4, lora_alpha=8.0, **kw)


def _models(t: Any) -> dict[str, Any]:
    return t.checkpoint_models()


@pytest.mark.parametrize("name", list(FACTORIES))
def test_resume_continues_exactly(tmp_path: Path, name: str) -> None:
    make = FACTORIES[name]
    straight = make(tmp_path / "straight", total_steps=6)
    straight.train()

    run = tmp_path / "resumed"
    first = make(run, total_steps=6, save_every=3)
    first.train(stop_at_step=3)  # as if the job were killed right after the checkpoint
    del first
    second = make(run, total_steps=6, save_every=3)
    res = second.train()
    assert res.step == 6 and not res.already_finished

    a = strip_times(read_metrics(tmp_path / "straight"))
    b = strip_times(read_metrics(run))
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert a == b
    for key, model in _models(straight).items():
        params_equal(model, _models(second)[key])
    for key, opt in straight.checkpoint_optimizers().items():
        sa = opt.state_dict()["state"]
        sb = second.checkpoint_optimizers()[key].state_dict()["state"]
        for i in sa:
            for k in ("exp_avg", "exp_avg_sq"):
                assert sa[i][k].equal(sb[i][k])


def test_finished_run_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_sft(tmp_path, total_steps=2).train()
    with caplog.at_level("WARNING"):
        res = make_sft(tmp_path, total_steps=2).train()
    assert res.already_finished and res.step == 2
    assert "already finished" in res.message
    assert "already finished" in caplog.text
    # raising total_steps continues the same run
    res = make_sft(tmp_path, total_steps=3).train()
    assert res.step == 3 and not res.already_finished
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]


def test_resume_false_refuses_existing_checkpoints(tmp_path: Path) -> None:
    make_sft(tmp_path, total_steps=1).train()
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        make_sft(tmp_path, total_steps=2, resume=False).train()


def test_checkpoint_from_another_trainer_is_refused(tmp_path: Path) -> None:
    make_sft(tmp_path, total_steps=1).train()
    with pytest.raises(ValueError, match="written by the 'sft' trainer"):
        make_dpo(tmp_path, total_steps=2).train()
