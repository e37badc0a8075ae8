"""Reward ensembles: the reductions and the disagreement against float64 references (one
member, identical scores, NaN), the shared-body model (members, files), joint training on
bootstrap resamples (members differ, the loss is the resampled Bradley–Terry loss, micro-batch
invariance, centring, one member equals one reward model), the check-model split, and the
ensemble and a check model as reward sources of the RL trainers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rlhf_core.models import RewardEnsemble, RewardModel, is_reward_ensemble, load_reward_model
from rlhf_core.monitor import read_metrics
from rlhf_core.rewards import RewardModelScorer, combine_rewards
from rlhf_core.rewards.ensemble import (
    ENSEMBLE_REDUCTIONS,
    RewardEnsembleScorer,
    ensemble_std,
    reduce_ensemble,
)
from rlhf_core.testing.trainers import (
    FAST,
    assert_grads_close,
    capture_grads,
    count_pairs,
    params_equal,
    policy,
    tokenizer,
)
from rlhf_core.trainers import GRPOConfig, GRPOTrainer, PPOConfig, PPOTrainer, RewardConfig
from rlhf_core.trainers.reward import RewardTrainer, bootstrap_counts, split_check_pairs

# ---------------------------------------------------------------------------------------------
# reductions and disagreement against float64 references


def _reference(scores: np.ndarray, how: str, lam: float) -> np.ndarray:
    """Row by row in plain Python floats."""
    out = []
    for row in scores.tolist():
        k = len(row)
        if any(math.isnan(x) for x in row):
            out.append(math.nan)
            continue
        mean = sum(row) / k
        var = sum((x - mean) ** 2 for x in row) / k
        out.append(
            {
                "mean": mean,
                "min": min(row),
                "mean_minus_std": mean - lam * math.sqrt(var),
                "mean_minus_var": mean - lam * var,
            }[how]
        )
    return np.array(out)


def _std_reference(scores: np.ndarray) -> np.ndarray:
    out = []
    for row in scores.tolist():
        mean = sum(row) / len(row)
        out.append(math.sqrt(sum((x - mean) ** 2 for x in row) / len(row)))
    return np.array(out)


@pytest.mark.parametrize("how", ENSEMBLE_REDUCTIONS)
@pytest.mark.parametrize("k", [1, 2, 5])
def test_reductions_match_the_reference(how: str, k: int) -> None:
    rng = np.random.default_rng(k)
    scores = rng.normal(size=(40, k)) * rng.uniform(0.1, 10)
    scores[3] = 1.25  # identical members
    scores[5, 0] = np.nan  # an unscorable member
    lam = 0.7
    got = reduce_ensemble(scores, how, lam)
    np.testing.assert_allclose(got, _reference(scores, how, lam), rtol=1e-12, atol=1e-12)
    assert got.dtype == np.float64 and got.shape == (40,)
    assert np.isnan(got[5]) and got[3] == pytest.approx(1.25)
    std = ensemble_std(scores)
    finite = ~np.isnan(scores).any(axis=1)
    np.testing.assert_allclose(std[finite], _std_reference(scores[finite]), atol=1e-12)
    assert np.isnan(std[5]) and std[3] == 0.0
    if k == 1:  # one member: every reduction is the member itself
        np.testing.assert_array_equal(got[finite], scores[finite, 0])


def test_reduction_order_and_bad_arguments() -> None:
    s = np.random.default_rng(0).normal(size=(20, 4))
    mean, low = reduce_ensemble(s, "mean"), reduce_ensemble(s, "min")
    assert (low <= mean).all() and (reduce_ensemble(s, "mean_minus_std", 0.0) == mean).all()
    with pytest.raises(ValueError, match="'median'"):
        reduce_ensemble(s, "median")
    with pytest.raises(ValueError, match="lam"):
        reduce_ensemble(s, "mean_minus_std", -1.0)
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        reduce_ensemble(np.zeros(5), "mean")
    with pytest.raises(ValueError, match="ensemble_reduce='max'"):
        GRPOConfig(ensemble_reduce="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ensemble_lambda"):
        GRPOConfig(ensemble_lambda=float("nan"))


# ---------------------------------------------------------------------------------------------
# the model


def _ids(texts: list[str]) -> list[np.ndarray]:
    tok = tokenizer()
    return [np.asarray(tok(t)["input_ids"], dtype=np.int64) for t in texts]


TEXTS = ["Q: abab", "Q: ba", "A: aabb ab", "x= b"]


def test_members_are_columns_and_one_member_is_a_reward_model() -> None:
    ens = RewardEnsemble.from_policy(policy(), 3, seed=5)
    ens.offsets.copy_(torch.tensor([0.5, -1.0, 2.0]))
    scorer = RewardEnsembleScorer(ens, tokenizer())
    m = scorer.member_scores(_ids(TEXTS))
    assert m.shape == (4, 3)
    for k in range(3):  # a member's own folder-able model scores its column (offset folded in)
        col = RewardModelScorer(ens.member(k), tokenizer()).score_ids(_ids(TEXTS))
        np.testing.assert_allclose(col, m[:, k], rtol=1e-6, atol=1e-6)
    assert np.unique(m.round(4), axis=1).shape[1] == 3  # the heads start different
    single = RewardModel.from_policy(policy(), seed=5)  # member 0 starts as this model
    one = RewardEnsemble.from_policy(policy(), 1, seed=5)
    a = RewardModelScorer(single, tokenizer()).score_ids(_ids(TEXTS))
    b = RewardEnsembleScorer(one, tokenizer()).score_ids(_ids(TEXTS))
    np.testing.assert_array_equal(a, b)


def test_scorer_parts_and_combine_rewards() -> None:
    ens = RewardEnsemble.from_policy(policy(), 4, seed=0)
    ids = _ids(TEXTS)
    for how in ENSEMBLE_REDUCTIONS:
        sc = RewardEnsembleScorer(ens, tokenizer(), reduce=how, lam=0.5)
        m = sc.member_scores(ids)
        main, parts = sc.score_ids_parts(ids)
        np.testing.assert_array_equal(main, reduce_ensemble(m, how, 0.5))
        np.testing.assert_array_equal(parts["std"], ensemble_std(m))
        assert [f"member_{k}" for k in range(4)] + ["std"] == list(parts)
        np.testing.assert_array_equal(np.stack([parts[f"member_{k}"] for k in range(4)], 1), m)
    sc = RewardEnsembleScorer(ens, tokenizer())
    check = RewardModelScorer(RewardModel.from_policy(policy(1)), tokenizer(), name="check_model")
    total, parts = combine_rewards(
        [sc, check], [1.0, 0.0], ["Q:"] * 4, ["x"] * 4, sequences=ids, return_components=True
    )
    assert set(parts) == {
        "reward_ensemble",
        "check_model",
        "reward_ensemble/std",
        *(f"reward_ensemble/member_{k}" for k in range(4)),
    }
    np.testing.assert_array_equal(total, parts["reward_ensemble"])  # the check is weight 0
    # scored from text: the reduced score
    texts = sc(["Q:"], [" abab"])
    assert len(texts) == 1 and isinstance(texts[0], float)
    with pytest.raises(ValueError, match="name"):
        RewardModelScorer(RewardModel.from_policy(policy()), tokenizer(), name="a/b")


def test_save_and_load(tmp_path: Path) -> None:
    ens = RewardEnsemble.from_policy(policy(), 3, seed=2)
    ens.offsets.copy_(torch.tensor([0.1, 0.2, -0.3]))
    ens.save_pretrained(tmp_path / "ens", members=True)
    assert is_reward_ensemble(tmp_path / "ens") and not is_reward_ensemble(tmp_path)
    back = load_reward_model(tmp_path / "ens")
    assert isinstance(back, RewardEnsemble) and back.num_members == 3
    ids = _ids(TEXTS)
    want = RewardEnsembleScorer(ens, tokenizer()).member_scores(ids)
    np.testing.assert_allclose(
        RewardEnsembleScorer(back, tokenizer()).member_scores(ids), want, rtol=1e-6, atol=1e-6
    )
    for k in range(3):  # each member is a plain reward-model folder
        member = load_reward_model(tmp_path / "ens" / "members" / f"member_{k}")
        assert isinstance(member, RewardModel)
        got = RewardModelScorer(member, tokenizer()).score_ids(ids)
        np.testing.assert_allclose(got, want[:, k], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no reward ensemble"):
        RewardEnsemble.from_pretrained(tmp_path / "ens" / "members" / "member_0")
    with pytest.raises(ValueError, match="num_members"):
        RewardEnsemble(ens.body, num_members=0)


# ---------------------------------------------------------------------------------------------
# training


def _ensemble_trainer(tmp: Path, k: int, **kw: Any) -> RewardTrainer:
    kw.setdefault("total_steps", 2)
    kw.setdefault("learning_rate", 1e-3)
    kw.setdefault("batch_size", 8)
    cfg = RewardConfig(run_dir=str(tmp), **FAST, **kw)
    return RewardTrainer(cfg, RewardEnsemble.from_policy(policy(), k), tokenizer(), count_pairs(40))


def test_bootstrap_counts() -> None:
    c = bootstrap_counts(500, 4, seed=3)
    assert c.shape == (4, 500) and (c.sum(1) == 500).all() and (c >= 0).all()
    left_out = (c == 0).mean(1)  # about 1/e of the items are out of each resample
    assert ((left_out > 0.3) & (left_out < 0.44)).all()
    assert len({tuple(r) for r in c.tolist()}) == 4  # members resample differently
    np.testing.assert_array_equal(c, bootstrap_counts(500, 4, seed=3))
    with pytest.raises(ValueError):
        bootstrap_counts(0, 2, 0)


def test_ensemble_loss_is_each_member_on_its_resample(tmp_path: Path) -> None:
    """The step's loss equals the float64 mean over members of sum_i w_ki * bt_ki / N."""
    t = _ensemble_trainer(tmp_path, 3, total_steps=1)
    counts = t.train_pairs.weights
    assert counts is not None and counts.shape == (len(t.train_pairs), 3)
    idx = np.arange(8)
    part = t.train_pairs.subset(idx)
    with torch.no_grad():
        rc, rr = t._forward_pairs(part)
        out = t.pair_loss(part, 8)
    d = (rc - rr).double().numpy()
    w = counts[idx].astype(np.float64)
    nll = np.log1p(np.exp(-d))  # -log sigmoid(d)
    want = float(np.mean((w * nll).sum(0) / 8))
    assert float(out.loss) == pytest.approx(want, rel=1e-6)


