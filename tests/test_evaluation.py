"""Tests of rlhf_core.evaluation: policy evaluation (samples, scores, KL) and the best-of-n
curve."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlhf_core import evaluation as E


def test_best_of_n_kl_and_curve() -> None:
    assert E.best_of_n_kl(1) == 0.0
    assert E.best_of_n_kl(4) == pytest.approx(math.log(4) - 0.75)
    with pytest.raises(ValueError, match="n must be >= 1"):
        E.best_of_n_kl(0)
    rng = np.random.default_rng(0)
    gold = rng.normal(size=(50, 16))
    # a perfect proxy: gold of best-of-n is the expected max of n normals, rising in n
    curve = E.best_of_n_curve(gold, gold, [1, 2, 4, 16])
    golds = [g for _, _, _, g in curve]
    assert golds == sorted(golds) and golds[0] == pytest.approx(gold.mean())
    assert curve[-1][2] == pytest.approx(gold.max(axis=1).mean())
    # an anti-correlated proxy picks the worst
    worst = E.best_of_n_curve(-gold, gold, [16])[0][3]
    assert worst == pytest.approx(gold.min(axis=1).mean())
    # NaN proxy never wins
    proxy = gold.copy()
    proxy[:, 0] = np.nan
    assert E.best_of_n_curve(proxy, gold, [16])[0][3] == pytest.approx(gold[:, 1:].max(1).mean())
    with pytest.raises(ValueError, match=r"n=32 must be in \[1, 16\]"):
        E.best_of_n_curve(gold, gold, [32])
    with pytest.raises(ValueError, match="equal"):
        E.best_of_n_curve(gold, gold[:, :8], [1])


def test_evaluate_policy_scores_and_kl() -> None:
    from rlhf_core import models, tasks

    tok = models.load_tokenizer()
    policy = models.build_builtin_policy(tok, seed=0)
    same = models.make_reference(policy)
    other = models.make_reference(models.build_builtin_policy(tok, seed=1))
    prompts = ["1+1=", "2+2="]
    kw = dict(num_samples=3, max_new_tokens=5, seed=0)
    ev = E.evaluate_policy(
        policy,
        tok,
        prompts,
        {"exact": tasks.arithmetic_reward},
        reference=same,
        columns={"answer": ["2", "4"]},
        **kw,
    )
    assert len(ev) == 6 and ev.prompts == ["1+1="] * 3 + ["2+2="] * 3
    assert ev.columns["answer"] == ["2"] * 3 + ["4"] * 3
    assert ev.scores["exact"].shape == (6,) and ev.kl is not None
    np.testing.assert_allclose(ev.kl, 0.0, atol=1e-6)
    s = ev.summary()
    assert s["num_samples"] == 6 and s["kl"] == pytest.approx(0.0, abs=1e-6)
    ev2 = E.evaluate_policy(policy, tok, prompts, {}, reference=other, **kw)
    assert ev2.texts == ev.texts  # same seed, same samples
    assert np.all(np.abs(ev2.kl) > 0)
    with pytest.raises(ValueError, match="column 'answer' has 1 entries"):
        E.evaluate_policy(policy, tok, prompts, {}, columns={"answer": ["2"]}, **kw)


def test_sequence_kl_sums_completion_tokens_only() -> None:
    """Each row's KL is the sum of log pi - log pi_ref over its completion tokens, as a plain
    per-row forward gives it (up to float32 noise from batching with padding)."""
    import torch

    from rlhf_core import models

    tok = models.load_tokenizer()
    policy = models.build_builtin_policy(tok, seed=0)
    policy.train()
    reference = models.make_reference(models.build_builtin_policy(tok, seed=1))
    rng = np.random.default_rng(0)
    seqs = [rng.integers(5, 40, size=n) for n in (3, 9, 6, 12, 2)]
    starts = [1, 4, 6, 5, 0]  # row 2: an empty completion
    kl = E.sequence_kl(policy, reference, seqs, starts, tok.pad_token_id, batch_size=2)
    assert policy.training  # the train/eval mode is restored
    for i, (s, start) in enumerate(zip(seqs, starts, strict=True)):
        ids = torch.as_tensor(s[None, :], dtype=torch.long)
        with torch.no_grad():
            lp = models.token_logprobs(policy, ids).double()[0]  # (T-1,)
            rlp = models.token_logprobs(reference, ids).double()[0]
        want = float((lp - rlp)[max(start, 1) - 1 :].sum())
        assert kl[i] == pytest.approx(want, rel=1e-4, abs=1e-5), i
    assert kl[2] == 0.0 and np.all(kl[[0, 1, 3, 4]] != 0)


def test_demo_keeps_the_old_names() -> None:
    """``rlhf_core.demo`` still exports the evaluation names the CLI imports from it."""
    from rlhf_core import demo

    for name in ("PolicyEval", "evaluate_policy", "best_of_n_kl", "best_of_n_curve"):
        assert getattr(demo, name) is getattr(E, name)
