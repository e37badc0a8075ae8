"""Tests of rlhf_core.losses.correction against float64 re-typings of the anchors' formulas on
the same random inputs: TRL ``GRPOTrainer._generate_and_score_completions`` (the four
``vllm_importance_sampling_mode`` weights and the ``sampling/*`` metrics), verl
``rollout_corr_helper`` (``compute_rollout_correction_weights``, ``compute_is_metrics``,
``compute_offpolicy_metrics``), OpenRLHF ``PolicyLoss.forward`` (``icepop``, ``seq-mask-tis``)
and the "weight after the clip" loss of all three; edge cases (all-masked rows, empty
sequences, NaN at masked positions, overflowing sequence sums, extreme ratios, length 1).

The references below are written from the formulas in shared/research/rl-2026-techniques.md §1
and the anchors' code as read (TRL f2cd577, verl 1dda039, OpenRLHF 3c3be62), in numpy float64,
one row at a time; none of them calls rlhf_core."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlhf_core import losses as L
from rlhf_core.losses import correction as C

BOUND = 20.0

# ---------------------------------------------------------------------------------------------
# float64 references


def trl_weights(old, roll, m, mode, cmax, cmin):
    """TRL: diff = (old − roll)·mask; sequence modes sum it per row (no clamp); exp; truncate
    with clamp(min, max) or set 0 outside [min or −inf, max or +inf]. Sequence modes: (B, 1)."""
    diff = np.where(m, old - roll, 0.0)
    if mode.startswith("sequence"):
        diff = diff.sum(-1, keepdims=True)
    with np.errstate(over="ignore"):
        r = np.exp(diff)
    if mode.endswith("truncate"):
        lo = -np.inf if cmin is None else cmin
        hi = np.inf if cmax is None else cmax
        return np.clip(r, lo, hi)
    lo = -np.inf if cmin is None else cmin
    hi = np.inf if cmax is None else cmax
    return np.where((r < lo) | (r > hi), 0.0, r)


def verl_weights(old, roll, m, level, upper, lower):
    """verl compute_rollout_correction_weights: log ratio clamped to ±20 (token) or its masked
    sum clamped (sequence), exp, times the mask, then clamp(max=upper) (float threshold) or
    zero outside [lower, upper] ("lower_upper" threshold: IcePop)."""
    lr = old - roll
    if level == "token":
        raw = np.exp(np.clip(lr, -BOUND, BOUND))
    else:
        s = np.where(m, lr, 0.0).sum(-1, keepdims=True)
        raw = np.broadcast_to(np.exp(np.clip(s, -BOUND, BOUND)), lr.shape)
    raw = raw * m
    if lower is None:
        return np.minimum(raw, upper), raw
    keep = (raw >= lower) & (raw <= upper)
    return np.where(keep, raw, 0.0), raw


def openrlhf_weights(old, roll, m, kind, low, high):
    """OpenRLHF PolicyLoss: icepop = ρ·1[low ≤ ρ ≤ high]; seq-mask-tis = ρ·1[low ≤ g ≤ high]
    with g = exp(masked mean of log ρ per row); tis = clamp(ρ, low, high)."""
    lr = old - roll
    rho = np.exp(lr)
    if kind == "icepop":
        return rho * ((rho >= low) & (rho <= high))
    if kind == "seq-mask-tis":
        out = np.zeros_like(rho)
        for b in range(len(rho)):
            n = m[b].sum()
            g = math.exp(lr[b][m[b]].sum() / n) if n else math.nan
            out[b] = rho[b] * (low <= g <= high)
        return out
    return np.clip(rho, low, high)


def verl_is_metrics(w, raw, lr, m, level, upper, lower):
    """verl compute_is_metrics (without the seq_* extras), row by row."""
    lower = 1.0 / upper if lower is None else lower
    mm = lambda x: np.where(m, x, 0.0).sum() / m.sum()  # noqa: E731
    out = {}
    if level == "sequence":
        s = np.array([lr[b][m[b]].sum() for b in range(len(m))])
        out["rollout_is_max"] = math.exp(min(s.max(), BOUND))
        out["rollout_is_min"] = math.exp(s.min())
        out["rollout_is_ratio_fraction_high"] = float(np.mean(s > math.log(upper)))
        out["rollout_is_ratio_fraction_low"] = float(np.mean(s < math.log(lower)))
    else:
        out["rollout_is_ratio_fraction_high"] = mm(raw > upper)
        out["rollout_is_ratio_fraction_low"] = mm(raw < lower)
        out["rollout_is_max"] = w[m].max()
        out["rollout_is_min"] = w[m].min()
    out["rollout_is_mean"] = mm(w)
    wc = np.clip(w, 0.0, upper)
    mean_c = mm(wc)
    out["rollout_is_std"] = math.sqrt(max(mm(wc**2) - mean_c**2, 0.0)) if m.sum() > 1 else 0.0
    out["rollout_is_eff_sample_size"] = 1.0 / mm((wc / (mean_c + 1e-8)) ** 2)
    return out


def verl_offpolicy(old, roll, m):
    """verl compute_offpolicy_metrics: kl, k3_kl, chi2_token, chi2_seq."""
    mm = lambda x: np.where(m, x, 0.0).sum() / m.sum()  # noqa: E731
    lr = old - roll
    s = np.where(m, lr, 0.0).sum(-1)
    return {
        "kl": mm(roll - old),
        "k3_kl": mm(np.exp(lr) - lr - 1.0),
        "chi2_token": mm(np.exp(np.clip(lr, -BOUND, BOUND)) ** 2) - 1.0,
        "chi2_seq": float(np.mean(np.exp(2.0 * np.clip(s, -BOUND, BOUND)))) - 1.0,
    }


def trl_metrics(old, roll, m, w_trl, sequence_level):
    d = np.abs(old - roll)[m]
    flat = w_trl.flatten() if sequence_level else w_trl[m]
    return {
        "sampling/sampling_logp_difference/mean": d.mean(),
        "sampling/sampling_logp_difference/max": d.max(),
        "sampling/importance_sampling_ratio/min": flat.min(),
        "sampling/importance_sampling_ratio/mean": flat.mean(),
        "sampling/importance_sampling_ratio/max": flat.max(),
    }


def batch(seed, b=6, t=9, scale=0.3, min_len=1):
    """Logprobs of (b, t) right-padded rows with lengths in [min_len, t], the rollout's a
    perturbation of the trainer's; garbage (NaN) in the padding."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(min_len, t + 1, size=b)
    m = np.arange(t)[None, :] < lens[:, None]
    old = -rng.random((b, t)) * 4
    roll = old + scale * rng.standard_normal((b, t))
    old[~m] = np.nan
    roll[~m] = np.nan
    return old, roll, m


