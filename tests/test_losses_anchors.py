"""The 2026 policy losses and token selections against small re-typed versions of each
anchor's formula (as the research note ``rl-2026-techniques.md`` describes them, with the
anchor file and function named in each docstring): values **and gradients**, ours in float32
against the anchors' formulas in float64, on random batches that hold an all-masked row, a
length-1 row, extreme ratios and NaN at masked positions (the references get finite values
there: they multiply by the mask, ours never reads those positions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlhf_core import losses as L
from rlhf_core.advantages import token_masks as TM

F64 = torch.float64


def batch(seed: int, *, b: int = 6, t: int = 9, extreme: bool = True, per_token_adv=False):
    """Random (B, T) inputs: row 0 all masked, row 1 one valid token, rows 2.. random lengths;
    log ratios ~ N(0, 0.3) with a few at ±12..±25 when ``extreme``."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(2, t + 1, (b,), generator=g)
    lens[0], lens[1] = 0, 1
    mask = torch.arange(t)[None, :] < lens[:, None]
    lp = -torch.rand(b, t, generator=g, dtype=F64) * 3 - 0.05
    delta = 0.3 * torch.randn(b, t, generator=g, dtype=F64)
    if extreme:
        pick = torch.rand(b, t, generator=g) < 0.08
        big = (12 + 13 * torch.rand(b, t, generator=g, dtype=F64)) * torch.sign(
            torch.randn(b, t, generator=g, dtype=F64)
        )
        delta = torch.where(pick, big, delta)
    old = lp - delta
    adv = torch.randn(b, t if per_token_adv else 1, generator=g, dtype=F64)
    adv = adv if per_token_adv else adv[:, 0]
    return mask, lp, old, adv


def ours_inputs(mask, lp, old, adv):
    """float32 leaves for our losses, NaN / inf at masked positions."""
    lp32 = torch.where(mask, lp, torch.full_like(lp, float("nan"))).float().requires_grad_(True)
    old32 = torch.where(mask, old, torch.full_like(old, float("inf"))).float()
    if adv.dim() == 2:
        adv = torch.where(mask, adv, torch.full_like(adv, float("nan")))
    return lp32, old32, adv.float()


def ref_leaf(lp):
    return lp.clone().requires_grad_(True)


def adv2d(adv, like):
    return adv[:, None].expand_as(like) if adv.dim() == 1 else adv


def verl_agg_loss(loss_mat, mask, mode):
    """verl ``core_algos.agg_loss``: token-mean = Σ m·ℓ / Σ m; seq-mean-token-mean = mean
    over sequences with a valid token of Σ_t m·ℓ / (Σ_t m + 1e-8)."""
    m = mask.to(F64)
    if mode == "token-mean":
        return (loss_mat * m).sum() / m.sum()
    seq_mask = (m.sum(-1) > 0).to(F64)
    seq = (loss_mat * m).sum(-1) / (m.sum(-1) + 1e-8)
    return (seq * seq_mask).sum() / seq_mask.sum()


def trl_per_sequence_mean(per_token, mask):
    """TRL ``GRPOTrainer._compute_loss`` for ``loss_type`` "grpo" / "sapo": the mean over
    every row (all-masked rows included) of Σ_t m·ℓ / clamp(Σ_t m, 1)."""
    m = mask.to(F64)
    return ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1.0)).mean()


def check(ours_loss, ours_leaf, ref_loss, ref_leaf_, mask, *, rtol=2e-5):
    (g_ref,) = torch.autograd.grad(ref_loss, ref_leaf_)
    ours_loss.backward()
    assert ours_loss.dtype == torch.float32
    scale = max(1.0, abs(float(ref_loss.detach())))
    assert float(ours_loss.detach()) == pytest.approx(float(ref_loss.detach()), rel=rtol, abs=rtol * scale)
    g = ours_leaf.grad.double()
    assert torch.isfinite(g).all()
    assert (g[~mask] == 0).all()
    gscale = max(1.0, float(g_ref.abs().max()))
    torch.testing.assert_close(g[mask], g_ref[mask], rtol=rtol, atol=rtol * gscale)


# ---------------------------------------------------------------------------------------------
# GSPO / GSPO-token


