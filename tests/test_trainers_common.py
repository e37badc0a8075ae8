"""Shared pieces of the trainer tests (imported by the other test_trainers_* files) and tests of
rlhf_core.trainers.base: sampler, padding, micro-batch split, schedules, configs."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rlhf_core.trainers import base as B

# ---------------------------------------------------------------------------------------------
# helpers used by the other trainer test files

FAST = dict(progress_bar=False, tensorboard=False, device="cpu")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tokenizer() -> Any:
    from rlhf_core.models import load_tokenizer

    return load_tokenizer()


def policy(seed: int = 0) -> Any:
    from rlhf_core.models import build_builtin_policy

    return build_builtin_policy(tokenizer(), seed=seed)


def snapshot(*modules: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for m in modules for p in m.parameters() if p.requires_grad]


def snapshot_all(*modules: torch.nn.Module) -> list[torch.Tensor]:
    """Every parameter, trainable or frozen (for checking that a frozen model stayed put)."""
    return [p.detach().clone() for m in modules for p in m.parameters()]


def assert_unchanged(before: list[torch.Tensor], *modules: torch.nn.Module) -> None:
    after = [p.detach() for m in modules for p in m.parameters()]
    assert len(after) == len(before) and after
    changed = [
        i for i, (a, b) in enumerate(zip(after, before, strict=True)) if not torch.equal(a, b)
    ]
    assert not changed, f"{len(changed)} of {len(after)} frozen tensors changed"


def assert_all_changed(before: list[torch.Tensor], *modules: torch.nn.Module) -> None:
    after = [p.detach() for m in modules for p in m.parameters() if p.requires_grad]
    assert len(after) == len(before) and after
    unchanged = [i for i, (a, b) in enumerate(zip(after, before, strict=True)) if torch.equal(a, b)]
    assert not unchanged, f"{len(unchanged)} of {len(after)} trainable tensors did not change"


def count_layer_calls(model: torch.nn.Module) -> list[int]:
    """A list that grows by one at every run of the MLP of ``model``'s first transformer
    layer (activation checkpointing runs it again in the backward pass; the recomputation
    calls ``forward`` without the module's hooks, so ``forward`` itself is wrapped)."""
    layer = next(m for m in model.modules() if type(m).__name__.endswith("DecoderLayer"))
    mlp = layer.mlp
    calls: list[int] = []
    inner = mlp.forward

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return inner(*args, **kwargs)

    mlp.forward = counted
    return calls


def assert_finite_metrics(metrics: dict[str, float]) -> None:
    assert metrics
    bad = {k: v for k, v in metrics.items() if not np.isfinite(v)}
    assert not bad, bad


def count_pairs(n: int, seed: int = 0, length: int = 8) -> list[tuple[str, str, str]]:
    """Synthetic preferences labelled by a known reward: more "ab" bigrams is better (a count
    of single characters would be too easy: a random reward head already ranks it well)."""
    rng = random.Random(seed)
    out: list[tuple[str, str, str]] = []
    while len(out) < n:
        x = "".join(rng.choice("ab") for _ in range(length))
        y = "".join(rng.choice("ab") for _ in range(length))
        if x.count("ab") == y.count("ab"):
            continue
        c, r = (x, y) if x.count("ab") > y.count("ab") else (y, x)
        out.append(("Q:", c, r))
    return out


def params_close(a: torch.nn.Module, b: torch.nn.Module, **tol: float) -> None:
    for (na, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(pa, pb, msg=lambda m, n=na: f"{n}: {m}", **tol)


def params_equal(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (na, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb), f"parameter {na} differs"


def capture_grads(trainer: Any) -> list[list[torch.Tensor]]:
    """Record the accumulated gradients (before clipping) each time the trainer checks them
    for an optimizer step."""
    seen: list[list[torch.Tensor]] = []
    original = trainer.clip_and_check

    def spy(params: Any, metrics: Any, **kw: Any) -> float:
        seen.append([p.grad.detach().clone() for p in params])
        return original(params, metrics, **kw)

    trainer.clip_and_check = spy
    return seen


def assert_grads_close(a: list[list[torch.Tensor]], b: list[list[torch.Tensor]]) -> None:
    assert len(a) == len(b) and a
    for step_a, step_b in zip(a, b, strict=True):
        for ga, gb in zip(step_a, step_b, strict=True):
            scale = float(ga.abs().max()) + 1e-12
            torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-5 * scale)


def strip_times(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in r.items() if not k.startswith("time/") and k != "wall_time"} for r in rows
    ]


# ---------------------------------------------------------------------------------------------
# base pieces


def test_index_sampler_is_seeded_resumable_and_covers_epochs():
    s = B.IndexSampler(5, seed=3)
    first = np.concatenate([s.next(3), s.next(3), s.next(4)])
    # epoch 0 and epoch 1 are each a permutation of 0..4
    assert sorted(first[:5]) == list(range(5)) and sorted(first[5:]) == list(range(5))
    s2 = B.IndexSampler(5, seed=3)
    s2.next(4)
    state = s2.state_dict()
    s3 = B.IndexSampler(5, seed=3)
    s3.load_state_dict(state)
    np.testing.assert_array_equal(s2.next(7), s3.next(7))
    with pytest.raises(ValueError, match="same data and seed"):
        B.IndexSampler(6, seed=3).load_state_dict(state)


def test_pad_sequences_aligns_loss_mask_with_token_logprobs():
    out = B.pad_sequences([np.array([1, 5, 6, 2]), np.array([1, 7, 2])], [2, 1], pad_id=0)
    assert out["input_ids"].tolist() == [[1, 5, 6, 2], [1, 7, 2, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    # loss_mask[i, j] says whether token j+1 is a completion token
    assert out["loss_mask"].tolist() == [[False, True, True], [True, True, False]]


def test_iter_micro_batches_trims_padding():
    batch = B.pad_sequences([np.arange(1, 7), np.arange(1, 3)], [1, 1], pad_id=0)
    chunks = list(B.iter_micro_batches(batch, 1))
    assert [c["input_ids"].shape[1] for c in chunks] == [6, 2]
    assert [c["loss_mask"].shape[1] for c in chunks] == [5, 1]
    assert len(list(B.iter_micro_batches(batch, None))) == 1
    # host-side lengths give the same chunks without reading the mask
    given = list(B.iter_micro_batches(batch, 1, lengths=[6, 2]))
    for a, b in zip(chunks, given, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match=r"lengths has shape \(1,\), expected \(2,\)"):
        list(B.iter_micro_batches(batch, 1, lengths=[6]))


def test_lr_schedules():
    cfg = B.TrainerConfig(total_steps=10, warmup_steps=2, lr_scheduler="linear")
    assert [round(B._lr_factor(s, cfg), 4) for s in (0, 1, 2, 6)] == [0.3333, 0.6667, 1.0, 0.5]
    cos = dataclasses.replace(cfg, lr_scheduler="cosine", warmup_steps=0)
    assert B._lr_factor(0, cos) == 1.0 and B._lr_factor(5, cos) == pytest.approx(0.5)


def test_step_seed_is_stable_and_distinct():
    assert B.step_seed(0, 1) == B.step_seed(0, 1)
    assert len({B.step_seed(0, s, p) for s in range(20) for p in range(3)}) == 60


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
        B.TrainerConfig(**kwargs)


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


def test_reward_config_refuses_lora():
    from rlhf_core.trainers import RewardConfig

    with pytest.raises(ValueError, match="lora_r=4.*reward model"):
        RewardConfig(lora_r=4)