def test_ensemble_trains_members_apart(tmp_path: Path) -> None:
    t = _ensemble_trainer(tmp_path, 3, total_steps=6, eval_fraction=0.25)
    ens = t.trained_model
    start = ens.heads.weight.detach().clone()
    res = t.train()
    assert math.isfinite(res.metrics["loss"])
    for key in ("eval/accuracy", "eval/member_accuracy", "eval/margin_std"):
        assert math.isfinite(res.metrics[key]), key
    assert not torch.equal(start, ens.heads.weight)
    # centred at the end: each member's mean score over the training pairs is 0
    sc = RewardEnsembleScorer(ens, tokenizer())
    pairs = t.train_pairs
    m = sc.member_scores(pairs.chosen + pairs.rejected)
    np.testing.assert_allclose(m.mean(0), 0.0, atol=1e-4)
    assert (ensemble_std(m) > 0).all()  # the members disagree
    assert (ens.offsets != 0).all()


def test_ensemble_micro_batch_invariance(tmp_path: Path) -> None:
    a = _ensemble_trainer(tmp_path / "a", 3, total_steps=1, center_coef=0.01)
    b = _ensemble_trainer(tmp_path / "b", 3, total_steps=1, center_coef=0.01, micro_batch_size=1)
    ga, gb = capture_grads(a), capture_grads(b)
    ra, rb = a.train(), b.train()
    assert ra.metrics["loss"] == pytest.approx(rb.metrics["loss"], rel=1e-5)
    assert_grads_close(ga, gb)