def verl_gspo(old, lp, adv, mask, clip_low, clip_high):
    """verl ``core_algos.compute_policy_loss_gspo``: the GSPO-token ratio
    sg(log s_b) + lp − sg(lp), clamped at 10 from above, PPO clip, ``seq-mean-token-mean``
    forced."""
    m = mask.to(F64)
    nkl = lp - old
    seq_len = m.sum(-1).clamp(min=1)
    nkl_seq = (nkl * m).sum(-1) / seq_len
    log_s = lp - lp.detach() + nkl_seq.detach()[:, None]
    s = torch.exp(torch.clamp(log_s, max=10.0))
    a = adv2d(adv, lp)
    pg = torch.maximum(-a * s, -a * torch.clamp(s, 1 - clip_low, 1 + clip_high))
    return verl_agg_loss(pg, mask, "seq-mean-token-mean")


def trl_gspo(lp, old, adv, mask, eps_low, eps_high, loss_type="grpo"):
    """TRL ``GRPOTrainer._compute_loss`` with ``importance_sampling_level="sequence"``: the
    (B, 1) log weight Σ m·Δ / clamp(Σ m, 1), no clamp, −min(c1·A, clip(c1)·A)."""
    m = mask.to(F64)
    liw = ((lp - old) * m).sum(-1) / m.sum(-1).clamp(min=1.0)
    c1 = torch.exp(liw)[:, None]
    c2 = torch.clamp(c1, 1 - eps_low, 1 + eps_high)
    a = adv2d(adv, lp)
    per_token = -torch.minimum(c1 * a, c2 * a)
    if loss_type == "grpo":
        return trl_per_sequence_mean(per_token, mask)
    return (per_token * m).sum() / m.sum()  # "dapo": the batch's active tokens


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("per_token_adv", [False, True])
def test_gspo_token_is_verls_gspo(seed, per_token_adv):
    mask, lp, old, adv = batch(seed, per_token_adv=per_token_adv)
    # verl clamps log s at 10 from above only, ours at ±10: keep the sequence means above -10
    old = torch.where(lp - old < -10, lp + 5.0, old)
    ref = ref_leaf(lp)
    expected = verl_gspo(old, ref, adv, mask, 3e-4, 4e-4)
    lp32, old32, adv32 = ours_inputs(mask, lp, old, adv)
    out = L.gspo_loss(lp32, old32, adv32, mask, importance_sampling_level="sequence_token")
    check(out.loss, lp32, expected, ref, mask)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    "loss_type, mode", [("grpo", "seq-mean-token-mean"), ("dapo", "token-mean")]
)
def test_gspo_sequence_is_trls_sequence_level(seed, loss_type, mode):
    mask, lp, old, adv = batch(seed)
    ref = ref_leaf(lp)
    expected = trl_gspo(ref, old, adv, mask, 0.2, 0.28, loss_type)
    lp32, old32, adv32 = ours_inputs(mask, lp, old, adv)
    b = mask.shape[0]
    # TRL's "grpo" divides by every row, all-masked ones included: num_seqs = B
    kw = {"num_seqs": b} if loss_type == "grpo" else {}
    out = L.gspo_loss(lp32, old32, adv32, mask, clip_low=0.2, clip_high=0.28,
                      log_ratio_clamp=None, aggregation=mode, **kw)  # fmt: skip
    check(out.loss, lp32, expected, ref, mask)


@pytest.mark.parametrize("seed", range(3))
def test_gspo_and_gspo_token_agree_on_per_sequence_advantages(seed):
    """With one advantage per sequence and seq-mean-token-mean, GSPO-token's gradient is
    GSPO's (the research note, §2)."""
    mask, lp, old, adv = batch(seed, extreme=False)
    grads = []
    for level in ("sequence", "sequence_token"):
        leaf = lp.clone().requires_grad_(True)
        out = L.gspo_loss(leaf, old, adv, mask, importance_sampling_level=level, clip_low=0.05)
        out.loss.backward()
        grads.append((float(out.loss.detach()), leaf.grad))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-12)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-10, atol=1e-12)