def t64(*xs):
    return [torch.from_numpy(np.ascontiguousarray(x)) for x in xs]


# ---------------------------------------------------------------------------------------------
# weights against the anchors

TRL_CASES = [
    ("token_truncate", 3.0, None),
    ("token_truncate", 2.0, 0.5),
    ("token_mask", 3.0, None),
    ("token_mask", 1.5, 0.8),
    ("token_mask", None, 0.9),
    ("sequence_truncate", 3.0, None),
    ("sequence_truncate", 2.0, 0.5),
    ("sequence_mask", 3.0, None),
    ("sequence_mask", 2.0, 0.5),
]


@pytest.mark.parametrize("mode,cmax,cmin", TRL_CASES)
@pytest.mark.parametrize("seed", range(4))
def test_weights_equal_trls_without_the_log_clamp(mode, cmax, cmin, seed):
    old, roll, m = batch(seed, scale=0.6)
    want = trl_weights(np.nan_to_num(old), np.nan_to_num(roll), m, mode, cmax, cmin)
    want = np.broadcast_to(want, old.shape) * m
    got = C.correction_weights(*t64(old, roll, m), mode=mode, clip_max=cmax, clip_min=cmin,
                               log_ratio_clamp=None)  # fmt: skip
    assert got.weights.dtype == torch.float64
    np.testing.assert_allclose(got.weights.numpy(), want, rtol=1e-12, atol=0)
    assert not got.weights.requires_grad


