"""GRPO and PPO with a real vLLM engine (CPU, float32): ``generation_backend="vllm"`` trains a
few steps with a weight sync before every step's generation; after each sync the engine's
logprobs of the sampled tokens track the trainer's (``sampling/sampling_logp_difference/max``
of every step below :data:`TOL`); a missed sync (``sync_every=0``) is caught by the mismatch
metrics; the engine the trainer started is closed at the end of ``train()``.

Every test here lets its trainer start its own engine, never the session's: closing a
colocated engine tears down vLLM's process-wide parallel state, after which another colocated
engine of the same process fails ("pipeline model parallel group is not initialized"). These
tests run after tests/vllm_backend/test_vllm_backend.py (file order), which is done with the
session engine by then.

Run with ``make test-vllm`` (see conftest.py). The measured gaps are printed (``-s``)."""

from __future__ import annotations

import copy
import math

from test_vllm_backend import CAUGHT, TOL  # tests/vllm_backend is on sys.path (rootdir mode)

from rlhf_core.monitor import read_metrics
from rlhf_core.testing.trainers import FAST, assert_all_changed, snapshot
from rlhf_core.trainers import GRPOConfig, GRPOTrainer, PPOConfig, PPOTrainer

MAX_MODEL_LEN = 512  # as the session engine of conftest.py

PROMPTS = ["hello", "12+7=", "the cat sat on", "x"]
GAP = "sampling/sampling_logp_difference/max"


def digits(prompts, completions, **_):
    return [sum(c.isdigit() for c in t) / max(len(t), 1) for t in completions]


def grpo_config(run_dir, **kw) -> GRPOConfig:
    opts = dict(run_dir=str(run_dir), rollout_batch_size=8, num_samples=4, max_new_tokens=16,
                learning_rate=1e-2, total_steps=3, generation_backend="vllm",
                vllm_max_model_length=MAX_MODEL_LEN, **FAST)  # fmt: skip
    opts.update(kw)
    return GRPOConfig(**opts)


def show(name, rows):
    print(f"\n{name}: " + ", ".join(
        f"step {i}: max {r[GAP]:.2e} mean {r['sampling/sampling_logp_difference/mean']:.2e} "
        f"lag {r['weight_sync/lag_steps']:.0f}" for i, r in enumerate(rows)))  # fmt: skip


def test_grpo_trains_with_its_own_engine_synced_every_step(policy0, tok, tmp_path):
    t = GRPOTrainer(grpo_config(tmp_path), copy.deepcopy(policy0), tok, PROMPTS, digits)
    before = snapshot(t.policy)
    t.train()
    assert t.backend is None  # the engine it started is closed
    assert_all_changed(before, t.policy)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    show("grpo, sync every step", rows)
    assert len(rows) == 3
    assert "time/engine_start" in rows[0] and "time/weight_sync" not in rows[0]
    for r in rows:
        assert r["weight_sync/lag_steps"] == 0.0
        assert r[GAP] < TOL, r[GAP]
        assert r["sampling/importance_sampling_ratio/min"] > 0.999
        assert math.isfinite(r["policy_loss"])
    assert all("time/weight_sync" in r for r in rows[1:])
    # the buffer holds the engine's logprobs beside the trainer's
    assert "rollout_logprobs" in t.buffer.token_fields


def test_ppo_trains_with_the_engine_synced_every_step(policy0, tok, tmp_path):
    cfg = PPOConfig(run_dir=str(tmp_path), rollout_batch_size=8, max_new_tokens=16,
                    ppo_epochs=2, minibatch_size=4, learning_rate=1e-2, total_steps=3,
                    value_init="policy", generation_backend="vllm",
                    vllm_max_model_length=MAX_MODEL_LEN, **FAST)  # fmt: skip
    t = PPOTrainer(cfg, copy.deepcopy(policy0), tok, PROMPTS, digits)
    before = snapshot(t.policy)
    t.train()
    assert t.backend is None
    assert_all_changed(before, t.policy)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    show("ppo, sync every step", rows)
    assert all(r["weight_sync/lag_steps"] == 0.0 and r[GAP] < TOL for r in rows)
    assert all("time/weight_sync" in r and "kl" in r for r in rows[1:])


def test_a_missed_sync_is_caught_by_the_mismatch_metrics(policy0, tok, tmp_path):
    cfg = grpo_config(tmp_path, sync_every=0, total_steps=4)
    t = GRPOTrainer(cfg, copy.deepcopy(policy0), tok, PROMPTS, digits)
    t.train()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    show("grpo, never synced after the first step", rows)
    assert [r["weight_sync/lag_steps"] for r in rows] == [0.0, 1.0, 2.0, 3.0]
    assert rows[0][GAP] < TOL
    assert rows[-1][GAP] > CAUGHT, rows[-1][GAP]
    assert rows[-1]["rollout_corr/k3_kl"] > 1e3 * rows[0]["rollout_corr/k3_kl"]
