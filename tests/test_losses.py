"""Tests of rlhf_core.losses: hand-computed values, a float64 numpy reference, micro-batch
invariance of every aggregation mode (loss and gradients), masking and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlhf_core import losses as L

# ---------------------------------------------------------------------------------------------
# float64 numpy references (textbook formulas, written independently of the torch code)


def ref_aggregate(x, m, mode, max_len=None):
    x = np.where(m, x, 0.0)
    lens = m.sum(-1)
    nseq = (lens > 0).sum()
    if mode == "token-mean":
        return x.sum() / m.sum()
    if mode == "seq-mean-token-mean":
        return sum(x[i].sum() / lens[i] for i in range(len(x)) if lens[i] > 0) / nseq
    if mode == "seq-mean-token-sum":
        return x.sum() / nseq
    return x.sum() / (nseq * max_len)


def ref_ppo_token(logp, old, adv, eps_low, eps_high, dual=None):
    out = np.zeros_like(logp)
    for idx in np.ndindex(logp.shape):
        r = math.exp(logp[idx] - old[idx])
        a = adv[idx]
        rc = min(max(r, 1 - eps_low), 1 + eps_high)
        loss = max(-a * r, -a * rc)
        if dual is not None and a < 0:
            loss = min(loss, -dual * a)
        out[idx] = loss
    return out


def ref_kl(d, est):
    return {
        "k1": d,
        "k2": 0.5 * d**2,
        "k3": np.exp(-d) + d - 1,
        "abs": np.abs(d),
    }[est]


def random_batch(seed, b=4, t=7, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, t + 1, (b,), generator=g)
    mask = torch.arange(t)[None, :] < lens[:, None]
    logp = -torch.rand(b, t, generator=g, dtype=torch.float64) * 3
    old = logp + 0.3 * torch.randn(b, t, generator=g, dtype=torch.float64)
    ref = logp + 0.5 * torch.randn(b, t, generator=g, dtype=torch.float64)
    adv = torch.randn(b, t, generator=g, dtype=torch.float64)
    ent = torch.rand(b, t, generator=g, dtype=torch.float64) * 2
    return {
        "mask": mask,
        "logp": logp.to(dtype),
        "old": old.to(dtype),
        "ref": ref.to(dtype),
        "adv": adv.to(dtype),
        "ent": ent.to(dtype),
    }


# ---------------------------------------------------------------------------------------------
# hand-computed values


def test_aggregate_hand_values():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    # token-mean: (1+2+3+4)/4
    assert L.aggregate(x, m, "token-mean").item() == pytest.approx(2.5)
    # seq-mean-token-mean: (6/3 + 4/1)/2
    assert L.aggregate(x, m, "seq-mean-token-mean").item() == pytest.approx(3.0)
    # seq-mean-token-sum: (6 + 4)/2
    assert L.aggregate(x, m, "seq-mean-token-sum").item() == pytest.approx(5.0)
    # seq-mean-token-sum-norm with L = 10: 10 / (2 * 10)
    assert L.aggregate(x, m, "seq-mean-token-sum-norm", max_len=10).item() == pytest.approx(0.5)
    # global normalisers replace the local counts
    assert L.aggregate(x, m, "token-mean", num_tokens=8).item() == pytest.approx(10 / 8)
    assert L.aggregate(x, m, "seq-mean-token-sum", num_seqs=5).item() == pytest.approx(2.0)


def test_aggregate_skips_empty_rows():
    x = torch.tensor([[1.0, 3.0], [7.0, 7.0]])
    m = torch.tensor([[1, 1], [0, 0]])
    assert L.aggregate(x, m, "seq-mean-token-mean").item() == pytest.approx(2.0)
    assert L.aggregate(x, m, "seq-mean-token-sum").item() == pytest.approx(4.0)
    assert L.count_tokens_and_seqs(m) == (2, 1)


def test_ppo_hand_values():
    # ratios e^{0.5}=1.6487 (A=+1: clipped to 1.2), e^{-0.5}=0.6065 (A=-1: clipped to 0.8),
    # e^{0.1}=1.1052 (A=+2: inside the range), e^{0}=1 (A=-3)
    logp = torch.tensor([[0.5, -0.5, 0.1, 0.0]])
    old = torch.zeros(1, 4)
    adv = torch.tensor([[1.0, -1.0, 2.0, -3.0]])
    out = L.ppo_policy_loss(logp, old, adv, clip_low=0.2)
    r = np.exp([0.5, -0.5, 0.1, 0.0])
    expected_tokens = [
        max(-1 * r[0], -1 * 1.2),  # = -1.2 (clipped)
        max(1 * r[1], 1 * 0.8),  # = 0.8 (clipped)
        -2 * r[2],
        3 * r[3],
    ]
    assert out.loss.item() == pytest.approx(np.mean(expected_tokens), rel=1e-6)
    assert out.metrics["clip_frac"].item() == pytest.approx(0.5)
    assert out.metrics["clip_frac_high"].item() == pytest.approx(0.25)
    assert out.metrics["clip_frac_low"].item() == pytest.approx(0.25)
    k3 = (r - 1) - np.log(r)
    assert out.metrics["approx_kl"].item() == pytest.approx(k3.mean(), rel=1e-6)
    assert out.metrics["ratio_mean"].item() == pytest.approx(r.mean(), rel=1e-6)
    assert out.metrics["ratio_min"].item() == pytest.approx(r.min(), rel=1e-6)
    assert out.metrics["ratio_max"].item() == pytest.approx(r.max(), rel=1e-6)


def test_ppo_ratio_extremes_ignore_masked_tokens_and_merge():
    # the masked token's ratio e^{3} would be the maximum if it counted
    logp = torch.tensor([[0.5, -0.5, 3.0], [0.0, 0.0, 0.0]])
    old = torch.zeros(2, 3)
    adv = torch.ones(2, 3)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    out = L.ppo_policy_loss(logp, old, adv, mask)
    assert out.metrics["ratio_min"].item() == pytest.approx(np.exp(-0.5), rel=1e-6)
    assert out.metrics["ratio_max"].item() == pytest.approx(np.exp(0.5), rel=1e-6)
    # a micro-batch without valid tokens gives the identities of the min / max merge
    empty = L.ppo_policy_loss(logp[1:], old[1:], adv[1:], mask[1:])
    assert empty.metrics["ratio_min"].item() == float("inf")
    assert empty.metrics["ratio_max"].item() == float("-inf")
    merged = L.merge_metrics({}, empty.metrics)
    L.merge_metrics(merged, out.metrics)
    assert merged["ratio_min"].item() == out.metrics["ratio_min"].item()
    assert merged["ratio_max"].item() == out.metrics["ratio_max"].item()


def test_ppo_asymmetric_clip_and_dual_clip():
    # ratio e^{0.24} = 1.271: inside clip-higher 0.28, outside 0.2
    logp = torch.tensor([[0.24]])
    adv = torch.tensor([[1.0]])
    sym = L.ppo_policy_loss(logp, torch.zeros(1, 1), adv, clip_low=0.2)
    asym = L.ppo_policy_loss(logp, torch.zeros(1, 1), adv, clip_low=0.2, clip_high=0.28)
    assert sym.loss.item() == pytest.approx(-1.2)
    assert asym.loss.item() == pytest.approx(-math.exp(0.24), rel=1e-6)
    # dual clip: A=-1, ratio e^{2}=7.39 -> clip loss 7.39 capped at c*|A| = 3
    big = L.ppo_policy_loss(
        torch.tensor([[2.0]]), torch.zeros(1, 1), torch.tensor([[-1.0]]), dual_clip=3.0
    )
    assert big.loss.item() == pytest.approx(3.0)
    assert big.metrics["dual_clip_frac"].item() == 1.0
    # the gradient of a dual-clipped token is zero
    lp = torch.tensor([[2.0]], requires_grad=True)
    L.ppo_policy_loss(lp, torch.zeros(1, 1), torch.tensor([[-1.0]]), dual_clip=3.0).loss.backward()
    assert lp.grad is not None and lp.grad.item() == 0.0


def test_ppo_gradient_at_ratio_one_is_minus_advantage():
    # at the first epoch ratio = 1 and d loss / d logp_t = -A_t / N_tok
    logp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    adv = torch.tensor([0.7])  # per-sequence, broadcast
    out = L.ppo_policy_loss(logp, logp.detach(), adv)
    out.loss.backward()
    assert logp.grad is not None
    torch.testing.assert_close(logp.grad, torch.full((1, 3), -0.7 / 3))
    assert out.metrics["clip_frac"].item() == 0.0
    assert out.metrics["approx_kl"].item() == 0.0


def test_log_ratio_clamp():
    out = L.ppo_policy_loss(
        torch.tensor([[100.0]]), torch.zeros(1, 1), torch.tensor([[-1.0]]), log_ratio_clamp=20.0
    )
    assert out.loss.item() == pytest.approx(math.exp(20.0), rel=1e-5)
    assert math.isfinite(out.metrics["approx_kl"].item())


def test_kl_estimators_hand_values():
    d = 0.5
    lp = torch.tensor([d])
    ref = torch.tensor([0.0])
    assert L.kl_estimate(lp, ref, estimator="k1").item() == pytest.approx(0.5)
    assert L.kl_estimate(lp, ref, estimator="k2").item() == pytest.approx(0.125)
    assert L.kl_estimate(lp, ref, estimator="k3").item() == pytest.approx(
        math.exp(-0.5) + 0.5 - 1, rel=1e-6
    )
    assert L.kl_estimate(-lp, ref, estimator="abs").item() == pytest.approx(0.5)
    # clamp: k3 of a huge Δ is capped at 10 and stays finite
    assert L.kl_estimate(torch.tensor([-100.0]), ref, estimator="k3").item() == 10.0
    assert L.kl_estimate(torch.tensor([-100.0]), ref, estimator="k1").item() == -10.0
    assert L.kl_estimate(torch.tensor([-100.0]), ref, estimator="k1", clamp=None).item() == -100.0


def test_kl_penalty_is_unbiased_on_samples():
    # E_{x~p}[k1] = E[k3] = KL(p||q): check on an exact categorical expectation
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    kl = float((p * (p / q).log()).sum())
    for est in ("k1", "k3"):
        per = L.kl_estimate(p.log(), q.log(), estimator=est, clamp=None)
        assert float((p * per).sum()) == pytest.approx(kl, rel=1e-12)


def test_value_loss_hand_values():
    v = torch.tensor([[1.0, 0.0]])
    v_old = torch.tensor([[0.5, 0.0]])
    ret = torch.tensor([[0.0, 1.0]])
    out = L.value_loss(v, v_old, ret, clip_range=0.2)
    # token 0: unclipped (1-0)^2=1, clipped v=0.7 -> 0.49, max 1; token 1: 1 and 1
    assert out.loss.item() == pytest.approx(0.5 * (1.0 + 1.0) / 2)
    assert out.metrics["value_clip_frac"].item() == 0.0
    # clipped term larger: v moved towards the target beyond the clip range
    out2 = L.value_loss(torch.tensor([[0.9]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]))
    # unclipped (0.1)^2 = 0.01, clipped v=0.2 -> 0.64
    assert out2.loss.item() == pytest.approx(0.5 * 0.64)
    assert out2.metrics["value_clip_frac"].item() == 1.0
    out3 = L.value_loss(
        torch.tensor([[0.9]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]), clip_range=None
    )
    assert out3.loss.item() == pytest.approx(0.5 * 0.01)


def _vf_clipfrac_float64(v, v_old, ret, mask, clip_range):
    """verl's ``vf_clipfrac`` (the clipped loss strictly greater than the unclipped one, a
    token mean) in float64: float32 inputs make V_old + (V − V_old) exactly V there."""
    v, v_old, ret = (np.asarray(x, dtype=np.float64) for x in (v, v_old, ret))
    v_clip = v_old + np.clip(v - v_old, -clip_range, clip_range)
    larger = (v_clip - ret) ** 2 > (v - ret) ** 2
    return float((larger & mask).sum() / mask.sum())


@pytest.mark.parametrize("seed", [0, 1])
def test_value_clip_frac_counts_only_tokens_the_clip_moved(seed):
    """V ~ N(0, 0.1), |V − V_old| ~ 0.07 against a clip of 0.2: few tokens are clipped, and
    rounding in V_old + clip(V − V_old) must not count as clipping (comparing the float32
    squared errors alone reports ~3.9 % where the float64 reference gives ~0.24 %). The loss
    itself is unchanged."""
    g = torch.Generator().manual_seed(seed)
    shape = (64, 2048)
    v = 0.1 * torch.randn(shape, generator=g)
    v_old = v + 0.07 * torch.randn(shape, generator=g)
    ret = v + 0.1 * torch.randn(shape, generator=g)
    mask = torch.rand(shape, generator=g) > 0.1
    out = L.value_loss(v, v_old, ret, mask, clip_range=0.2)
    want = _vf_clipfrac_float64(v, v_old, ret, mask.numpy(), 0.2)
    assert 0 < want < 0.005
    assert out.metrics["value_clip_frac"].item() == pytest.approx(want, abs=1e-5)
    # the squared errors alone count rounding as clipping on these inputs
    v_clip = v_old + (v - v_old).clamp(-0.2, 0.2)
    rounding = ((v_clip - ret).square() > (v - ret).square()) & mask
    assert float(rounding.sum() / mask.sum()) > want + 0.02
    # the loss is the same formula as before the fix: ½ max of the two squared errors
    per_token = 0.5 * torch.maximum((v - ret).square(), (v_clip - ret).square())
    expect = torch.where(mask, per_token, torch.zeros(())).sum() / mask.sum()
    assert torch.equal(out.loss, expect)


def test_metric_reductions_are_one_table():
    assert [L.metric_reduction(k) for k in ("ratio_min", "ratio_max", "clip_frac")] == [
        "min",
        "max",
        "sum",
    ]
    assert dict(L.METRIC_REDUCTIONS) == {"_min": "min", "_max": "max"}
    from rlhf_core import parallel

    assert L.metric_reduction is parallel.metric_reduction  # one home, in the bottom layer
    total = L.merge_metrics({}, {"a_min": torch.tensor(2.0), "a_max": torch.tensor(2.0),
                                 "a": torch.tensor(2.0)})  # fmt: skip
    L.merge_metrics(total, {"a_min": torch.tensor(1.0), "a_max": torch.tensor(3.0),
                            "a": torch.tensor(3.0)})  # fmt: skip
    assert {k: v.item() for k, v in total.items()} == {"a_min": 1.0, "a_max": 3.0, "a": 5.0}


def test_entropy_and_sft():
    ent = torch.tensor([[1.0, 2.0], [3.0, 9.0]])
    m = torch.tensor([[1, 1], [1, 0]])
    out = L.entropy_bonus(ent, m, coef=0.1)
    assert out.metrics["entropy"].item() == pytest.approx(2.0)
    assert out.loss.item() == pytest.approx(-0.2)
    # a zero coefficient keeps the metric and puts no entropy in the graph
    leaf = ent.clone().requires_grad_(True)
    assert L.entropy_bonus(leaf, m, coef=0.1).loss.requires_grad
    zero = L.entropy_bonus(leaf, m, coef=0.0)
    assert not zero.loss.requires_grad and zero.loss.item() == 0.0
    assert zero.metrics["entropy"].item() == pytest.approx(2.0)
    nll = L.sft_loss(torch.log(torch.tensor([[0.5, 0.25]])))
    assert nll.loss.item() == pytest.approx(-(math.log(0.5) + math.log(0.25)) / 2, rel=1e-6)


def test_bradley_terry_hand_values():
    rc = torch.tensor([1.0, 0.0, 2.0])
    rr = torch.tensor([0.0, 1.0, 2.0])
    out = L.bradley_terry_loss(rc, rr)
    expected = (math.log1p(math.exp(-1)) + math.log1p(math.exp(1)) + math.log(2)) / 3
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.metrics["accuracy"].item() == pytest.approx((1 + 0 + 0.5) / 3)
    assert out.metrics["margin"].item() == pytest.approx(0.0)
    with_margin = L.bradley_terry_loss(rc[:1], rr[:1], margin=0.5)
    assert with_margin.loss.item() == pytest.approx(math.log1p(math.exp(-0.5)), rel=1e-6)
    centred = L.bradley_terry_loss(rc[:1], rr[:1], center_coef=0.01)
    assert centred.loss.item() == pytest.approx(math.log1p(math.exp(-1)) + 0.01 * 1.0, rel=1e-6)


def test_dpo_hand_values():
    pc, pr = torch.tensor([-1.0]), torch.tensor([-3.0])
    rc, rr = torch.tensor([-2.0]), torch.tensor([-2.0])
    h = 2.0  # (-1 + 3) - 0
    beta = 0.1
    out = L.dpo_loss(pc, pr, rc, rr, beta=beta)
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-beta * h)), rel=1e-6)
    assert out.metrics["reward_chosen"].item() == pytest.approx(0.1)
    assert out.metrics["reward_rejected"].item() == pytest.approx(-0.1)
    assert out.metrics["reward_accuracy"].item() == 1.0
    smooth = L.dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=0.1)
    expected = 0.9 * math.log1p(math.exp(-0.2)) + 0.1 * math.log1p(math.exp(0.2))
    assert smooth.loss.item() == pytest.approx(expected, rel=1e-6)
    ipo = L.dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="ipo")
    assert ipo.loss.item() == pytest.approx((2.0 - 5.0) ** 2, rel=1e-6)


def test_dpo_gradient_direction():
    pc = torch.tensor([-2.0], requires_grad=True)
    pr = torch.tensor([-2.0], requires_grad=True)
    L.dpo_loss(pc, pr, torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.5).loss.backward()
    assert pc.grad is not None and pr.grad is not None
    assert pc.grad.item() < 0 < pr.grad.item()  # descent raises chosen, lowers rejected
    assert pc.grad.item() == pytest.approx(-0.5 * 0.5)  # -β σ(0)


def test_sequence_logprobs_and_explained_variance():
    lp = torch.tensor([[-1.0, -2.0, -5.0], [-4.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    torch.testing.assert_close(L.sequence_logprobs(lp, m), torch.tensor([-3.0, -4.0]))
    torch.testing.assert_close(L.sequence_logprobs(lp, m, average=True), torch.tensor([-1.5, -4]))
    r = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert L.explained_variance(r, r) == 1.0
    assert L.explained_variance(torch.full_like(r, 2.5), r) == pytest.approx(0.0)
    assert math.isnan(L.explained_variance(r, torch.ones_like(r)))


# ---------------------------------------------------------------------------------------------
# float64 reference on random batches


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("mode", L.AGGREGATIONS)
def test_ppo_matches_float64_reference(seed, mode):
    b = random_batch(seed)
    m = b["mask"].numpy()
    tok = ref_ppo_token(
        b["logp"].double().numpy(),
        b["old"].double().numpy(),
        b["adv"].double().numpy(),
        0.2,
        0.28,
        dual=3.0,
    )
    expected = ref_aggregate(tok, m, mode, max_len=9)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        out = L.ppo_policy_loss(
            b["logp"].to(dtype),
            b["old"].to(dtype),
            b["adv"].to(dtype),
            b["mask"],
            clip_low=0.2,
            clip_high=0.28,
            dual_clip=3.0,
            aggregation=mode,
            max_len=9,
        )
        assert out.loss.dtype == dtype
        assert out.loss.item() == pytest.approx(expected, rel=tol, abs=tol)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("est", L.KL_ESTIMATORS)
def test_kl_penalty_matches_float64_reference(seed, est):
    b = random_batch(seed, dtype=torch.float64)
    d = (b["logp"] - b["ref"]).numpy()
    expected = ref_aggregate(ref_kl(d, est), b["mask"].numpy(), "token-mean")
    out = L.kl_penalty(b["logp"], b["ref"], b["mask"], coef=0.5, estimator=est, clamp=None)
    assert out.metrics["kl"].item() == pytest.approx(expected, rel=1e-12)
    assert out.loss.item() == pytest.approx(0.5 * expected, rel=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_preference_losses_match_float64_reference(seed):
    g = np.random.default_rng(seed)
    rc, rr = g.normal(size=16), g.normal(size=16)
    bt = L.bradley_terry_loss(torch.tensor(rc), torch.tensor(rr), center_coef=0.01, margin=0.3)
    ref = np.mean(np.log1p(np.exp(-(rc - rr - 0.3)))) + 0.01 * np.mean((rc + rr) ** 2)
    assert bt.loss.item() == pytest.approx(ref, rel=1e-12)
    pc, pr, qc, qr = (g.normal(size=16) - 5 for _ in range(4))
    h = (pc - pr) - (qc - qr)
    beta, eps = 0.2, 0.1
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    ref_dpo = np.mean(-(1 - eps) * np.log(sig(beta * h)) - eps * np.log(sig(-beta * h)))
    args = [torch.tensor(a) for a in (pc, pr, qc, qr)]
    assert L.dpo_loss(*args, beta=beta, label_smoothing=eps).loss.item() == pytest.approx(
        ref_dpo, rel=1e-12
    )
    ref_ipo = np.mean((h - 1 / (2 * beta)) ** 2)
    assert L.dpo_loss(*args, beta=beta, loss_type="ipo").loss.item() == pytest.approx(
        ref_ipo, rel=1e-12
    )


# ---------------------------------------------------------------------------------------------
# micro-batch invariance: 1 micro-batch of 4 == 4 micro-batches of 1 (loss and gradients)


def _combined_loss(logp, old, ref, adv, ent, mask, mode, counts):
    nt, ns = counts
    kw = dict(aggregation=mode, num_tokens=nt, num_seqs=ns, max_len=9)
    return (
        L.ppo_policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28, dual_clip=3, **kw)
        + L.kl_penalty(logp, ref, mask, coef=0.05, **kw)
        + L.entropy_bonus(ent, mask, coef=0.01, **kw)
        + L.value_loss(ent, old, adv, mask, clip_range=0.2, **kw)
    )


@pytest.mark.parametrize("mode", L.AGGREGATIONS)
@pytest.mark.parametrize("seed", range(3))
def test_micro_batch_invariance(mode, seed):
    b = random_batch(seed, b=4, t=7, dtype=torch.float64)
    counts = L.count_tokens_and_seqs(b["mask"])

    def leaves():
        return (
            b["logp"].clone().requires_grad_(True),
            b["ent"].clone().requires_grad_(True),
        )

    # one micro-batch of four
    logp, ent = leaves()
    full = _combined_loss(logp, b["old"], b["ref"], b["adv"], ent, b["mask"], mode, counts)
    full.loss.backward()
    g_full = (logp.grad.clone(), ent.grad.clone())

    # four micro-batches of one, each trimmed to its own length (different padded widths)
    logp2, ent2 = leaves()
    total = torch.zeros((), dtype=torch.float64)
    metrics: dict[str, torch.Tensor] = {}
    for i in range(4):
        n = int(b["mask"][i].sum())
        sl = (slice(i, i + 1), slice(0, n))
        out = _combined_loss(
            logp2[sl], b["old"][sl], b["ref"][sl], b["adv"][sl], ent2[sl],
            b["mask"][sl], mode, counts,
        )  # fmt: skip
        out.loss.backward()
        total = total + out.loss.detach()
        L.merge_metrics(metrics, out.metrics)
    assert total.item() == pytest.approx(full.loss.item(), rel=1e-12, abs=1e-14)
    torch.testing.assert_close(logp2.grad, g_full[0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ent2.grad, g_full[1], rtol=1e-12, atol=1e-14)
    assert set(metrics) == set(full.metrics)
    for key, value in full.metrics.items():
        assert metrics[key].item() == pytest.approx(value.item(), rel=1e-12, abs=1e-14), key


def test_preference_micro_batch_invariance():
    g = torch.Generator().manual_seed(0)
    rc = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    rr = torch.randn(4, generator=g, dtype=torch.float64)
    full = L.bradley_terry_loss(rc, rr, center_coef=0.1)
    (g_full,) = torch.autograd.grad(full.loss, rc)
    parts = [L.bradley_terry_loss(rc[i : i + 1], rr[i : i + 1], center_coef=0.1, num_pairs=4)
             for i in range(4)]  # fmt: skip
    total = sum(p.loss for p in parts)
    (g_parts,) = torch.autograd.grad(total, rc)
    assert float(total.detach()) == pytest.approx(float(full.loss.detach()), rel=1e-12)
    torch.testing.assert_close(g_parts, g_full)
    acc = sum(float(p.metrics["accuracy"]) for p in parts)
    assert acc == pytest.approx(float(full.metrics["accuracy"]))


# ---------------------------------------------------------------------------------------------
# masking and errors


def test_masked_nan_does_not_leak():
    logp = torch.tensor([[-1.0, float("nan")], [-0.5, -0.2]], requires_grad=True)
    old = torch.tensor([[-1.1, float("inf")], [-0.4, float("-inf")]])
    m = torch.tensor([[1, 0], [1, 0]])
    out = L.ppo_policy_loss(logp, old, torch.tensor([1.0, -1.0]), m) + L.kl_penalty(
        logp, old, m, coef=0.1
    )
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert logp.grad is not None and torch.isfinite(logp.grad).all()
    assert logp.grad[0, 1] == 0 and logp.grad[1, 1] == 0
    assert all(torch.isfinite(v) for v in out.metrics.values())


def test_bf16_inputs_compute_in_float32():
    b = random_batch(0, dtype=torch.bfloat16)
    out = L.ppo_policy_loss(b["logp"], b["old"], b["adv"], b["mask"])
    assert out.loss.dtype == torch.float32


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: L.aggregate(torch.zeros(2, 2), None, "token-sum"), "aggregation mode"),
        (
            lambda: L.aggregate(torch.zeros(2, 2), None, "seq-mean-token-sum-norm"),
            "max_len",
        ),
        (lambda: L.aggregate(torch.zeros(2), None), r"\(B, T\)"),
        (lambda: L.aggregate(torch.zeros(2, 2), torch.ones(2, 3)), r"mask has shape \(2, 3\)"),
        (lambda: L.aggregate(torch.zeros(2, 2), None, num_tokens=0), "num_tokens=0"),
        (lambda: L.kl_estimate(torch.zeros(1), torch.zeros(1), estimator="k4"), "k4"),
        (
            lambda: L.ppo_policy_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(3)),
            "advantages has shape",
        ),
        (
            lambda: L.ppo_policy_loss(
                torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1), dual_clip=0.5
            ),
            "dual_clip=0.5",
        ),
        (
            lambda: L.ppo_policy_loss(
                torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1), clip_low=-0.1
            ),
            "clip_low=-0.1",
        ),
        (lambda: L.kl_penalty(torch.zeros(1, 1), torch.zeros(1, 1), coef=-1), "coef=-1"),
        (
            lambda: L.dpo_loss(*[torch.zeros(1)] * 4, loss_type="hinge"),
            "loss_type='hinge'",
        ),
        (lambda: L.dpo_loss(*[torch.zeros(1)] * 4, beta=0.0), "beta=0.0"),
        (lambda: L.bradley_terry_loss(torch.zeros(2), torch.zeros(3)), "rejected_rewards"),
        (lambda: L.value_loss(*[torch.zeros(1, 1)] * 3, clip_range=0.0), "clip_range=0.0"),
    ],
)
def test_errors_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_loss_output_addition_rejects_clashing_metrics():
    a = L.LossOutput(torch.tensor(1.0), {"x": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="x"):
        _ = a + a


@pytest.mark.parametrize("clamp", [10.0, 2.0, None])
@pytest.mark.parametrize("est", L.KL_ESTIMATORS)
def test_kl_estimate_matches_ops_kl(est, clamp):
    """The differentiable estimator and the Rust kernel use the same definitions."""
    from rlhf_core import ops

    g = np.random.default_rng(1)
    delta = np.concatenate([g.normal(0, 1, 64), [-30.0, -11.0, -3.0, 0.0, 3.0, 11.0, 40.0]])
    lp = g.normal(-2, 1, delta.shape)
    ref = lp - delta
    expected = ops.kl(lp, ref, estimator=est, clamp=clamp)
    got = L.kl_estimate(torch.tensor(lp), torch.tensor(ref), estimator=est, clamp=clamp)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_every_name_of_the_former_module_is_importable():
    """losses.py became a package by concern; every name it exported stays at
    ``rlhf_core.losses.X``."""
    former = [
        "AGGREGATIONS", "KL_ESTIMATORS", "DPO_LOSS_TYPES", "LossOutput", "aggregate",
        "count_tokens_and_seqs", "METRIC_REDUCTIONS", "metric_reduction", "merge_metrics",
        "kl_estimate", "ppo_policy_loss", "value_loss", "entropy_bonus", "kl_penalty",
        "sft_loss", "bradley_terry_loss", "dpo_loss", "sequence_logprobs", "explained_variance",
    ]  # fmt: skip
    assert set(former) <= set(L.__all__)
    for name in former:
        assert getattr(L, name) is not None, name