@pytest.mark.parametrize(
    "level,upper,lower", [("token", 2.0, None), ("token", 5.0, 0.5), ("sequence", 2.0, None),
                          ("sequence", 2.0, 0.5)]
)  # fmt: skip
@pytest.mark.parametrize("seed", range(4))
def test_weights_equal_verls(level, upper, lower, seed):
    old, roll, m = batch(seed, scale=0.5)
    want, _ = verl_weights(np.nan_to_num(old), np.nan_to_num(roll), m, level, upper, lower)
    mode = f"{level}_{'truncate' if lower is None else 'mask'}"
    got = C.correction_weights(*t64(old, roll, m), mode=mode, clip_max=upper, clip_min=lower)
    np.testing.assert_allclose(got.weights.numpy(), want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("kind,mode", [("icepop", "token_mask"), ("tis", "token_truncate"),
                                       ("seq-mask-tis", "geometric_mask")])  # fmt: skip
@pytest.mark.parametrize("seed", range(4))
def test_weights_equal_openrlhfs(kind, mode, seed):
    old, roll, m = batch(seed, scale=0.8)
    want = openrlhf_weights(np.nan_to_num(old), np.nan_to_num(roll), m, kind, 0.5, 5.0) * m
    got = C.correction_weights(*t64(old, roll, m), mode=mode, clip_max=5.0, clip_min=0.5)
    np.testing.assert_allclose(got.weights.numpy(), want, rtol=1e-12, atol=0)


def test_geometric_mask_with_verls_tight_bounds_rejects_whole_sequences():
    old, roll, m = batch(7, scale=1e-4)
    old[0, 0] = roll[0, 0] + 0.5  # one far-off token pulls row 0's geometric mean out
    got = C.correction_weights(*t64(old, roll, m), mode="geometric_mask", clip_max=1.001,
                               clip_min=0.999)  # fmt: skip
    assert got.rejected[0][m[0]].all() and not got.rejected[1:].any()
    assert (got.weights[0] == 0).all()


# ---------------------------------------------------------------------------------------------
# the weight after the clip: the anchors' form w · ℓ_clipped against weighted advantages


def anchor_weighted_loss(logp, old, adv, m, w, eps_low, eps_high, dual, n_tok):
    """verl / TRL / OpenRLHF: per-token clipped (and dual-clipped) PPO loss, times the weight,
    token-mean over the batch (float64 torch, differentiable in logp)."""
    ratio = torch.exp(logp - old)
    s1 = -adv * ratio
    s2 = -adv * ratio.clamp(1 - eps_low, 1 + eps_high)
    loss = torch.maximum(s1, s2)
    if dual is not None:
        loss = torch.where(adv < 0, torch.minimum(loss, -dual * adv), loss)
    loss = loss * w
    return torch.where(m, loss, torch.zeros((), dtype=loss.dtype)).sum() / n_tok


@pytest.mark.parametrize("mode", ["token_truncate", "token_mask", "sequence_mask",
                                  "geometric_mask"])  # fmt: skip
@pytest.mark.parametrize("dual", [None, 3.0])
@pytest.mark.parametrize("seed", range(3))
def test_weighted_advantages_equal_the_weight_after_the_clip(mode, dual, seed):
    old_np, roll_np, m_np = batch(seed, scale=0.7)
    rng = np.random.default_rng(100 + seed)
    old, roll, m = t64(np.nan_to_num(old_np), np.nan_to_num(roll_np), m_np)
    logp0 = old + 0.4 * torch.from_numpy(rng.standard_normal(old.shape))
    adv = torch.from_numpy(rng.standard_normal(old.shape[0]))[:, None].expand_as(old)
    cw = C.correction_weights(old, roll, m, mode=mode, clip_max=2.0, clip_min=0.6)
    n_tok = int(m.sum())
    a = logp0.clone().requires_grad_(True)
    want = anchor_weighted_loss(a, old, adv, m, cw.weights, 0.2, 0.28, dual, n_tok)
    want.backward()
    b = logp0.clone().requires_grad_(True)
    got = L.ppo_policy_loss(b, old, C.weighted_advantages(adv, cw.weights), m, clip_low=0.2,
                            clip_high=0.28, dual_clip=dual, log_ratio_clamp=None,
                            num_tokens=n_tok)  # fmt: skip
    got.loss.backward()
    torch.testing.assert_close(got.loss, want, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-12, atol=1e-15)
    # a rejected token gives no gradient
    if cw.rejected.any():
        assert (b.grad[cw.rejected] == 0).all()


def test_weighted_advantages_per_sequence_and_shape_errors():
    w = torch.tensor([[1.0, 2.0], [0.5, 0.0]])
    out = C.weighted_advantages(torch.tensor([1.0, -2.0]), w)
    torch.testing.assert_close(out, torch.tensor([[1.0, 2.0], [-1.0, 0.0]]))
    with pytest.raises(ValueError, match="advantages has shape"):
        C.weighted_advantages(torch.zeros(3), w)
    with pytest.raises(ValueError, match="advantages has shape"):
        C.weighted_advantages(torch.zeros(2, 3), w)


# ---------------------------------------------------------------------------------------------
# metrics against the anchors


@pytest.mark.parametrize(
    "mode,cmax,cmin",
    [("token_truncate", 2.0, None), ("token_mask", 5.0, 0.5), ("sequence_truncate", 2.0, None),
     ("sequence_mask", 2.0, 0.5)],
)  # fmt: skip
@pytest.mark.parametrize("seed", range(3))
def test_metrics_equal_the_anchors(mode, cmax, cmin, seed):
    old, roll, m = batch(seed, scale=0.4)
    o, r = np.nan_to_num(old), np.nan_to_num(roll)
    level = mode.split("_")[0]
    got = C.mismatch_metrics(*t64(old, roll, m), mode=mode, clip_max=cmax, clip_min=cmin,
                             log_ratio_clamp=None)  # fmt: skip
    w_trl = trl_weights(o, r, m, mode, cmax, cmin)
    want = trl_metrics(o, r, m, w_trl, level == "sequence")
    w_verl, raw = verl_weights(o, r, m, level, cmax, cmin)
    want.update({f"rollout_corr/{k}": v for k, v in verl_offpolicy(o, r, m).items()})
    want.update({f"rollout_corr/{k}": v
                 for k, v in verl_is_metrics(w_verl, raw, o - r, m, level, cmax, cmin).items()})
    if cmin is not None:  # verl's IcePop oob ratio
        oob = ((raw < cmin) | (raw > cmax)) & m
        want["rollout_corr/rollout_is_oob_ratio"] = oob.sum() / m.sum()
    assert set(want) == set(got)
    for k, v in want.items():
        # TRL's metrics use its unclamped weights, verl's its clamped ones: equal here (no
        # sum reaches ±20)
        assert got[k] == pytest.approx(float(v), rel=1e-9, abs=1e-12), k


def test_metrics_of_identical_logprobs():
    old, _, m = batch(3)
    got = C.mismatch_metrics(*t64(old, old, m), mode="token_truncate", clip_max=2.0)
    assert got["sampling/sampling_logp_difference/max"] == 0.0
    assert got["rollout_corr/kl"] == 0.0 and got["rollout_corr/k3_kl"] == 0.0
    assert got["rollout_corr/chi2_token"] == pytest.approx(0.0, abs=1e-15)
    assert got["sampling/importance_sampling_ratio/min"] == 1.0
    assert got["rollout_corr/rollout_is_eff_sample_size"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------
# edge cases


@pytest.mark.parametrize("mode", C.CORRECTION_MODES)
def test_masked_positions_never_matter(mode):
    old, roll, m = batch(11, scale=0.5)
    m[2] = False  # an all-masked row
    a = C.correction_weights(*t64(old, roll, m), mode=mode, clip_max=3.0, clip_min=0.2)
    junk_old, junk_roll = old.copy(), roll.copy()
    junk_old[~m], junk_roll[~m] = np.inf, -np.inf
    b = C.correction_weights(*t64(junk_old, junk_roll, m), mode=mode, clip_max=3.0, clip_min=0.2)
    assert torch.isfinite(a.weights).all()
    assert torch.equal(a.weights, b.weights) and torch.equal(a.rejected, b.rejected)
    assert (a.weights[2] == 0).all() and not a.rejected[2].any()
    assert (a.weights[torch.from_numpy(~m)] == 0).all()


def test_all_masked_and_empty_inputs():
    old = torch.zeros(3, 4)
    m = torch.zeros(3, 4, dtype=torch.bool)
    w = C.correction_weights(old, old, m, mode="sequence_mask")
    assert (w.weights == 0).all()
    with pytest.raises(ValueError, match="no token"):
        C.mismatch_metrics(old, old, m)
    empty = torch.zeros(0, 5)
    assert C.correction_weights(empty, empty).weights.shape == (0, 5)


def test_overflowing_sequence_sums():
    t = 400
    old = torch.zeros(2, t, dtype=torch.float64)
    roll = torch.full((2, t), -3.0, dtype=torch.float64)  # Σ log ρ = +1200: exp overflows
    roll[1] = 3.0  # −1200: underflows to 0
    m = torch.ones(2, t, dtype=torch.bool)
    for clamp in (None, 20.0):
        tr = C.correction_weights(old, roll, m, mode="sequence_truncate", clip_max=3.0,
                                  clip_min=0.5, log_ratio_clamp=clamp)  # fmt: skip
        assert tr.weights[0].eq(3.0).all() and tr.weights[1].eq(0.5).all()
        mk = C.correction_weights(old, roll, m, mode="sequence_mask", clip_max=3.0,
                                  log_ratio_clamp=clamp)  # fmt: skip
        assert mk.weights[0].eq(0).all() and mk.rejected[0].all()
        assert torch.isfinite(mk.weights).all()
    # without the clamp, a ratio of exactly 0 (TRL); with it, e^-20
    raw = C.correction_weights(old, roll, m, mode="sequence_mask", clip_max=3.0,
                               log_ratio_clamp=None)  # fmt: skip
    assert raw.weights[1].eq(0).all() and not raw.rejected[1].any()
    cl = C.correction_weights(old, roll, m, mode="sequence_mask", clip_max=3.0)
    assert cl.weights[1].eq(math.exp(-20)).all()
    metrics = C.mismatch_metrics(old, roll, m, mode="sequence_mask", clip_max=3.0)
    assert all(math.isfinite(v) for k, v in metrics.items() if k != "rollout_corr/k3_kl")
    assert metrics["rollout_corr/rollout_is_max"] == pytest.approx(math.exp(20))


def test_extreme_token_ratios_and_length_one():
    old = torch.tensor([[0.0], [-30.0], [-1e-3]], dtype=torch.float64)
    roll = torch.tensor([[-30.0], [0.0], [-1e-3]], dtype=torch.float64)
    w = C.correction_weights(old, roll, mode="token_truncate", clip_max=2.0)
    torch.testing.assert_close(w.weights[:, 0], torch.tensor([2.0, math.exp(-20), 1.0],
                                                             dtype=torch.float64))  # fmt: skip
    w = C.correction_weights(old, roll, mode="token_mask", clip_max=5.0, clip_min=0.5)
    assert w.weights[:, 0].tolist() == [0.0, 0.0, 1.0] and w.rejected[:2].all()
    # length-1 sequences: the sequence ratio is the token ratio
    s = C.correction_weights(old, roll, mode="sequence_truncate", clip_max=2.0)
    t = C.correction_weights(old, roll, mode="token_truncate", clip_max=2.0)
    assert torch.equal(s.weights, t.weights)


def test_nan_at_a_valid_position_propagates():
    old = torch.tensor([[-1.0, float("nan")]])
    roll = torch.tensor([[-1.0, -2.0]])
    w = C.correction_weights(old, roll, mode="token_truncate", clip_max=2.0)
    assert w.weights[0, 0] == 1.0 and torch.isnan(w.weights[0, 1])


def test_float32_inputs_stay_float32():
    old, roll, m = batch(5)
    w = C.correction_weights(*t64(old.astype(np.float32), roll.astype(np.float32), m))
    assert w.weights.dtype == torch.float32


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(mode="tis"), "mode="),
        (dict(clip_max=None, clip_min=None), "needs a bound"),
        (dict(clip_max=-1.0), "clip_max=-1.0"),
        (dict(clip_max=1.0, clip_min=2.0), "clip_min=2.0 is above"),
        (dict(clip_max=float("inf")), "clip_max=inf"),
    ],
)
def test_bad_options_name_the_argument(kw, match):
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match=match):
        C.correction_weights(x, x, **kw)
    with pytest.raises(ValueError, match="denominator="):
        C.check_correction_options("token_mask", 2.0, None, "shrunk")


def test_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match="rollout_logprobs has shape"):
        C.correction_weights(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="mask has shape"):
        C.correction_weights(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="old_logprobs must be a padded"):
        C.correction_weights(torch.zeros(3), torch.zeros(3))