def test_sequence_ratio_hand_values():
    # one row, two valid tokens with Δ = 0.2 and 0.4: s = exp(0.3)
    lp = torch.tensor([[0.2, 0.4, 9.0]], dtype=F64, requires_grad=True)
    old = torch.zeros(1, 3, dtype=F64)
    mask = torch.tensor([[True, True, False]])
    lr = L.log_importance_ratio(lp, old, mask, level="sequence")
    torch.testing.assert_close(lr, torch.tensor([[0.3, 0.3, 0.0]], dtype=F64))
    out = L.gspo_loss(lp, old, torch.tensor([1.0], dtype=F64), mask, clip_low=1.0, clip_high=1.0)
    out.loss.backward()
    # ℓ = −s (inside the clip range); ∂ℓ/∂lp_t = −s/L_b = −exp(0.3)/2 on each valid token
    assert float(out.loss.detach()) == pytest.approx(-math.exp(0.3), rel=1e-12)
    torch.testing.assert_close(lp.grad, torch.tensor([[-math.exp(0.3) / 2] * 2 + [0.0]], dtype=F64))


# ---------------------------------------------------------------------------------------------
# CISPO


def verl_cispo(old, lp, adv, mask, clip_low, clip_high, mode):
    """verl ``core_algos.compute_policy_loss_cispo``: log r clamped ±20,
    −A·sg(clip(r, 1 − low, 1 + high))·lp, ``agg_loss``."""
    ratio = torch.exp(torch.clamp(lp - old, -20.0, 20.0))
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    pg = -adv2d(adv, lp) * clipped.detach() * lp
    return verl_agg_loss(pg, mask, mode)


def trl_cispo(lp, old, adv, mask, epsilon_high):
    """TRL ``loss_type="cispo"``: −sg(min(r, epsilon_high))·A·lp, an absolute cap, no lower
    bound, normalised by the batch's active tokens."""
    coef = torch.exp(lp - old)
    w = torch.clamp(coef, max=epsilon_high).detach()
    per_token = -w * adv2d(adv, lp) * lp
    m = mask.to(F64)
    return (per_token * m).sum() / m.sum()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
@pytest.mark.parametrize("per_token_adv", [False, True])
def test_cispo_with_verls_bounds_is_verls_cispo(seed, mode, per_token_adv):
    mask, lp, old, adv = batch(seed, per_token_adv=per_token_adv)
    ref = ref_leaf(lp)
    expected = verl_cispo(old, ref, adv, mask, 0.2, 0.28, mode)
    lo, hi = L.cispo_bounds(0.2, 0.28)
    lp32, old32, adv32 = ours_inputs(mask, lp, old, adv)
    out = L.cispo_loss(lp32, old32, adv32, mask, ratio_min=lo, ratio_max=hi, aggregation=mode)
    check(out.loss, lp32, expected, ref, mask)
    # verl's pg_clipfrac: ratio outside the range, token mean
    ratio = torch.exp(torch.clamp(lp - old, -20, 20))
    frac = ((((ratio < lo) | (ratio > hi)) & mask).sum() / mask.sum()).item()
    assert out.metrics["clip_frac"].item() == pytest.approx(frac, abs=1e-7)


@pytest.mark.parametrize("seed", range(4))
def test_cispo_with_an_absolute_cap_is_trls_cispo(seed):
    mask, lp, old, adv = batch(seed)
    ref = ref_leaf(lp)
    expected = trl_cispo(ref, old, adv, mask, 5.0)
    lp32, old32, adv32 = ours_inputs(mask, lp, old, adv)
    out = L.cispo_loss(lp32, old32, adv32, mask, ratio_max=5.0, log_ratio_clamp=None)
    check(out.loss, lp32, expected, ref, mask)


def test_cispo_keeps_the_gradient_of_capped_tokens():
    """Unlike PPO's clip: a token whose ratio is above the cap still gets −cap·A·∇lp."""
    lp = torch.tensor([[math.log(3.0)]], dtype=F64, requires_grad=True)
    old = torch.zeros(1, 1, dtype=F64)
    L.cispo_loss(lp, old, torch.tensor([2.0], dtype=F64), ratio_max=1.2).loss.backward()
    assert lp.grad.item() == pytest.approx(-1.2 * 2.0)
    ppo = lp.detach().clone().requires_grad_(True)
    L.ppo_policy_loss(ppo, old, torch.tensor([2.0], dtype=F64), clip_low=0.2).loss.backward()
    assert ppo.grad.item() == 0.0


# ---------------------------------------------------------------------------------------------
# SAPO


def sapo_gate(ratio, adv, tau_pos, tau_neg):
    taus = torch.where(adv > 0, torch.full_like(ratio, tau_pos), torch.full_like(ratio, tau_neg))
    return torch.sigmoid(taus * (ratio - 1)) * (4.0 / taus)


