"""Tests of the trainers' shared pieces: sampler, padding, micro-batch split, schedules, seeds,
configs (:mod:`rlhf_core.trainers.config`, :mod:`~rlhf_core.trainers.optim`,
:mod:`rlhf_core.rollout.inputs`). The helpers the trainer tests share live in
:mod:`rlhf_core.testing.trainers`."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from rlhf_core.rollout import inputs as I
from rlhf_core.trainers import config as C
from rlhf_core.trainers import optim as O


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ---------------------------------------------------------------------------------------------
# base pieces


def test_index_sampler_is_seeded_resumable_and_covers_epochs():
    s = O.IndexSampler(5, seed=3)
    first = np.concatenate([s.next(3), s.next(3), s.next(4)])
    # epoch 0 and epoch 1 are each a permutation of 0..4
    assert sorted(first[:5]) == list(range(5)) and sorted(first[5:]) == list(range(5))
    s2 = O.IndexSampler(5, seed=3)
    s2.next(4)
    state = s2.state_dict()
    s3 = O.IndexSampler(5, seed=3)
    s3.load_state_dict(state)
    np.testing.assert_array_equal(s2.next(7), s3.next(7))
    with pytest.raises(ValueError, match="same data and seed"):
        O.IndexSampler(6, seed=3).load_state_dict(state)


def test_pad_sequences_aligns_loss_mask_with_token_logprobs():
    out = I.pad_sequences([np.array([1, 5, 6, 2]), np.array([1, 7, 2])], [2, 1], pad_id=0)
    assert out["input_ids"].tolist() == [[1, 5, 6, 2], [1, 7, 2, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    # loss_mask[i, j] says whether token j+1 is a completion token
    assert out["loss_mask"].tolist() == [[False, True, True], [True, True, False]]


def _padded_reference(seqs: list[np.ndarray], starts: list[int], pad: int) -> dict:
    """The padding rule written as a loop: tokens left-aligned, ones on the attention mask,
    loss_mask[i, j] for the completion's tokens j + 1 (start 0 counts as 1)."""
    t = max(max((len(s) for s in seqs), default=1), 2)
    ids = torch.full((len(seqs), t), pad, dtype=torch.long)
    attn = torch.zeros((len(seqs), t), dtype=torch.long)
    loss = torch.zeros((len(seqs), t - 1), dtype=torch.bool)
    for i, (s, k) in enumerate(zip(seqs, starts, strict=True)):
        ids[i, : len(s)] = torch.from_numpy(s)
        attn[i, : len(s)] = 1
        loss[i, max(k, 1) - 1 : len(s) - 1] = True
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss}


