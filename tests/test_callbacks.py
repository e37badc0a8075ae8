"""Callbacks: the hooks fire in the documented order with the run's state; a callback stops
training cleanly (checkpoint, reason in the result) and the run resumes from there as if it
had never stopped; the NaN tripwire is a default callback that can be replaced or removed;
callback state is checkpointed; the over-optimisation early stop and the instability
warnings work as callbacks."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from rlhf_core.checkpoint.state_files import load_state
from rlhf_core.monitor import NonFiniteError, read_metrics
from rlhf_core.testing.trainers import (
    FAST,
    count_pairs,
    params_equal,
    policy,
    strip_times,
    tokenizer,
)
from rlhf_core.trainers import GRPOConfig, GRPOTrainer, RewardConfig, RewardTrainer
from rlhf_core.trainers.callbacks import (
    CallbackList,
    InstabilityWarnings,
    NonFiniteGuard,
    OveroptimizationEarlyStop,
    TrainerCallback,
    TrainerControl,
    TrainerState,
)

PROMPTS = ["Q:", "A:", "x=", "y="]


def digit_reward(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
    return [sum(c.isdigit() for c in t) / max(len(t), 1) for t in completions]


def make_grpo(run: Path, callbacks: Any = None, **kw: Any) -> GRPOTrainer:
    kw.setdefault("total_steps", 4)
    cfg = GRPOConfig(run_dir=str(run), learning_rate=1e-3, rollout_batch_size=8, num_samples=4,
                     max_new_tokens=5, **FAST, **kw)  # fmt: skip
    return GRPOTrainer(cfg, policy(), tokenizer(), PROMPTS, digit_reward, callbacks=callbacks)


class Recorder(TrainerCallback):
    """Every hook call as (event, state.step)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.logged: list[dict[str, float]] = []
        self.evaluated: list[dict[str, float]] = []
        self.saved: list[Path] = []

    def on_train_begin(self, state: TrainerState, control: TrainerControl) -> None:
        self.events.append(("train_begin", state.step))

    def on_pre_update(self, state, control, metrics, batch) -> None:  # type: ignore[no-untyped-def]
        self.events.append(("pre_update", state.step))

    def on_evaluate(self, state, control, metrics) -> None:  # type: ignore[no-untyped-def]
        self.events.append(("evaluate", state.step))
        self.evaluated.append(dict(metrics))

    def on_step_end(self, state: TrainerState, control: TrainerControl) -> None:
        self.events.append(("step_end", state.step))

    def on_log(self, state, control, logs) -> None:  # type: ignore[no-untyped-def]
        self.events.append(("log", state.step))
        self.logged.append(dict(logs))

    def on_save(self, state, control, checkpoint) -> None:  # type: ignore[no-untyped-def]
        self.events.append(("save", state.step))
        self.saved.append(checkpoint)

    def on_train_end(self, state: TrainerState, control: TrainerControl) -> None:
        self.events.append(("train_end", state.step))


def test_hooks_fire_in_order_with_the_state(tmp_path: Path) -> None:
    rec = Recorder()
    cfg = RewardConfig(run_dir=str(tmp_path), learning_rate=1e-3, batch_size=4, total_steps=3,
                       eval_every=2, logging_steps=2, save_every=2, **FAST)  # fmt: skip
    trainer = RewardTrainer(cfg, _rm(), tokenizer(), count_pairs(20), callbacks=[rec])
    res = trainer.train()
    assert res.step == 3 and not res.stopped_early and res.stop_reason == ""
    assert rec.events == [
        ("train_begin", 0),
        ("pre_update", 0), ("step_end", 1),
        ("pre_update", 1), ("evaluate", 2), ("step_end", 2), ("log", 2), ("save", 2),
        ("pre_update", 2), ("evaluate", 3), ("step_end", 3), ("log", 3), ("save", 3),
        ("train_end", 3),
    ]  # fmt: skip
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3]  # metrics.jsonl: every step
    assert rec.logged[0] == {k: v for k, v in rows[1].items() if k not in ("step", "wall_time")}
    assert set(rec.evaluated[1]) == {"eval/accuracy", "eval/margin", "eval/loss"}
    assert rec.evaluated[1]["eval/accuracy"] == rows[2]["eval/accuracy"]
    assert [p.name for p in rec.saved] == ["step_000002", "step_000003"]


def _rm() -> Any:
    from rlhf_core.models import RewardModel

    return RewardModel.from_policy(policy())


class StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state: TrainerState, control: TrainerControl) -> None:
        if state.step == self.step:
            control.stop(f"enough at {state.step}")
            control.stop("a later reason does not replace the first")


def test_a_stop_saves_a_checkpoint_and_the_run_resumes_exactly(tmp_path: Path) -> None:
    straight = make_grpo(tmp_path / "straight")
    straight.train()

    rec = Recorder()
    stopped = make_grpo(tmp_path / "run", callbacks=[StopAt(2), rec])
    res = stopped.train()
    assert res.stopped_early and res.step == 2 and res.stop_reason == "enough at 2"
    assert "stopped early at step 2 of 4 (enough at 2)" in res.message
    assert rec.events[-3:] == [("log", 2), ("save", 2), ("train_end", 2)]  # a stop is logged
    assert (tmp_path / "run" / "checkpoints" / "step_000002").is_dir()
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2]

    resumed = make_grpo(tmp_path / "run")
    assert resumed.train().step == 4
    assert strip_times(read_metrics(tmp_path / "run")) == strip_times(
        read_metrics(tmp_path / "straight")
    )
    params_equal(resumed.policy, straight.policy)


