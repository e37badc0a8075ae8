"""Periodic evaluation of the sampling trainers (eval_dataset, eval_steps,
num_generations_eval) and logged samples (log_completions, samples.jsonl, the console table).

Evaluation: logged under eval/ at every eval_steps and at the end; the same prompts and seeds
every time (two evaluations of the same weights are equal); it does not change training (a
run with evaluations trains bit for bit as one without); KL is 0 while the policy is the
reference; accuracy equals the exact-match reward's mean; every eval prompt gets
num_generations_eval completions, chunk by chunk.

Samples: one row per completion of each logged step, with each reward source's score, the
total reward and the advantage, checked against float64 references (the reward functions
themselves, GRPO's group formula, PPO's per-token advantages in the buffer)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rlhf_core.monitor import read_metrics, read_samples
from rlhf_core.monitor.samples import format_samples
from rlhf_core.rewards import exact_match_reward
from rlhf_core.testing.trainers import (
    FAST,
    params_equal,
    policy,
    strip_times,
    tokenizer,
)
from rlhf_core.trainers import (
    BestOfNConfig,
    BestOfNTrainer,
    GRPOConfig,
    GRPOTrainer,
    PPOConfig,
    PPOTrainer,
)

PROMPTS = ["Q:", "A:", "x=", "y="]
EVAL = [{"prompt": p, "answer": a} for p, a in [("1+", "1"), ("2+", "2"), ("3+", "3"),
                                                  ("4+", "4"), ("5+", "5")]]  # fmt: skip


def digit_reward(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
    return [sum(c.isdigit() for c in t) / max(len(t), 1) for t in completions]


def grpo(run: Path, prompts: Any = PROMPTS, rewards: Any = digit_reward, **kw: Any) -> GRPOTrainer:
    eval_dataset = kw.pop("eval_dataset", None)
    kw.setdefault("total_steps", 3)
    cfg = GRPOConfig(run_dir=str(run), learning_rate=1e-3, rollout_batch_size=4, num_samples=2,
                     max_new_tokens=5, **FAST, **kw)  # fmt: skip
    return GRPOTrainer(cfg, policy(), tokenizer(), prompts, rewards, eval_dataset=eval_dataset)


def evals(run: Path) -> dict[int, dict[str, float]]:
    return {
        r["step"]: {k: v for k, v in r.items() if k.startswith("eval/")}
        for r in read_metrics(run)
        if any(k.startswith("eval/") for k in r)
    }


# ---- periodic evaluation --------------------------------------------------------------------


def test_evaluation_at_eval_steps_and_at_the_end(tmp_path: Path) -> None:
    t = grpo(tmp_path, total_steps=5, eval_steps=2, eval_dataset=EVAL[:4])
    t.train()
    got = evals(tmp_path)
    assert sorted(got) == [2, 4, 5]
    for row in got.values():
        assert {"eval/reward/mean", "eval/reward/digit_reward", "eval/kl",
                "eval/response_length/mean", "eval/accuracy"} <= set(row)  # fmt: skip
    assert "time/evaluation" in read_metrics(tmp_path)[1]
    # without eval_steps: only the final evaluation
    grpo(tmp_path / "end", total_steps=2, eval_dataset=EVAL[:2]).train()
    assert sorted(evals(tmp_path / "end")) == [2]


def test_evaluation_is_fixed_and_leaves_training_alone(tmp_path: Path) -> None:
    plain = grpo(tmp_path / "plain")
    plain.train()
    with_eval = grpo(tmp_path / "eval", eval_steps=1, eval_dataset=EVAL, num_generations_eval=3)
    first = with_eval.evaluate()
    assert first == with_eval.evaluate()  # the same prompts, seeds and weights: the same numbers
    assert first["kl"] == 0.0 and first["kl/k3_token_mean"] == 0.0  # policy == reference
    with_eval.train()
    assert sorted(evals(tmp_path / "eval")) == [1, 2, 3]

    def training(run: Path) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if not k.startswith("eval/")}
                for r in strip_times(read_metrics(run))]  # fmt: skip

    assert training(tmp_path / "eval") == training(tmp_path / "plain")
    params_equal(with_eval.policy, plain.policy)


def test_every_eval_prompt_gets_its_completions_and_accuracy_is_exact_match(
    tmp_path: Path,
) -> None:
    seen: list[int] = []

    def counting_exact_match(prompts: list[str], completions: list[str], answer: list[str]) -> Any:
        seen.append(len(completions))
        return exact_match_reward(prompts, completions, answer)

    train = [{"prompt": p, "answer": "1"} for p in PROMPTS]
    t = grpo(tmp_path, prompts=train, rewards=[digit_reward, counting_exact_match],
             eval_dataset=EVAL, num_generations_eval=3)  # fmt: skip
    seen.clear()
    metrics = t.evaluate()
    # 5 prompts in chunks of rollout_batch_size / num_samples = 2 prompts, 3 completions each
    assert seen == [6, 6, 3]
    assert metrics["accuracy"] == metrics["reward/counting_exact_match"]
    assert 0.0 <= metrics["accuracy"] <= 1.0


def test_eval_dataset_from_a_file_and_bad_settings(tmp_path: Path) -> None:
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in EVAL[:2]))
    t = grpo(tmp_path / "run", eval_dataset=str(path))
    assert t.eval_collector is not None and t.eval_collector.prompt_texts == ["1+", "2+"]
    assert "accuracy" in t.evaluate()
    with pytest.raises(ValueError, match="eval_steps=2 but there are no eval prompts"):
        grpo(tmp_path / "bad", eval_steps=2)
    with pytest.raises(ValueError, match="num_generations_eval=0"):
        GRPOConfig(num_generations_eval=0)
    with pytest.raises(ValueError, match="eval_steps=-1"):
        GRPOConfig(eval_steps=-1)


def test_a_resumed_run_evaluates_and_logs_samples_as_an_uninterrupted_one(
    tmp_path: Path,
) -> None:
    kw: dict[str, Any] = dict(total_steps=4, eval_steps=2, eval_dataset=EVAL[:2],
                              log_completions=True, num_completions_to_print=0)  # fmt: skip
    grpo(tmp_path / "straight", **kw).train()
    grpo(tmp_path / "run", save_every=2, **kw).train(stop_at_step=2)
    with open(tmp_path / "run" / "samples.jsonl", "a") as fh:  # written after the checkpoint
        fh.write('{"step": 3, "completion": "lost"}\n')
    grpo(tmp_path / "run", save_every=2, **kw).train()
    assert strip_times(read_metrics(tmp_path / "run")) == strip_times(
        read_metrics(tmp_path / "straight")
    )
    assert read_samples(tmp_path / "run") == read_samples(tmp_path / "straight")


# ---- logged samples -------------------------------------------------------------------------


def test_grpo_samples_hold_rewards_and_group_advantages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def length_reward(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        return [len(c) / 5 for c in completions]

    t = grpo(tmp_path, rewards=[digit_reward, length_reward], reward_weights=[1.0, 0.5],
             total_steps=3, logging_steps=2, log_completions=True,
             num_completions_to_print=1)  # fmt: skip
    t.train()
    rows = read_samples(tmp_path)
    assert [r["step"] for r in rows] == [2] * 4 + [3] * 4  # logging steps 2 and 3 (the last)
    assert set(rows[0]) == {"step", "group", "prompt", "completion", "rewards", "reward",
                            "advantage", "length", "truncated"}  # fmt: skip
    metrics = {r["step"]: r for r in read_metrics(tmp_path)}
    for step in (2, 3):
        part = [r for r in rows if r["step"] == step]
        texts = [r["completion"] for r in part]
        digits = np.asarray(digit_reward([], texts), dtype=np.float64)
        lengths = np.asarray(length_reward([], texts), dtype=np.float64)
        assert [r["rewards"]["digit_reward"] for r in part] == pytest.approx(digits)
        assert [r["rewards"]["length_reward"] for r in part] == pytest.approx(lengths)
        total = digits + 0.5 * lengths
        assert [r["reward"] for r in part] == pytest.approx(total)
        assert metrics[step]["reward/mean"] == pytest.approx(total.mean())
        assert {r["prompt"] for r in part} <= set(PROMPTS)
        # GRPO: (r - group mean) / (group std (ddof 1) + std_eps), in float64
        groups = np.asarray([r["group"] for r in part])
        want = np.empty(len(part))
        for g in np.unique(groups):
            s = total[groups == g]
            want[groups == g] = (s - s.mean()) / (s.std(ddof=1) + t.config.std_eps)
        assert [r["advantage"] for r in part] == pytest.approx(want, rel=1e-5, abs=1e-5)
    out = capsys.readouterr().out  # one completion per logged step (num_completions_to_print)
    assert "completions at step 2" in out and "completions at step 3" in out
    step2 = out.split("completions at step 3")[0]
    assert [line.split("│")[1].strip() for line in step2.splitlines()
            if line.startswith("│")] == [rows[0]["prompt"]]  # fmt: skip


def test_ppo_samples_carry_the_mean_token_advantage(tmp_path: Path) -> None:
    cfg = PPOConfig(run_dir=str(tmp_path), learning_rate=1e-3, rollout_batch_size=4,
                    max_new_tokens=5, total_steps=2, value_init="policy", log_completions=True,
                    num_completions_to_print=0, **FAST)  # fmt: skip
    t = PPOTrainer(cfg, policy(), tokenizer(), PROMPTS, digit_reward)
    t.train()
    last = [r for r in read_samples(tmp_path) if r["step"] == 2]
    adv = t.buffer.field("advantages").astype(np.float64)  # per token, the last step's
    offsets = t.buffer.offsets()
    want = [adv[a:b].mean() for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    assert [r["advantage"] for r in last] == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert [r["length"] for r in last] == list(np.diff(offsets))


def test_best_of_n_samples_mark_the_winner_of_each_group(tmp_path: Path) -> None:
    cfg = BestOfNConfig(run_dir=str(tmp_path), learning_rate=1e-3, rollout_batch_size=8,
                        num_samples=4, max_new_tokens=5, total_steps=1, log_completions=True,
                        num_completions_to_print=0, **FAST)  # fmt: skip
    BestOfNTrainer(cfg, policy(), tokenizer(), PROMPTS, digit_reward).train()
    rows = read_samples(tmp_path)
    assert len(rows) == 8 and all(r["advantage"] is None for r in rows)
    for g in {r["group"] for r in rows}:
        group = [r for r in rows if r["group"] == g]
        (winner,) = [r for r in group if r["selected"]]
        assert winner["reward"] == max(r["reward"] for r in group)
        assert winner is next(r for r in group if r["reward"] == winner["reward"])  # ties: first


def test_console_table_without_rich(monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    from rlhf_core.monitor import print_samples

    rows = [{"prompt": "Q:", "completion": "[bold]7", "rewards": {"d": 1.0}, "reward": 1.0,
             "advantage": None, "selected": True}]  # fmt: skip
    print_samples(4, rows)
    rich_out = capsys.readouterr().out
    assert "completions at step 4" in rich_out and "[bold]7" in rich_out  # no markup parsing
    monkeypatch.setitem(sys.modules, "rich", None)
    monkeypatch.setitem(sys.modules, "rich.console", None)
    print_samples(4, rows)
    plain = capsys.readouterr().out
    assert plain.strip() == format_samples(4, rows)
    assert "completion='[bold]7'" in plain and "reward/d=1" in plain and "selected=True" in plain