def test_one_member_ensemble_trains_like_one_reward_model(tmp_path: Path) -> None:
    cfg = dict(total_steps=3, learning_rate=1e-3, batch_size=8, **FAST)
    single = RewardModel.from_policy(policy(), seed=0)
    a = RewardTrainer(RewardConfig(run_dir=str(tmp_path / "a"), **cfg), single, tokenizer(),
                      count_pairs(40))  # fmt: skip
    one = RewardEnsemble.from_policy(policy(), 1, seed=0)
    b = RewardTrainer(RewardConfig(run_dir=str(tmp_path / "b"), **cfg), one, tokenizer(),
                      count_pairs(40))  # fmt: skip
    ra, rb = a.train(), b.train()
    assert ra.metrics["loss"] == rb.metrics["loss"]
    params_equal(single.body, one.body)
    assert torch.equal(single.head.weight, one.heads.weight)


def test_seed_only_ensemble_sees_every_pair(tmp_path: Path) -> None:
    t = _ensemble_trainer(tmp_path, 2, ensemble_bootstrap=False)
    assert t.train_pairs.weights is not None and (t.train_pairs.weights == 1).all()


# ---------------------------------------------------------------------------------------------
# the check split


def test_split_check_pairs() -> None:
    pairs = count_pairs(50)
    proxy, check = split_check_pairs(pairs, 0.4, seed=1)
    assert len(check) == 20 and len(proxy) == 30
    assert sorted(map(tuple, proxy + check)) == sorted(map(tuple, pairs))
    again = split_check_pairs(pairs, 0.4, seed=1)
    assert again == (proxy, check)
    assert split_check_pairs(pairs, 0.4, seed=2) != (proxy, check)
    with pytest.raises(ValueError, match="check_fraction"):
        split_check_pairs(pairs, 1.0, seed=0)
    with pytest.raises(ValueError, match="at least 2"):
        split_check_pairs(pairs[:1], 0.5, seed=0)