def verl_sapo(old, lp, adv, mask, tau_pos=1.0, tau_neg=1.05):
    """verl ``core_algos.compute_policy_loss_sapo``: log r clamped ±20, gate
    (4/τ)·σ(τ(r − 1)) with τ by the sign of A, −gate·A, ``seq-mean-token-mean`` forced."""
    ratio = torch.exp(torch.clamp(lp - old, -20.0, 20.0))
    a = adv2d(adv, lp)
    return verl_agg_loss(-sapo_gate(ratio, a, tau_pos, tau_neg) * a, mask, "seq-mean-token-mean")


def trl_sapo(lp, old, adv, mask, tau_pos=1.0, tau_neg=1.05):
    """TRL ``loss_type="sapo"`` (``get_sapo_token_loss``): the same gate on exp(lp − old), no
    clamp, TRL's per-sequence mean over every row."""
    a = adv2d(adv, lp)
    return trl_per_sequence_mean(-sapo_gate(torch.exp(lp - old), a, tau_pos, tau_neg) * a, mask)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("per_token_adv", [False, True])
def test_sapo_is_verls_sapo(seed, per_token_adv):
    mask, lp, old, adv = batch(seed, per_token_adv=per_token_adv)
    ref = ref_leaf(lp)
    expected = verl_sapo(old, ref, adv, mask)
    lp32, old32, adv32 = ours_inputs(mask, lp, old, adv)
    out = L.sapo_loss(lp32, old32, adv32, mask)
    check(out.loss, lp32, expected, ref, mask)


@pytest.mark.parametrize("seed", range(4))
def test_sapo_is_trls_sapo(seed):
    mask, lp, old, adv = batch(seed)
    old = torch.where((lp - old).abs() > 20, lp, old)  # TRL has no clamp: stay in range
    ref = ref_leaf(lp)
    expected = trl_sapo(ref, old, adv, mask, 1.3, 0.7)
    lp32, old32, adv32 = ours_inputs(mask, lp, old, adv)
    out = L.sapo_loss(lp32, old32, adv32, mask, temperature_pos=1.3, temperature_neg=0.7,
                      log_ratio_clamp=None, num_seqs=mask.shape[0])  # fmt: skip
    check(out.loss, lp32, expected, ref, mask)


def test_sapo_on_policy_gradient_is_vanilla_policy_gradient():
    """df/dr = 1 at r = 1 for either temperature: the first-epoch gradient is −A·∇lp / L."""
    lp = torch.tensor([[-1.0, -2.0, -0.5]], dtype=F64, requires_grad=True)
    adv = torch.tensor([[0.7, -0.4, 1.1]], dtype=F64)
    out = L.sapo_loss(lp, lp.detach(), adv, aggregation="token-mean")
    out.loss.backward()
    torch.testing.assert_close(lp.grad, -adv / 3)
    # the gate on-policy is 4/τ · ½
    assert out.metrics["soft_gate_mean"].item() == pytest.approx((2 / 1.0 * 2 + 2 / 1.05) / 3)


# ---------------------------------------------------------------------------------------------
# Clip-Cov and KL-Cov


def verl_cov_all(lp, adv, mask):
    """verl's covariance (``compute_policy_loss_clip_cov``): (A − masked_mean A)·(lp −
    masked_mean lp) over the micro-batch."""
    m = mask.to(F64)
    a = adv2d(adv, lp)
    mean_a = (a * m).sum() / m.sum()
    mean_lp = (lp.detach() * m).sum() / m.sum()
    return (a - mean_a) * (lp.detach() - mean_lp)


def verl_clip_cov(old, lp, adv, mask, corr, clip_low, clip_high):
    """verl ``compute_policy_loss_clip_cov`` given its ``corr`` (0 on the chosen tokens): no
    log-ratio clamp, PPO clip, loss × corr, ``agg_loss`` token-mean."""
    ratio = torch.exp(lp - old)
    a = adv2d(adv, lp)
    pg = torch.maximum(-a * ratio, -a * torch.clamp(ratio, 1 - clip_low, 1 + clip_high))
    return verl_agg_loss(pg * corr, mask, "token-mean")


