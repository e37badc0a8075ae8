"""broadcast_to_tokens / reduce_tokens vs float64 references."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from ops_strategies import assert_close, assert_masked_zero, token_cases

from rlhf_core import ops
from rlhf_core.testing import reference as ref


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