# ---------------------------------------------------------------------------------------------
# as reward sources of the RL trainers


def digit_reward(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
    return [sum(c.isdigit() for c in t) / max(len(t), 1) for t in completions]


@pytest.mark.parametrize("how", ENSEMBLE_REDUCTIONS)
def test_grpo_optimises_the_reduced_ensemble_and_logs_members(tmp_path: Path, how: str) -> None:
    ens = RewardEnsemble.from_policy(policy(1), 3, seed=1)
    check = RewardModelScorer(RewardModel.from_policy(policy(2)), tokenizer(), name="check_model")
    cfg = GRPOConfig(
        run_dir=str(tmp_path), total_steps=2, rollout_batch_size=8, num_samples=4,
        learning_rate=1e-3, max_new_tokens=6, ensemble_reduce=how, ensemble_lambda=0.5,
        reward_weights=[1.0, 0.0, 0.0], **FAST,
    )  # fmt: skip
    t = GRPOTrainer(cfg, policy(), tokenizer(), ["Q:", "A:"], [ens, check, digit_reward])
    t.train()
    row = read_metrics(tmp_path)[-1]
    members = [row[f"reward/reward_ensemble/member_{k}"] for k in range(3)]
    assert row["reward/reward_ensemble/std"] > 0
    assert math.isfinite(row["reward/check_model"]) and "reward/digit_reward" in row
    # the optimised reward is the reduced ensemble alone (check and digits have weight 0)
    assert row["reward/mean"] == pytest.approx(row["reward/reward_ensemble"], rel=1e-9)
    if how == "mean":
        assert row["reward/reward_ensemble"] == pytest.approx(np.mean(members), rel=1e-9)
    else:  # a conservative reduction is below the members' mean
        assert row["reward/reward_ensemble"] < np.mean(members)


def test_ppo_takes_an_ensemble(tmp_path: Path) -> None:
    ens = RewardEnsemble.from_policy(policy(1), 2, seed=1)
    cfg = PPOConfig(
        run_dir=str(tmp_path), total_steps=1, rollout_batch_size=4, learning_rate=1e-3,
        max_new_tokens=6, ensemble_reduce="min", **FAST,
    )  # fmt: skip
    t = PPOTrainer(cfg, policy(), tokenizer(), ["Q:", "A:"], ens)
    res = t.train()
    assert "reward/reward_ensemble/member_1" in res.metrics
    means = [res.metrics[f"reward/reward_ensemble/member_{k}"] for k in range(2)]
    assert res.metrics["reward/reward_ensemble"] <= min(means) + 1e-12  # mean of mins
