"""`RolloutBuffer.valid_tokens()` / `valid_counts()`: the core's one rule for which response
tokens count (``loss_mask`` true when held, the sequence's score not NaN when held), the same
tokens the estimators and the buffer's statistics use."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf_core.buffer import RolloutBuffer


def numpy_valid(buf: RolloutBuffer) -> np.ndarray:
    """The rule written with numpy from the stored fields (what the trainers compute today)."""
    t = buf.num_response_tokens
    valid = np.ones(t, bool)
    if "loss_mask" in buf.token_fields:
        valid &= buf.field("loss_mask")
    if "scores" in buf.sequence_fields:
        nan = np.isnan(buf.field("scores").astype(np.float64))
        valid &= ~np.repeat(nan, buf.lengths("response"))
    return valid


def filled(seed: int, n: int, *, loss_mask: bool, scores: bool, nan_frac: float) -> RolloutBuffer:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 6, n)
    kw: dict = {}
    if loss_mask:
        kw["loss_mask"] = [rng.random(k) < 0.7 for k in lengths]
    if scores:
        s = rng.standard_normal(n)
        s[rng.random(n) < nan_frac] = np.nan
        kw["scores"] = s.astype(np.float32)
    buf = RolloutBuffer()
    buf.add(
        prompt_ids=[[1]] * n,
        response_ids=[rng.integers(1, 9, k) for k in lengths],
        values=[rng.standard_normal(k).astype(np.float32) for k in lengths],
        **kw,
    )
    return buf


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 12),
    loss_mask=st.booleans(),
    scores=st.booleans(),
    nan_frac=st.sampled_from([0.0, 0.3, 1.0]),
)
def test_valid_tokens_follow_the_rule(seed, n, loss_mask, scores, nan_frac):
    buf = filled(seed, n, loss_mask=loss_mask, scores=scores, nan_frac=nan_frac)
    valid = buf.valid_tokens()
    assert valid.dtype == np.bool_ and valid.shape == (buf.num_response_tokens,)
    np.testing.assert_array_equal(valid, numpy_valid(buf))
    counts = buf.valid_counts()
    assert counts.dtype == np.int64 and counts.shape == (len(buf),)
    off = buf.offsets("response")
    per_seq = [valid[a:b].sum() for a, b in zip(off[:-1], off[1:], strict=True)]
    np.testing.assert_array_equal(counts, per_seq)


def test_a_nan_score_removes_the_whole_sequence_and_masked_tokens_stay_out():
    buf = RolloutBuffer()
    buf.add(
        prompt_ids=[[1], [2], [3]],
        response_ids=[[4, 5, 6], [7, 8], [9]],
        loss_mask=[np.array([True, False, True]), np.array([True, True]), np.array([True])],
        scores=np.array([1.0, np.nan, 0.5], np.float32),
        values=[np.zeros(3, np.float32), np.zeros(2, np.float32), np.zeros(1, np.float32)],
    )
    assert buf.valid_tokens().tolist() == [True, False, True, False, False, True]
    assert buf.valid_counts().tolist() == [2, 0, 1]


def test_the_estimators_train_on_exactly_the_valid_tokens():
    buf = filled(7, 40, loss_mask=True, scores=True, nan_frac=0.2)
    valid = buf.valid_tokens()
    assert not valid.all() and valid.any()
    out = buf.compute_advantages("reinforce++")
    adv = buf.field("advantages")
    assert np.all(adv[~valid] == 0.0)
    # Whitened over the valid tokens (ddof 1): their mean is 0 and the buffer reports their count.
    assert abs(float(adv[valid].astype(np.float64).mean())) < 1e-6
    assert out["mean"] == pytest.approx(0.0, abs=1e-6)
    assert out["std"] == pytest.approx(float(adv[valid].astype(np.float64).std()), rel=1e-6)


def test_an_empty_buffer_has_no_valid_tokens():
    buf = RolloutBuffer()
    assert buf.valid_tokens().shape == (0,)
    assert buf.valid_counts().shape == (0,)
