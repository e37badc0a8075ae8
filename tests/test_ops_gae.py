"""GAE and discounted returns: kernel vs float64 reference, identities, layouts, kinds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlhf_core import _core, ops
from rlhf_core.testing import reference as ref
from rlhf_core.testing.strategies import assert_close, assert_masked_zero, token_cases

unit = st.one_of(st.sampled_from([0.0, 1.0, 0.5, 0.95, 0.99]), st.floats(0.0, 1.0))


@given(case=token_cases(), gamma=unit, lam=unit, masked=st.sampled_from(["skip", "zero"]),
       boot=st.booleans())
def test_gae_matches_reference(case, gamma, lam, masked, boot):
    r = case.values("r")
    v = case.values("v")
    b = case.per_row("b") if boot else None
    adv, ret = ops.gae(r, v, case.mask, offsets=case.offsets, gamma=gamma, lam=lam,
                       masked=masked, bootstrap=b)
    ra, rr = ref.gae(r, v, case.mask, offsets=case.offsets, gamma=gamma, lam=lam,
                     masked=masked, bootstrap=b)
    assert_close(adv, ra, case.dtype)
    assert_close(ret, rr, case.dtype)
    assert_masked_zero(adv, case.valid)
    assert_masked_zero(ret, case.valid)


@given(case=token_cases(), gamma=unit, masked=st.sampled_from(["skip", "zero"]))
def test_discounted_returns_matches_reference(case, gamma, masked):
    r = case.values("r")
    out = ops.discounted_returns(r, case.mask, offsets=case.offsets, gamma=gamma, masked=masked)
    assert_close(out, ref.discounted_returns(r, case.mask, offsets=case.offsets, gamma=gamma,
                                             masked=masked), case.dtype)
    assert_masked_zero(out, case.valid)


@given(case=token_cases(), lam=unit, masked=st.sampled_from(["skip", "zero"]))
def test_gamma_zero_gives_reward_minus_value(case, lam, masked):
    r, v = case.values("r"), case.values("v")
    adv, ret = ops.gae(r, v, case.mask, offsets=case.offsets, gamma=0.0, lam=lam,
                       masked=masked, bootstrap=case.per_row("b"))
    with np.errstate(invalid="ignore"):
        expect = np.where(case.valid, r.astype(np.float64) - v.astype(np.float64), 0.0)
    assert_close(adv, expect, case.dtype)
    assert_close(ret, np.where(case.valid, r.astype(np.float64), 0.0), case.dtype)


@given(case=token_cases(), gamma=unit, masked=st.sampled_from(["skip", "zero"]))
def test_lambda_one_gives_discounted_return_minus_value(case, gamma, masked):
    r, v = case.values("r"), case.values("v")
    adv, ret = ops.gae(r, v, case.mask, offsets=case.offsets, gamma=gamma, lam=1.0,
                       masked=masked)
    g = ref.discounted_returns(r, case.mask, offsets=case.offsets, gamma=gamma, masked=masked)
    with np.errstate(invalid="ignore"):
        expect = np.where(case.valid, g - v.astype(np.float64), 0.0)
    scale = float(np.max(np.abs(g), initial=1.0)) + float(np.max(np.abs(expect), initial=1.0))
    assert_close(adv, expect, case.dtype, scale=scale)
    assert_close(ret, np.where(case.valid, g, 0.0), case.dtype, scale=scale)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("masked", ["skip", "zero"])
def test_fully_masked_rows_are_zero_without_nan(dtype, masked):
    r = np.full((3, 5), np.nan, dtype=dtype)
    v = np.full((3, 5), np.inf, dtype=dtype)
    r[1] = 1.0
    v[1] = 0.5
    mask = np.zeros((3, 5), dtype=bool)
    mask[1, :2] = True
    adv, ret = ops.gae(r, v, mask, gamma=0.9, lam=0.9, masked=masked,
                       bootstrap=np.array([np.nan, 0.0, np.nan], dtype=dtype))
    assert np.all(adv[[0, 2]] == 0) and np.all(ret[[0, 2]] == 0)
    assert np.isfinite(adv).all() and np.isfinite(ret).all()
    # row 1: two valid tokens, terminal: A_1 = 1 - 0.5, A_0 = 1 + 0.9*0.5 - 0.5 + 0.81*0.5
    np.testing.assert_allclose(adv[1, :2], [0.95 + 0.81 * 0.5, 0.5], rtol=1e-6)
    out = ops.discounted_returns(r, mask, gamma=0.5, masked=masked)
    np.testing.assert_array_equal(out, np.where(mask, [[1.5, 1.0, 0, 0, 0]] * 3, 0.0))


def test_bootstrap_adds_discounted_tail_value():
    # lam = 1: A_t = sum_k gamma^k r_{t+k} + gamma^(L-t) * bootstrap - V_t
    r = np.array([0.0, 1.0, 0.0, 2.0], dtype=np.float64)
    v = np.array([0.5, 0.25, 0.125, 1.0])
    offsets = np.array([0, 3, 4])
    boot = np.array([8.0, -1.0])
    adv, ret = ops.gae(r, v, offsets=offsets, gamma=0.5, lam=1.0, bootstrap=boot)
    expect = [0.5 * 1 + 0.125 * 8 - 0.5, 1 + 0.25 * 8 - 0.25, 0.5 * 8 - 0.125, 2 - 0.5 - 1.0]
    np.testing.assert_allclose(adv, expect, rtol=1e-15)
    np.testing.assert_allclose(ret, np.asarray(expect) + v, rtol=1e-15)


def test_multiturn_skip_jumps_over_observation_tokens():
    # [action, obs, obs, action]; skip mode bootstraps the first action from the last one.
    r = np.array([[0.0, 9.0, 9.0, 1.0]])
    v = np.array([[0.2, 5.0, 5.0, 0.4]])
    m = np.array([[1, 0, 0, 1]], dtype=np.uint8)
    adv, _ = ops.gae(r, v, m, gamma=0.9, lam=0.8, masked="skip")
    a3 = 1.0 - 0.4
    a0 = (0.0 + 0.9 * 0.4 - 0.2) + 0.9 * 0.8 * a3
    np.testing.assert_allclose(adv, [[a0, 0.0, 0.0, a3]], rtol=1e-12)
    adv, _ = ops.gae(r, v, m, gamma=0.9, lam=0.8, masked="zero")
    a2 = 0.9 * 0.4 + 0.72 * a3
    a1 = 0.0 + 0.72 * a2
    a0z = (0.0 - 0.2) + 0.72 * a1
    np.testing.assert_allclose(adv, [[a0z, 0.0, 0.0, a3]], rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_padded_and_ragged_agree(dtype, rng):
    lengths = [5, 0, 3, 7]
    t = 8
    r = rng.standard_normal((4, t)).astype(dtype)
    v = rng.standard_normal((4, t)).astype(dtype)
    m = np.arange(t)[None, :] < np.array(lengths)[:, None]
    adv_p, ret_p = ops.gae(r, v, m, gamma=0.97, lam=0.9)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    adv_r, ret_r = ops.gae(r[m], v[m], offsets=offsets, gamma=0.97, lam=0.9)
    np.testing.assert_array_equal(adv_p[m], adv_r)
    np.testing.assert_array_equal(ret_p[m], ret_r)


def test_torch_in_torch_out_without_copy(monkeypatch):
    torch = pytest.importorskip("torch")
    r = torch.randn(3, 6, dtype=torch.float64)
    v = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(3, 6, dtype=torch.bool)
    made = []
    real = _core.gae

    def spy(*args):
        # the inputs reach the core as views of the tensors' memory
        assert np.shares_memory(args[0], r.numpy())
        out = real(*args)
        made.extend(out)
        return out

    monkeypatch.setattr(_core, "gae", spy)
    adv, ret = ops.gae(r, v, mask, gamma=0.9, lam=0.95)
    assert isinstance(adv, torch.Tensor) and adv.dtype == torch.float64
    assert not adv.requires_grad
    assert np.shares_memory(adv.numpy(), made[0]) and np.shares_memory(ret.numpy(), made[1])
    a_np, _ = real(r.numpy(), v.detach().numpy(), mask.numpy(), None, None, 0.9, 0.95, "skip")
    np.testing.assert_array_equal(adv.numpy(), a_np)


def test_non_contiguous_inputs_are_accepted(rng):
    r = rng.standard_normal((4, 10))
    v = rng.standard_normal((4, 10))
    adv, _ = ops.gae(r[:, ::2], v[:, ::2], gamma=0.9, lam=0.9)
    adv2, _ = ops.gae(np.ascontiguousarray(r[:, ::2]), np.ascontiguousarray(v[:, ::2]),
                      gamma=0.9, lam=0.9)
    np.testing.assert_array_equal(adv, adv2)
    torch = pytest.importorskip("torch")
    t_adv, _ = ops.gae(torch.from_numpy(r).t().t()[:, ::2], torch.from_numpy(v)[:, ::2],
                       gamma=0.9, lam=0.9)
    np.testing.assert_array_equal(t_adv.numpy(), adv)


def test_offsets_of_other_integer_dtypes(rng):
    r = rng.standard_normal(6).astype(np.float32)
    a64, _ = ops.gae(r, r, offsets=np.array([0, 2, 6]))
    a32, _ = ops.gae(r, r, offsets=np.array([0, 2, 6], dtype=np.int32))
    np.testing.assert_array_equal(a64, a32)


def test_empty_inputs():
    adv, ret = ops.gae(np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32))
    assert adv.shape == (0, 4) and adv.dtype == np.float32
    adv, _ = ops.gae(np.zeros(0), np.zeros(0), offsets=np.array([0]))
    assert adv.shape == (0,)
    adv, _ = ops.gae(np.zeros(0), np.zeros(0), offsets=np.array([0, 0, 0]))
    assert adv.shape == (0,)