def verl_kl_cov(old, lp, adv, mask, kl_cov_ratio, ppo_kl_coef):
    """verl ``compute_policy_loss_kl_cov``: −A·r on every token, plus coef·|log r| on the
    top-k = max(1, ⌊ratio·N⌋) valid tokens by covariance (computed on the valid tokens)."""
    nkl = lp - old
    ratio = torch.exp(nkl)
    a = adv2d(adv, lp)
    pg = -a * ratio
    pg_kl = -a * ratio + ppo_kl_coef * nkl.abs()
    flat_valid = torch.nonzero(mask.reshape(-1), as_tuple=True)[0]
    va, vl = a[mask].detach(), lp[mask].detach()
    cov = (va - va.mean()) * (vl - vl.mean())
    k = max(1, int(len(cov) * kl_cov_ratio))
    top = flat_valid[torch.topk(cov, k, largest=True).indices]
    chosen = torch.zeros(mask.numel(), dtype=torch.bool)
    chosen[top] = True
    chosen = chosen.reshape(mask.shape)
    return verl_agg_loss(torch.where(chosen, pg_kl, pg), mask, "token-mean"), chosen


@pytest.mark.parametrize("seed", range(4))
def test_clip_cov_is_verls_clip_cov(seed):
    mask, lp, old, adv = batch(seed, t=14, extreme=False)
    adv = adv * 3  # covariances above lb = 1 exist
    cov_ref = verl_cov_all(lp, adv, mask)
    cov = TM.covariance_scores(lp, adv, mask)
    torch.testing.assert_close(cov[mask], cov_ref[mask], rtol=1e-12, atol=1e-12)
    ratio = torch.exp(lp - old)
    a = adv2d(adv, lp)
    clipped = (-a * torch.clamp(ratio, 0.8, 1.2) > -a * ratio) & mask  # verl's clip_by_origin
    lb, ub, r = 0.2, 5.0, 0.3
    candidates = mask & (cov_ref > lb) & (cov_ref < ub) & ~clipped
    sel = TM.clip_cov_mask(cov, mask, ratio=r, lb=lb, ub=ub, seed=seed, exclude=clipped)
    k = max(int(r * int(mask.sum())), 1)
    assert int(sel.sum()) == min(k, int(candidates.sum())) > 0
    assert not (sel & ~candidates).any()
    ref = ref_leaf(lp)
    expected = verl_clip_cov(old, ref, adv, mask, (~sel).to(F64), 0.2, 0.2)
    lp32, old32, adv32 = ours_inputs(mask, lp, old, adv)
    out = L.clip_cov_loss(lp32, old32, adv32, mask, selected=sel, log_ratio_clamp=None)
    check(out.loss, lp32, expected, ref, mask)
    assert out.metrics["clip_cov_frac"].item() == pytest.approx(float(sel.sum() / mask.sum()))
    # the draw is seeded: the same seed gives the same tokens
    again = TM.clip_cov_mask(cov, mask, ratio=r, lb=lb, ub=ub, seed=seed, exclude=clipped)
    assert torch.equal(sel, again)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("per_token_adv", [False, True])
def test_kl_cov_is_verls_kl_cov(seed, per_token_adv):
    mask, lp, old, adv = batch(seed, t=14, extreme=False, per_token_adv=per_token_adv)
    ref = ref_leaf(lp)
    expected, chosen_ref = verl_kl_cov(old, ref, adv, mask, 0.15, 1.0)
    cov = TM.covariance_scores(lp, adv, mask)
    sel = TM.kl_cov_mask(cov, mask, ratio=0.15)
    assert torch.equal(sel, chosen_ref)
    lp32, old32, adv32 = ours_inputs(mask, lp, old, adv)
    out = L.kl_cov_loss(lp32, old32, adv32, mask, selected=sel, ppo_kl_coef=1.0,
                        log_ratio_clamp=None)  # fmt: skip
    check(out.loss, lp32, expected, ref, mask)
    nkl = (lp - old).abs()
    assert out.metrics["ppo_kl"].item() == pytest.approx(float(nkl[mask].mean()), rel=1e-5)


def test_selection_counts_follow_verl():
    assert TM.selection_count(2e-4, 100) == 1  # at least one
    assert TM.selection_count(0.1, 95) == 9  # floor
    assert TM.selection_count(0.5, 0) == 0  # nothing valid, nothing chosen
    mask = torch.zeros(2, 3, dtype=torch.bool)
    cov = torch.zeros(2, 3, dtype=F64)
    assert not TM.kl_cov_mask(cov, mask, ratio=0.5).any()
    assert not TM.clip_cov_mask(cov, mask, ratio=0.5, lb=-1, ub=1, seed=0).any()