def test_nonfinite_guard_is_a_default_that_can_be_replaced_or_removed(tmp_path: Path) -> None:
    def poison(t: GRPOTrainer) -> None:
        original = t.loss
        t.loss = lambda micro, n_tok, n_seq: (  # type: ignore[method-assign]
            lambda out: type(out)(out.loss * float("nan"), out.metrics)
        )(original(micro, n_tok, n_seq))

    default = make_grpo(tmp_path / "a", total_steps=1)
    assert [type(c) for c in default.callbacks] == [NonFiniteGuard]
    poison(default)
    with pytest.raises(NonFiniteError, match="grad_norm"):
        default.train()

    class CountingGuard(NonFiniteGuard):
        calls = 0

        def on_pre_update(self, state, control, metrics, batch) -> None:  # type: ignore[no-untyped-def]
            CountingGuard.calls += 1
            super().on_pre_update(state, control, metrics, batch)

    replaced = make_grpo(tmp_path / "b", total_steps=1, callbacks=[CountingGuard()])
    assert [type(c) for c in replaced.callbacks] == [CountingGuard]
    poison(replaced)
    with pytest.raises(NonFiniteError):
        replaced.train()
    assert CountingGuard.calls == 1

    removed = make_grpo(tmp_path / "c", total_steps=1)
    assert len(removed.remove_callback(NonFiniteGuard)) == 1 and len(removed.callbacks) == 0
    poison(removed)
    res = removed.train()  # nothing checks: the NaN goes through
    assert math.isnan(res.metrics["grad_norm"])
    assert not torch.isfinite(next(removed.policy.parameters())).all()


class Counter(TrainerCallback):
    """A callback with state: how many steps it has seen."""

    def __init__(self) -> None:
        self.seen = 0

    def on_step_end(self, state: TrainerState, control: TrainerControl) -> None:
        self.seen += 1

    def state_dict(self) -> dict[str, int]:
        return {"seen": self.seen}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seen = state["seen"]


def test_callback_state_is_checkpointed_and_restored(tmp_path: Path) -> None:
    first = make_grpo(tmp_path, callbacks=[Counter(), Counter()], save_every=2)
    first.train(stop_at_step=2)
    extra = load_state(tmp_path / "checkpoints" / "step_000002", "extra_state")
    assert extra["callback:Counter"] == {"seen": 2} and extra["callback:Counter:2"] == {"seen": 2}
    counter = Counter()
    make_grpo(tmp_path, callbacks=[counter], save_every=2).train()
    assert counter.seen == 4  # 2 restored + 2 more


def test_callback_list_refuses_what_is_not_a_callback() -> None:
    with pytest.raises(TypeError, match=r"pass an instance \(Counter\(\)\)"):
        CallbackList([Counter])
    with pytest.raises(TypeError, match="has none of the hooks"):
        CallbackList([object()])
    a, b = Counter(), Counter()
    cl = CallbackList([a, b, NonFiniteGuard()])
    assert cl.remove(a) == [a] and cl.remove(Counter) == [b] and len(cl) == 1


# ---- the monitor's detectors as callbacks ---------------------------------------------------


def constant_gold(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
    """A gold reward that never improves: the early stop fires after `patience` evaluations."""
    return [0.5] * len(completions)


def test_overoptimization_early_stop_from_periodic_evaluations(tmp_path: Path) -> None:
    cfg = GRPOConfig(run_dir=str(tmp_path), learning_rate=1e-3, rollout_batch_size=8,
                     num_samples=4, max_new_tokens=5, total_steps=6, eval_steps=1,
                     num_generations_eval=2, reward_weights=[1.0, 0.0], **FAST)  # fmt: skip
    stop = OveroptimizationEarlyStop("eval/reward/constant_gold", patience=2)
    trainer = GRPOTrainer(cfg, policy(), tokenizer(), PROMPTS, [digit_reward, constant_gold],
                          eval_dataset=["1+", "2+"], callbacks=[stop])  # fmt: skip
    res = trainer.train()
    # evaluation 1 sets the best gold (step 1); 2 and 3 bring nothing: stop at step 3
    assert res.stopped_early and res.step == 3
    assert "eval/reward/constant_gold did not improve" in res.stop_reason
    assert "best 0.5 at step 1" in res.stop_reason
    assert [p.step for p in stop.monitor.history] == [1, 2, 3]
    extra = load_state(tmp_path / "checkpoints" / "step_000003", "extra_state")
    assert extra["callback:OveroptimizationEarlyStop"]["stop_step"] == 3

    missing = OveroptimizationEarlyStop("eval/reward/nothing")
    state = TrainerState(total_steps=1, run_dir=tmp_path, trainer=None, step=1)
    with pytest.raises(KeyError, match="has no metric 'eval/reward/nothing'"):
        missing.on_evaluate(state, TrainerControl(), {"eval/reward/mean": 1.0})


def test_instability_warnings(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cb = InstabilityWarnings(min_history=2, stop=True)
    control = TrainerControl()
    state = TrainerState(total_steps=10, run_dir=tmp_path, trainer=None)
    with caplog.at_level(logging.WARNING, logger="rlhf_core.trainers"):
        for step, kl in enumerate([0.01, 0.012, 0.011, 0.5], start=1):
            state.step, state.metrics = step, {"kl": kl, "entropy": 1.0}
            cb.on_step_end(state, control)
    assert [s for s, _ in cb.warnings] == [4] and "KL spike" in cb.warnings[0][1]
    assert control.should_stop and "KL spike" in control.reason
    assert any("KL spike" in r.getMessage() for r in caplog.records)
    restored = InstabilityWarnings(min_history=2)
    restored.load_state_dict(cb.state_dict())
    assert restored.detector.state_dict() == cb.detector.state_dict()