def test_pad_sequences_matches_a_python_reference():
    """The Rust materialiser gives the loop's tensors: any lengths, completion starts from 0 to
    the end (an empty completion), rows of one token, empty batches."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        seqs = [rng.integers(0, 100, size=int(rng.integers(1, 12))) for _ in range(rng.integers(8))]
        starts = [int(rng.integers(0, len(s) + 1)) for s in seqs]
        got = I.pad_sequences(seqs, starts, pad_id=7)
        want = _padded_reference(seqs, starts, 7)
        assert got.keys() == want.keys()
        for k in want:
            assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k


def test_iter_micro_batches_trims_padding():
    batch = I.pad_sequences([np.arange(1, 7), np.arange(1, 3)], [1, 1], pad_id=0)
    chunks = list(I.iter_micro_batches(batch, 1))
    assert [c["input_ids"].shape[1] for c in chunks] == [6, 2]
    assert [c["loss_mask"].shape[1] for c in chunks] == [5, 1]
    assert len(list(I.iter_micro_batches(batch, None))) == 1
    # host-side lengths give the same chunks without reading the mask
    given = list(I.iter_micro_batches(batch, 1, lengths=[6, 2]))
    for a, b in zip(chunks, given, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match=r"lengths has shape \(1,\), expected \(2,\)"):
        list(I.iter_micro_batches(batch, 1, lengths=[6]))


def test_lr_schedules():
    cfg = C.TrainerConfig(total_steps=10, warmup_steps=2, lr_scheduler="linear")
    assert [round(O._lr_factor(s, cfg), 4) for s in (0, 1, 2, 6)] == [0.3333, 0.6667, 1.0, 0.5]
    cos = dataclasses.replace(cfg, lr_scheduler="cosine", warmup_steps=0)
    assert O._lr_factor(0, cos) == 1.0 and O._lr_factor(5, cos) == pytest.approx(0.5)


def test_step_seed_is_stable_and_distinct():
    assert O.step_seed(0, 1) == O.step_seed(0, 1)
    assert len({O.step_seed(0, s, p) for s in range(20) for p in range(3)}) == 60


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(total_steps=0), "total_steps=0"),
        (dict(learning_rate=-1.0), "learning_rate=-1.0"),
        (dict(lr_scheduler="step"), "lr_scheduler='step'"),
        (dict(max_grad_norm=0.0), "max_grad_norm=0.0"),
        (dict(device="tpu"), "device='tpu'"),
        (dict(adam_beta2=1.0), "adam_beta2=1.0"),
        (dict(lora_r=-1), "lora_r=-1"),
        (dict(lora_r=4, lora_alpha=0.0), "lora_alpha=0.0"),
        (dict(lora_r=4, lora_dropout=1.0), "lora_dropout=1.0"),
        (dict(lora_r=4, lora_target_modules=[]), r"lora_target_modules=\[\]"),
    ],
)
def test_base_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        C.TrainerConfig(**kwargs)


def test_configs_have_help_for_every_field():
    from rlhf_core import trainers as T

    names = [n for n in T.__all__ if n.endswith("Config")]
    assert len(names) >= 8
    for name in names:
        cls = getattr(T, name)
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{name}.{f.name} has no help"


def test_configs_load_through_config_module(tmp_path: Path):
    from rlhf_core.config import ConfigError, load_config
    from rlhf_core.trainers import GRPOConfig

    toml = tmp_path / "c.toml"
    toml.write_text('total_steps = 7\nloss_type = "dr_grpo"\n')
    cfg = load_config(GRPOConfig, toml, ["--num_samples", "3", "--rollout_batch_size", "6"])
    assert (cfg.total_steps, cfg.num_samples, cfg.aggregation) == (7, 3, "seq-mean-token-sum-norm")
    with pytest.raises(ConfigError, match="num_samples"):
        load_config(GRPOConfig, overrides={"num_samples": 1})


def test_reward_trainer_trains_lora_adapters_and_the_score_head(tmp_path: Path):
    """The reward trainer takes LoRA (it used to refuse lora_r > 0): adapters on the body and
    the score head train, the base weights stay, and the peft model is at hand to save."""
    from rlhf_core.models import RewardModel, peft_model_of
    from rlhf_core.testing.trainers import (
        FAST,
        assert_all_changed,
        count_pairs,
        policy,
        snapshot,
        tokenizer,
    )
    from rlhf_core.trainers import RewardConfig, RewardTrainer

    cfg = RewardConfig(run_dir=str(tmp_path), lora_r=4, use_rslora=True, total_steps=3,
                       learning_rate=1e-2, batch_size=4, **FAST)  # fmt: skip
    rm = RewardModel.from_policy(policy())
    base = {n: p.detach().clone() for n, p in rm.body.named_parameters()}
    trainer = RewardTrainer(cfg, rm, tokenizer(), count_pairs(20))
    names = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or n.startswith("head.modules_to_save") for n in names)
    assert any(n.startswith("head.") for n in names)
    before = snapshot(trainer.model)
    trainer.train()
    assert_all_changed(before, trainer.model)
    for n, p in trainer.model.body.named_parameters():
        key = n.replace(".base_layer", "")
        if "lora_" not in n and key in base:
            assert torch.equal(p, base[key]), n  # frozen base weights
    peft = peft_model_of(trainer.model)
    assert peft is not None and peft.peft_config["default"].use_rslora is True
    assert "score" in set(peft.peft_config["default"].modules_to_save)