# ---------------------------------------------------------------------------------------------
# top-entropy quantile


def trl_high_entropy_mask(entropies, mask, threshold):
    """TRL ``GRPOTrainer.get_high_entropy_mask`` on one process: τ = torch.quantile of the
    valid entropies at ``threshold`` = 1 − top_entropy_quantile; keep H ≥ τ on valid tokens."""
    valid = entropies[mask].float()
    tau = torch.quantile(valid, threshold)
    return ((entropies * mask.float()) >= tau) & mask


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("rho", [0.0, 0.2, 0.5, 0.999])
def test_top_entropy_mask_is_trls(seed, rho):
    mask, _, _, _ = batch(seed, t=12)
    g = torch.Generator().manual_seed(100 + seed)
    ent = (torch.rand(mask.shape, generator=g) * 3).float()
    ent[2, 0] = ent[3, 0] = ent.max() + 1.0  # a tie at the top
    ours = TM.top_entropy_mask(ent, mask, rho)
    theirs = trl_high_entropy_mask(ent, mask, 1.0 - rho)
    assert torch.equal(ours, theirs)
    assert int(ours.sum()) >= 1
    if rho == 0.0:  # only the maximum (and its ties)
        assert int(ours.sum()) == 2
    assert torch.equal(TM.top_entropy_mask(ent, mask, 1.0), mask)
    assert not TM.top_entropy_mask(ent, torch.zeros_like(mask), rho).any()


def test_token_weights_leave_the_denominator_alone():
    """TRL multiplies its entropy mask into the per-token loss; the normaliser still counts
    every valid token."""
    lp = torch.tensor([[-1.0, -2.0, -0.5, -0.3]], dtype=F64, requires_grad=True)
    adv = torch.tensor([1.0], dtype=F64)
    keep = torch.tensor([[1.0, 0.0, 1.0, 0.0]], dtype=F64)
    out = L.ppo_policy_loss(lp, lp.detach(), adv, token_weights=keep)
    assert float(out.loss.detach()) == pytest.approx(-2 / 4)
    out.loss.backward()
    torch.testing.assert_close(lp.grad, -keep / 4)


# ---------------------------------------------------------------------------------------------
# degenerate batches and micro-batch invariance, every new loss


def _new_losses(lp, old, adv, mask, sel, **kw):
    return {
        "gspo": L.gspo_loss(lp, old, adv, mask, **kw),
        "gspo_token": L.gspo_loss(
            lp, old, adv, mask, importance_sampling_level="sequence_token", **kw
        ),
        "cispo": L.cispo_loss(lp, old, adv, mask, ratio_max=5.0, **kw),
        "sapo": L.sapo_loss(lp, old, adv, mask, **kw),
        "sapo_seq": L.sapo_loss(lp, old, adv, mask, importance_sampling_level="sequence", **kw),
        "clip_cov": L.clip_cov_loss(lp, old, adv, mask, selected=sel, **kw),
        "kl_cov": L.kl_cov_loss(lp, old, adv, mask, selected=sel, **kw),
    }


def test_all_masked_batch_gives_zero_loss_and_gradient():
    mask = torch.zeros(3, 4, dtype=torch.bool)
    lp = torch.full((3, 4), float("nan"), requires_grad=True)
    old = torch.full((3, 4), float("inf"))
    adv = torch.tensor([1.0, float("nan"), -2.0])
    for name, out in _new_losses(lp, old, adv, mask, mask).items():
        (g,) = torch.autograd.grad(out.loss, lp)
        assert out.loss.item() == 0.0, name
        assert (g == 0).all(), name
        for key, v in out.metrics.items():
            assert not torch.isnan(v), (name, key)


def test_length_one_sequences_make_the_sequence_ratio_the_token_ratio():
    g = torch.Generator().manual_seed(3)
    lp = -torch.rand(5, 1, generator=g, dtype=F64)
    old = lp + 0.1 * torch.randn(5, 1, generator=g, dtype=F64)
    adv = torch.randn(5, generator=g, dtype=F64)
    tok = L.ppo_policy_loss(lp, old, adv, clip_low=0.1)
    for level in ("sequence", "sequence_token"):
        seq = L.ppo_policy_loss(lp, old, adv, clip_low=0.1, importance_sampling_level=level)
        assert float(seq.loss.detach()) == pytest.approx(float(tok.loss.detach()), rel=1e-14)


