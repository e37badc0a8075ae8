"""broadcast_to_tokens / reduce_tokens vs float64 references."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlhf_core import ops
from rlhf_core.testing import reference as ref
from rlhf_core.testing.strategies import assert_close, assert_masked_zero, token_cases


@given(case=token_cases(layouts=("padded", "ragged")))
def test_broadcast_matches_reference(case):
    v = case.per_row("v")
    if case.layout == "padded" and case.mask is None:
        case.mask = np.ones(case.shape, dtype=bool)
    out = ops.broadcast_to_tokens(v, case.mask, offsets=case.offsets)
    expect = ref.broadcast_to_tokens(v, case.mask, offsets=case.offsets)
    assert out.shape == case.shape
    assert_close(out, expect, case.dtype)
    assert_masked_zero(out, case.valid)


@given(case=token_cases(), how=st.sampled_from(["sum", "mean"]))
def test_reduce_matches_reference(case, how):
    x = case.values("x")
    out = ops.reduce_tokens(x, case.mask, offsets=case.offsets, how=how)
    expect = ref.reduce_tokens(x, case.mask, offsets=case.offsets, how=how)
    assert out.shape == (case.n_rows,)
    assert_close(out, expect, case.dtype)


@given(case=token_cases(layouts=("padded", "ragged")))
def test_broadcast_then_mean_round_trips(case):
    v = case.per_row("v")
    if case.layout == "padded" and case.mask is None:
        case.mask = np.ones(case.shape, dtype=bool)
    tok = ops.broadcast_to_tokens(v, case.mask, offsets=case.offsets)
    back = ops.reduce_tokens(tok, case.mask, offsets=case.offsets, how="mean")
    has_tokens = np.array([case.valid[idx].any() for idx in case.row_slices()], dtype=bool)
    np.testing.assert_allclose(back[has_tokens], v[has_tokens], rtol=4 * np.finfo(case.dtype).eps)
    assert np.all(back[~has_tokens] == 0)


def test_broadcast_needs_a_layout_and_keeps_kind():
    with pytest.raises(ValueError, match="needs mask"):
        ops.broadcast_to_tokens(np.ones(3))
    torch = pytest.importorskip("torch")
    out = ops.broadcast_to_tokens(torch.tensor([1.0, 2.0]), offsets=torch.tensor([0, 2, 3]))
    assert isinstance(out, torch.Tensor)
    assert out.tolist() == [1.0, 1.0, 2.0]


def _poison_cache(n_values: int, dtype) -> None:
    """Leave a cached output block of exactly n_values elements full of NaN."""
    nan = np.full(n_values, np.nan, dtype=dtype)
    out = ops.kl(nan, nan, clamp=None)
    assert np.isnan(out).all()
    del out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reused_output_blocks_are_fully_written(dtype, rng):
    """Outputs of 1 MiB and more reuse cached blocks holding stale data: every slot, masked
    or padding, must still be written."""
    b, t = 512, 1024  # 2 MiB of float32 per (B, T) output
    r = rng.standard_normal((b, t)).astype(dtype)
    v = rng.standard_normal((b, t)).astype(dtype)
    mask = np.arange(t)[None, :] < rng.integers(0, t, b)[:, None]
    s = rng.standard_normal(b).astype(dtype)
    flat = r[mask]
    offsets = np.concatenate([[0], np.cumsum(mask.sum(1))]).astype(np.int64)
    many = rng.standard_normal(b * t).astype(dtype)
    calls = {
        "gae": (2 * b * t, lambda: np.stack(ops.gae(r, v, mask, gamma=0.9, lam=0.9))),
        "returns": (b * t, lambda: ops.discounted_returns(r, mask, gamma=0.9)),
        "whiten": (b * t, lambda: ops.masked_whiten(r, mask)),
        "whiten_rows": (b * t, lambda: ops.masked_whiten(r, mask, axis=-1)),
        "kl": (b * t, lambda: ops.kl(r, v)),
        "shaped": (b * t, lambda: ops.shaped_rewards(s, r, v, mask, beta=0.1)),
        "broadcast": (b * t, lambda: ops.broadcast_to_tokens(s, mask)),
        "broadcast_ragged": (flat.size, lambda: ops.broadcast_to_tokens(s, offsets=offsets)),
        "group": (b * t, lambda: ops.group_advantages(many, group_size=8)),
    }
    for name, (n_values, call) in calls.items():
        _poison_cache(n_values, dtype)
        out = np.asarray(call())
        assert not np.isnan(out).any(), name
        if out.shape == (2, b, t):
            assert np.all(out[:, ~mask] == 0), name
        elif out.shape == (b, t) and name != "kl":
            assert np.all(out[~mask] == 0), name
    assert ops.empty_cache() > 0
    assert ops.empty_cache() == 0
