"""The trainers with an engine that holds its own copy of the weights (the vLLM contract), tested
without vLLM through :class:`rlhf_core.testing.engines.SeparateWeightsBackend`: when the engine
is synced (``sync_every``), the rollout-logprob channel into the buffer, the mismatch metrics
(and a missed sync caught by them), the correction in the loss, the ``kept`` denominator, the
engine's lifecycle; the reference built only when needed; the config checks. The real engine:
``tests/vllm_backend/test_vllm_trainers.py``."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rlhf_core.monitor import read_metrics
from rlhf_core.testing.engines import SeparateWeightsBackend
from rlhf_core.testing.trainers import FAST, assert_all_changed, policy, snapshot, tokenizer
from rlhf_core.trainers import (
    BestOfNConfig,
    BestOfNTrainer,
    GRPOConfig,
    GRPOTrainer,
    PPOConfig,
    PPOTrainer,
)

PROMPTS = ["Q:", "A:", "x=", "y="]


def digits(prompts, completions, **_):
    return [sum(c.isdigit() for c in t) / max(len(t), 1) for t in completions]


def grpo(tmp_path: Path, **kw) -> GRPOTrainer:
    opts = dict(run_dir=str(tmp_path), rollout_batch_size=8, num_samples=4, max_new_tokens=6,
                learning_rate=3e-2, total_steps=3, **FAST)  # fmt: skip
    opts.update(kw)
    return GRPOTrainer(GRPOConfig(**opts), policy(), tokenizer(), PROMPTS, digits)


def rows(tmp_path: Path) -> list[dict]:
    return read_metrics(tmp_path / "metrics.jsonl")


GAP = "sampling/sampling_logp_difference/max"


def test_grpo_syncs_every_step_and_the_engine_tracks_the_trainer(tmp_path):
    t = grpo(tmp_path)
    t.backend = engine = SeparateWeightsBackend(t.policy, t.tokenizer)
    before = snapshot(t.policy)
    t.train()
    assert_all_changed(before, t.policy)
    assert engine.syncs == 3 and engine.calls == 3 and engine.asleep
    assert not engine.closed  # the caller's engine stays open
    got = rows(tmp_path)
    for r in got:
        assert r["weight_sync/lag_steps"] == 0.0
        assert "time/weight_sync" in r
        # HF generate on the same weights vs the trainer's forward: float32 rounding only
        assert r[GAP] < 1e-4, r[GAP]
        assert r["rollout_corr/k3_kl"] < 1e-8
        assert r["sampling/importance_sampling_ratio/min"] > 0.99
        assert math.isfinite(r["policy_loss"])
    # the engine's logprobs went into the buffer beside the trainer's
    assert "rollout_logprobs" in t.buffer.token_fields
    lp, rlp = t.buffer.field("logprobs"), t.buffer.field("rollout_logprobs")
    assert lp.shape == rlp.shape and np.abs(lp - rlp).max() < 1e-4


def test_a_missed_sync_is_caught_by_the_mismatch_metrics(tmp_path):
    t = grpo(tmp_path, sync_every=0, total_steps=4)  # never synced after the start
    t.backend = engine = SeparateWeightsBackend(t.policy, t.tokenizer)
    t.train()
    assert engine.syncs == 1  # its first use: the trainer cannot know its weights
    got = rows(tmp_path)
    assert [r["weight_sync/lag_steps"] for r in got] == [0.0, 1.0, 2.0, 3.0]
    assert got[0][GAP] < 1e-4
    assert got[-1][GAP] > 0.05 and got[-1]["rollout_corr/k3_kl"] > 1e-4, got[-1]
    assert got[-1]["rollout_corr/chi2_token"] > got[0]["rollout_corr/chi2_token"]


def test_sync_every_k_steps(tmp_path):
    t = grpo(tmp_path, sync_every=2, total_steps=5)
    t.backend = engine = SeparateWeightsBackend(t.policy, t.tokenizer)
    t.train()
    got = rows(tmp_path)
    assert [r["weight_sync/lag_steps"] for r in got] == [0.0, 1.0, 0.0, 1.0, 0.0]
    assert engine.syncs == 3
    assert ["time/weight_sync" in r for r in got] == [True, False, True, False, True]
    assert got[1][GAP] > got[2][GAP]  # stale by one step, then fresh


def test_the_correction_weights_the_loss(tmp_path):
    """The same stale engine, the same rollouts: with the correction the loss differs, and
    with a cap below every ratio the weights are that cap."""

    def first_two(**kw):
        t = grpo(tmp_path / str(len(kw)) / str(sorted(kw.items())), sync_every=0,
                 total_steps=2, **kw)  # fmt: skip
        t.backend = SeparateWeightsBackend(t.policy, t.tokenizer)
        t.train()
        return rows(Path(t.config.run_dir))

    off = first_two(vllm_importance_sampling_correction=False)
    on = first_two(vllm_importance_sampling_mode="token_truncate",
                   vllm_importance_sampling_clip_max=0.5)  # fmt: skip
    # step 0 samples are the same (identical weights): only the weights change the loss,
    # by exactly the cap, 0.5 (every ratio is ~1 > 0.5)
    assert on[0]["reward/mean"] == off[0]["reward/mean"]
    assert on[0]["policy_loss"] == pytest.approx(0.5 * off[0]["policy_loss"], rel=1e-5)
    assert on[0]["sampling/importance_sampling_ratio/max"] == 0.5


def test_correct_mismatch_on_a_batch_and_the_kept_denominator(tmp_path):
    t = grpo(tmp_path, vllm_importance_sampling_mode="token_mask",
             vllm_importance_sampling_clip_max=1.5, vllm_importance_sampling_clip_min=0.5,
             vllm_importance_sampling_denominator="kept")  # fmt: skip
    mask = torch.tensor([[True, True, True], [True, True, False]])
    old = torch.zeros(2, 3)
    roll = torch.tensor([[0.0, -2.0, 0.1], [0.0, 0.0, 9.0]])  # ρ: 1, e², e^-0.1; 1, 1, pad
    batch = {"old_logprobs": old, "rollout_logprobs": roll, "response_mask": mask}
    t.correct_mismatch(batch)
    w = batch["is_weights"]
    assert w[0, 1] == 0 and w[0, 0] == 1 and w[1, 2] == 0
    assert w[0, 2] == pytest.approx(math.exp(-0.1))
    assert batch["response_mask"].tolist() == [[True, False, True], [True, True, False]]
    # without rollout logprobs (a local backend) nothing happens
    plain = {"old_logprobs": old, "response_mask": mask}
    t.correct_mismatch(plain)
    assert set(plain) == {"old_logprobs", "response_mask"}


def test_ppo_with_an_engine(tmp_path):
    cfg = PPOConfig(run_dir=str(tmp_path), rollout_batch_size=4, max_new_tokens=5,
                    ppo_epochs=2, learning_rate=1e-2, total_steps=2, value_init="policy",
                    **FAST)  # fmt: skip
    t = PPOTrainer(cfg, policy(), tokenizer(), PROMPTS, digits)
    t.backend = engine = SeparateWeightsBackend(t.policy, t.tokenizer)
    t.train()
    got = rows(tmp_path)
    assert engine.syncs == 2 and all(r[GAP] < 1e-4 for r in got)
    assert all(math.isfinite(r["policy_loss"]) and "kl" in r for r in got)


def test_best_of_n_logs_the_mismatch(tmp_path):
    cfg = BestOfNConfig(run_dir=str(tmp_path), rollout_batch_size=8, num_samples=4,
                        max_new_tokens=5, total_steps=2, **FAST)  # fmt: skip
    t = BestOfNTrainer(cfg, policy(), tokenizer(), PROMPTS, digits)
    t.backend = SeparateWeightsBackend(t.policy, t.tokenizer)
    t.train()
    assert all(r[GAP] < 1e-4 for r in rows(tmp_path))


def test_engine_samples_equal_the_policys_when_the_weights_are_the_same(tmp_path):
    """Per-prompt seeds: the engine path (one call with a seed per prompt) gives the samples of
    the local path (one call per prompt) on the same weights."""
    a = grpo(tmp_path / "a", per_prompt_seeds=True, total_steps=1)
    b = grpo(tmp_path / "b", per_prompt_seeds=True, total_steps=1)
    b.backend = SeparateWeightsBackend(b.policy, b.tokenizer)
    ra, rb = a.collect(0), b.collect(0)
    assert [x.tolist() for x in ra.response_ids] == [x.tolist() for x in rb.response_ids]
    assert ra.rollout_logprobs == [] and len(rb.rollout_logprobs) == len(rb)
    assert np.abs(np.concatenate(rb.logprobs) - np.concatenate(rb.rollout_logprobs)).max() < 1e-4


def test_the_vllm_engine_is_started_at_the_first_step_and_needs_vllm(tmp_path):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here: tests/vllm_backend covers the real engine")
    t = grpo(tmp_path, generation_backend="vllm")
    assert t.backend is None  # nothing started at construction
    with pytest.raises(ImportError, match="vllm"):
        t.train()
    assert t.backend is None


# ---------------------------------------------------------------------------------------------
# the reference, only when needed


def test_no_reference_when_the_kl_is_neither_optimised_nor_logged(tmp_path):
    t = grpo(tmp_path, kl_coef=0.0, track_kl=False)
    assert t.reference is None and t.collector.reference is None
    before = snapshot(t.policy)
    t.train()
    assert_all_changed(before, t.policy)
    assert all("kl" not in r for r in rows(tmp_path))
    assert "ref_logprobs" not in t.buffer.token_fields


@pytest.mark.parametrize("kw", [dict(kl_coef=0.0), dict(kl_coef=0.05, track_kl=False)])
def test_the_reference_is_built_when_the_kl_is_needed(tmp_path, kw):
    t = grpo(tmp_path, total_steps=1, **kw)
    assert t.reference is not None
    t.train()
    assert "kl" in rows(tmp_path)[0]


def test_ppo_and_best_of_n_without_a_reference(tmp_path):
    cfg = PPOConfig(run_dir=str(tmp_path / "ppo"), rollout_batch_size=4, max_new_tokens=5,
                    kl_coef=0.0, track_kl=False, total_steps=2, value_init="policy",
                    **FAST)  # fmt: skip
    t = PPOTrainer(cfg, policy(), tokenizer(), PROMPTS, digits)
    assert t.reference is None
    t.train()
    assert t.kl_coef == 0.0
    cfg2 = BestOfNConfig(run_dir=str(tmp_path / "bon"), rollout_batch_size=8, num_samples=4,
                         max_new_tokens=5, track_kl=False, total_steps=1, **FAST)  # fmt: skip
    b = BestOfNTrainer(cfg2, policy(), tokenizer(), PROMPTS, digits)
    assert b.reference is None
    b.train()


def test_an_explicit_reference_is_kept(tmp_path):
    cfg = GRPOConfig(run_dir=str(tmp_path), rollout_batch_size=8, num_samples=4,
                     max_new_tokens=5, kl_coef=0.0, track_kl=False, total_steps=1,
                     **FAST)  # fmt: skip
    t = GRPOTrainer(cfg, policy(), tokenizer(), PROMPTS, digits, reference=policy(1))
    assert t.reference is not None


# ---------------------------------------------------------------------------------------------
# config checks


@pytest.mark.parametrize(
    "kw,field",
    [
        (dict(generation_backend="sglang"), "generation_backend"),
        (dict(vllm_mode="server"), "vllm_mode"),
        (dict(vllm_dtype="int8"), "vllm_dtype"),
        (dict(vllm_gpu_memory_utilization=0.0), "vllm_gpu_memory_utilization"),
        (dict(vllm_max_model_length=1), "vllm_max_model_length"),
        (dict(vllm_tensor_parallel_size=0), "vllm_tensor_parallel_size"),
        (dict(vllm_kv_cache_memory_bytes=-1), "vllm_kv_cache_memory_bytes"),
        (dict(sync_every=-1), "sync_every"),
        (dict(vllm_importance_sampling_mode="tis"), "vllm_importance_sampling_mode"),
        (dict(vllm_importance_sampling_denominator="shrunk"),
         "vllm_importance_sampling_denominator"),
        (dict(vllm_importance_sampling_clip_max=-1.0), "vllm_importance_sampling_clip_max"),
        (dict(vllm_importance_sampling_clip_max=None), "vllm_importance_sampling_clip_max"),
        (dict(vllm_importance_sampling_clip_min=4.0), "vllm_importance_sampling_clip_min"),
    ],
)  # fmt: skip
def test_bad_engine_and_correction_fields_name_the_field(kw, field):
    with pytest.raises(ValueError, match=f"^{field}="):
        GRPOConfig(**kw)


def test_vllm_config_from_the_fields():
    cfg = GRPOConfig(generation_backend="vllm", vllm_dtype="bfloat16", vllm_max_model_length=256,
                     vllm_kv_cache_memory_bytes=2**27, vllm_mode="multiprocess")  # fmt: skip
    v = cfg.vllm_config(seed=3)
    assert (v.dtype, v.max_model_len, v.kv_cache_memory_bytes, v.mode, v.seed) == (
        "bfloat16", 256, 2**27, "multiprocess", 3)  # fmt: skip
    assert v.gpu_memory_utilization == 0.3 and not v.enable_sleep_mode


# ---------------------------------------------------------------------------------------------
# the CLI's label and eval


def test_eval_and_label_take_a_generation_backend(tmp_path, capsys):
    import json

    from rlhf_core import cli
    from rlhf_core.generation import BACKENDS_USED

    root = Path(__file__).resolve().parents[1] / "configs"
    before = BACKENDS_USED.copy()
    for cmd, extra in (("eval", ["--num_prompts", "2"]), ("label", ["--num_prompts", "3"])):
        args = [cmd, "--config", str(root / f"{cmd}.toml"), "--run-dir", str(tmp_path / cmd),
                "--max_new_tokens", "6", "--generation_backend", "decode_loop", *extra]  # fmt: skip
        assert cli.main(args) == 0
    assert (BACKENDS_USED - before)["static-eager"] >= 2  # the decode loop served both
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["num_prompts"] == 2
    capsys.readouterr()
    rc = cli.main(["eval", "--config", str(root / "eval.toml"), "--generation_backend", "sglang"])
    assert rc != 0 and "generation_backend='sglang'" in capsys.readouterr().err