@pytest.mark.parametrize("mode", L.AGGREGATIONS)
@pytest.mark.parametrize("seed", range(2))
def test_new_losses_are_micro_batch_invariant(mode, seed):
    mask, lp, old, adv = batch(seed, b=4, t=7, extreme=False)
    sel = TM.kl_cov_mask(TM.covariance_scores(lp, adv, mask), mask, ratio=0.3)
    n_tok, n_seq = L.count_tokens_and_seqs(mask)
    kw = dict(aggregation=mode, num_tokens=n_tok, num_seqs=n_seq, max_len=9)
    leaf = lp.clone().requires_grad_(True)
    full = _new_losses(leaf, old, adv, mask, sel, **kw)
    for name, out in full.items():
        (g_full,) = torch.autograd.grad(out.loss, leaf)
        leaf2 = lp.clone().requires_grad_(True)
        total = torch.zeros((), dtype=F64)
        for i in range(4):
            n = max(int(mask[i].sum()), 1)
            sl = (slice(i, i + 1), slice(0, n))
            part = _new_losses(leaf2[sl], old[sl], adv[i : i + 1], mask[sl], sel[sl], **kw)[name]
            part.loss.backward()
            total = total + part.loss.detach()
        assert float(total) == pytest.approx(float(out.loss.detach()), rel=1e-12, abs=1e-14), name
        torch.testing.assert_close(leaf2.grad, g_full, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda z: L.gspo_loss(z, z, z[:, 0], importance_sampling_level="token"), "'token'"),
        (lambda z: L.ppo_policy_loss(z, z, z[:, 0], importance_sampling_level="seq"), "'seq'"),
        (lambda z: L.cispo_loss(z, z, z[:, 0], ratio_max=0.0), "ratio_max=0.0"),
        (lambda z: L.cispo_loss(z, z, z[:, 0], ratio_max=1.2, ratio_min=1.5), "ratio_min=1.5"),
        (lambda z: L.sapo_loss(z, z, z[:, 0], temperature_neg=0.0), "temperature_neg=0.0"),
        (lambda z: L.kl_cov_loss(z, z, z[:, 0], selected=z > 0, ppo_kl_coef=-1), "ppo_kl_coef"),
        (lambda z: L.clip_cov_loss(z, z, z[:, 0], selected=z[:, :1] > 0), "selected has shape"),
        (lambda z: L.ppo_policy_loss(z, z, z[:, 0], token_weights=z[:1]), "token_weights"),
        (lambda z: TM.top_entropy_mask(z, z > 0, 1.5), "top_entropy_quantile=1.5"),
        (lambda z: TM.kl_cov_mask(z, z > 0, ratio=0.0), "kl_cov_ratio=0.0"),
        (lambda z: TM.clip_cov_mask(z, z > 0, ratio=0.1, lb=5, ub=1, seed=0), "clip_cov_lb"),
    ],
)
def test_errors_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call(torch.zeros(2, 3))


def test_ppo_at_the_token_level_is_unchanged_bit_for_bit():
    """The token path of ppo_policy_loss computes what it did before the levels existed (the
    formula re-typed here, same float32 operations)."""
    g = torch.Generator().manual_seed(0)
    lp = -torch.rand(4, 6, generator=g)
    old = lp + 0.3 * torch.randn(4, 6, generator=g)
    adv = torch.randn(4, generator=g)
    mask = torch.rand(4, 6, generator=g) > 0.2
    out = L.ppo_policy_loss(lp, old, adv, mask, clip_low=0.2, clip_high=0.28, dual_clip=3.0)
    a = torch.where(mask, adv[:, None].expand_as(lp), torch.zeros(()))
    lr = torch.where(mask, lp - old, torch.zeros(())).clamp(-20, 20)
    r = torch.exp(lr)
    per = torch.maximum(-a * r, -a * r.clamp(0.8, 1.28))
    bound = -a * 3.0
    per = torch.where((a < 0) & (bound < per), bound, per)
    expect = torch.where(mask, per, torch.zeros(())).sum() / mask.sum().float()
    assert torch.equal(out.loss, expect)
    assert np.isfinite(out.metrics["approx_kl"].item())
