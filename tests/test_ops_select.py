"""The selection kernels of the Rust core (``kernels::select``) and the in-place subset of the
buffer: ``ops.informative_groups`` (DAPO's dynamic-sampling filter) against a float64 numpy
reference, degenerate cases included (every group dropped, groups of one, identical rewards,
NaN scores); ``ops.quantile`` against ``np.quantile``; ``ops.top_k_mask`` against numpy's
stable argsort; ``RolloutBuffer.filter_groups`` / ``retain`` / ``truncate`` against a buffer
rebuilt from the kept rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from rlhf_core import ops
from rlhf_core.buffer import RolloutBuffer
from rlhf_core.errors import DtypeError, FieldError, InvalidOptionError, ShapeError, StateError


def reference_filter(scores: np.ndarray, group_ids: np.ndarray, min_std: float) -> np.ndarray:
    """float64 numpy: keep a group of one row, or one with >= 2 finite scores, not all equal,
    whose population std is above ``min_std``."""
    s = np.asarray(scores, dtype=np.float64)
    g = np.asarray(group_ids)
    keep = np.zeros(s.shape, dtype=bool)
    for gid in np.unique(g):
        rows = g == gid
        vals = s[rows][np.isfinite(s[rows])]
        informative = vals.size >= 2 and bool((vals != vals[0]).any()) and vals.std() > min_std
        keep[rows] = rows.sum() == 1 or informative
    return keep


@pytest.mark.parametrize("min_std", [0.0, 0.1, 0.5])
def test_informative_groups_matches_the_float64_reference(rng, min_std):
    for _ in range(40):
        n = int(rng.integers(1, 60))
        ids = rng.integers(0, 10, n) * 7 - 20  # negative and sparse ids
        scores = rng.standard_normal(n) * rng.choice([0.01, 0.3, 1.0])
        scores[rng.random(n) < 0.3] = 1.0  # many equal members
        scores[rng.random(n) < 0.1] = np.nan
        keep, counts = ops.informative_groups(scores, ids, min_std=min_std)
        want = reference_filter(scores, ids, min_std)
        assert keep.dtype == np.bool_ and keep.shape == (n,)
        np.testing.assert_array_equal(keep, want)
        assert counts.num_groups == np.unique(ids).size
        assert counts.kept_groups == np.unique(ids[want]).size
        assert counts.kept_rows == int(want.sum())
        assert counts.dropped_groups == counts.num_groups - counts.kept_groups


def test_informative_groups_degenerate_cases():
    # identical rewards everywhere: every group dropped
    ids = np.repeat(np.arange(4), 3)
    keep, counts = ops.informative_groups(np.ones(12), ids)
    assert not keep.any()
    assert (counts.num_groups, counts.kept_groups, counts.kept_rows) == (4, 0, 0)
    # equal scores whose numpy std is a hair above 0 are still all equal
    assert np.std([0.1, 0.1, 0.1]) > 0
    assert not ops.informative_groups(np.full(3, 0.1), np.zeros(3, np.int64))[0].any()
    # a group of one row stays, whatever its score (NaN included, as verl keeps it)
    keep, _ = ops.informative_groups(np.array([np.nan, 3.0, 3.0, 5.0]), np.array([9, 1, 1, 2]))
    np.testing.assert_array_equal(keep, [True, False, False, True])
    # NaN scores are left out: one scorable member (std 0) or none drops the group
    s = np.array([np.nan, 1.0, np.nan, np.nan, 0.0, 1.0, np.nan])
    g = np.array([0, 0, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(ops.informative_groups(s, g)[0], [0, 0, 0, 0, 1, 1, 1])
    # infinities are unscorable too
    s = np.array([np.inf, 1.0, -np.inf, 1.0, 2.0])
    np.testing.assert_array_equal(ops.informative_groups(s, np.zeros(5, np.int64))[0], [1] * 5)
    # no rows at all
    keep, counts = ops.informative_groups(np.zeros(0), np.zeros(0, np.int64))
    assert keep.shape == (0,) and counts.num_groups == 0


def test_informative_groups_inputs_and_errors():
    s32 = np.array([0.0, 1.0, 1.0, 1.0], dtype=np.float32)
    ids32 = np.array([0, 0, 1, 1], dtype=np.int32)
    keep, _ = ops.informative_groups(torch.from_numpy(s32), ids32)
    np.testing.assert_array_equal(keep, [1, 1, 0, 0])
    with pytest.raises(InvalidOptionError, match="min_std"):
        ops.informative_groups(s32, ids32, min_std=-0.1)
    with pytest.raises(InvalidOptionError, match="min_std"):
        ops.informative_groups(s32, ids32, min_std=float("nan"))
    with pytest.raises(ShapeError, match="group_ids"):
        ops.informative_groups(s32, ids32[:3])
    with pytest.raises(ShapeError, match="scores"):
        ops.informative_groups(s32.reshape(2, 2), ids32.reshape(2, 2))
    with pytest.raises(DtypeError, match="scores"):
        ops.informative_groups(np.array([1, 2]), np.array([0, 0]))
    with pytest.raises(DtypeError, match="group_ids"):
        ops.informative_groups(np.array([1.0, 2.0]), np.array([0.0, 0.0]))


def test_quantile_is_numpys_linear(rng):
    for _ in range(60):
        n = int(rng.integers(1, 50))
        v = rng.standard_normal(n)
        if rng.random() < 0.3:
            v = np.round(v)  # ties
        for q in (0.0, 1.0, float(rng.random()), 0.5, 0.8):
            assert ops.quantile(v, q) == np.quantile(v, q)
    v32 = torch.tensor([[3.0, 1.0], [2.0, 10.0]])
    assert ops.quantile(v32, 0.8) == np.quantile(v32.numpy().astype(np.float64), 0.8)
    with pytest.raises(ShapeError):
        ops.quantile(np.zeros(0), 0.5)
    with pytest.raises(InvalidOptionError, match="q"):
        ops.quantile(np.ones(3), 1.5)
    with pytest.raises(InvalidOptionError, match="finite"):
        ops.quantile(np.array([1.0, np.nan]), 0.5)


def test_top_k_mask_is_a_stable_argsort(rng):
    for _ in range(60):
        n = int(rng.integers(1, 40))
        v = np.round(rng.standard_normal(n), 1)  # ties
        v[rng.random(n) < 0.2] = -0.0  # −0 ties +0
        k = int(rng.integers(0, n + 1))
        want = np.zeros(n, dtype=bool)
        want[np.argsort(-v, kind="stable")[:k]] = True
        np.testing.assert_array_equal(ops.top_k_mask(v, k), want)
    np.testing.assert_array_equal(ops.top_k_mask(np.array([0.0, -0.0, -0.0]), 2), [1, 1, 0])
    with pytest.raises(InvalidOptionError, match="k"):
        ops.top_k_mask(np.ones(2), 3)
    with pytest.raises(InvalidOptionError, match="k"):
        ops.top_k_mask(np.ones(2), -1)
    with pytest.raises(InvalidOptionError, match="finite"):
        ops.top_k_mask(np.array([np.inf, 1.0]), 1)


# ---------------------------------------------------------------------------------------------
# the buffer, in place


def rows(rng: np.random.Generator, n: int, groups: int = 5) -> list[dict]:
    out = []
    for _ in range(n):
        r = int(rng.integers(0, 6))
        out.append(
            {
                "prompt_ids": rng.integers(1, 50, int(rng.integers(1, 5))),
                "response_ids": rng.integers(1, 50, r),
                "logprobs": -rng.random(r).astype(np.float32),
                "scores": float(rng.choice([0.0, 1.0, 0.5, np.nan])),
                "group_ids": int(rng.integers(0, groups)),
            }
        )
    return out


def build(seqs: list[dict]) -> RolloutBuffer:
    buf = RolloutBuffer()
    buf.add(
        prompt_ids=[s["prompt_ids"] for s in seqs],
        response_ids=[s["response_ids"] for s in seqs],
        logprobs=[s["logprobs"] for s in seqs],
        scores=np.array([s["scores"] for s in seqs], dtype=np.float64),
        group_ids=np.array([s["group_ids"] for s in seqs], dtype=np.int64),
    )
    return buf


def assert_same_rows(buf: RolloutBuffer, seqs: list[dict]) -> None:
    assert len(buf) == len(seqs)
    for which in ("prompt", "response"):
        lengths = [len(s[f"{which}_ids"]) for s in seqs]
        np.testing.assert_array_equal(buf.lengths(which), np.array(lengths, dtype=np.int64))
    for name, dtype in (
        ("prompt_ids", np.int64),
        ("response_ids", np.int64),
        ("logprobs", np.float32),
    ):
        flat = np.concatenate([np.asarray(s[name], dtype=dtype) for s in seqs] or [np.zeros(0)])
        assert buf.field(name).tobytes() == flat.astype(dtype).tobytes(), name
    for name, dtype in (("scores", np.float64), ("group_ids", np.int64)):
        want = np.array([s[name] for s in seqs], dtype=dtype)
        assert buf.field(name).tobytes() == want.tobytes(), name  # NaN bits included


@given(st.integers(0, 2**31 - 1), st.integers(1, 40), st.sampled_from([0.0, 0.2, 0.45]))
def test_filter_groups_in_place_is_the_kept_rows(seed, n, min_std):
    rng = np.random.default_rng(seed)
    seqs = rows(rng, n)
    buf = build(seqs)
    version, capacity = buf.version, buf.capacity_bytes
    keep, counts = buf.filter_groups(min_std)
    scores = np.array([s["scores"] for s in seqs])
    ids = np.array([s["group_ids"] for s in seqs])
    np.testing.assert_array_equal(keep, reference_filter(scores, ids, min_std))
    assert counts.kept_rows == int(keep.sum()) == len(buf)
    assert_same_rows(buf, [s for s, k in zip(seqs, keep, strict=True) if k])
    assert buf.version != version
    assert buf.capacity_bytes == capacity  # compacted where it lies
    # a group is kept whole, and no kept group of several rows has equal scores
    for g in np.unique(ids):
        members = keep[ids == g]
        assert members.all() or not members.any()


def test_filter_groups_every_group_dropped_then_refill():
    seqs = [
        {
            "prompt_ids": np.array([1, 2]),
            "response_ids": np.array([3, 4, 5]),
            "logprobs": np.array([-1.0, -2.0, -3.0], np.float32),
            "scores": 1.0,
            "group_ids": g,
        }
        for g in (0, 0, 1, 1)
    ]
    buf = build(seqs)
    keep, counts = buf.filter_groups()
    assert not keep.any() and len(buf) == 0 and buf.num_response_tokens == 0
    assert (counts.num_groups, counts.kept_groups) == (2, 0)
    # the schema stays: the next round is added to the emptied buffer
    more = [dict(seqs[0], scores=0.0, group_ids=5), dict(seqs[1], group_ids=5)]
    buf.add(
        prompt_ids=[s["prompt_ids"] for s in more],
        response_ids=[s["response_ids"] for s in more],
        logprobs=[s["logprobs"] for s in more],
        scores=np.array([0.0, 1.0]),
        group_ids=np.array([5, 5]),
    )
    assert buf.filter_groups()[0].all() and len(buf) == 2


def test_retain_and_truncate(rng):
    seqs = rows(rng, 12)
    buf = build(seqs)
    buf.compute_advantages("grpo")
    it = iter(buf.minibatches(batch_size=4, epochs=1, seed=0))
    next(it)
    keep = rng.random(12) < 0.5
    assert buf.retain(torch.from_numpy(keep)) == int(keep.sum())
    assert buf.advantages_info is None  # advantages of the old rows are dropped
    with pytest.raises(StateError):
        next(it)  # a plan over the old rows refuses to continue
    kept = [s for s, k in zip(seqs, keep, strict=True) if k]
    assert_same_rows(buf, kept)
    buf.truncate(3)
    assert_same_rows(buf, kept[:3])
    buf.truncate(100)
    assert_same_rows(buf, kept[:3])
    buf.truncate(0)
    assert len(buf) == 0 and buf.num_prompt_tokens == 0
    with pytest.raises(ShapeError, match="keep"):
        build(seqs).retain(np.ones(3, dtype=bool))
    with pytest.raises(DtypeError, match="keep"):
        build(seqs).retain(np.ones(12, dtype=np.int64))
    with pytest.raises(InvalidOptionError, match="n"):
        buf.truncate(-1)


def test_filter_groups_needs_scores_and_groups():
    buf = RolloutBuffer()
    buf.add(prompt_ids=[np.array([1])], response_ids=[np.array([2, 3])])
    with pytest.raises(FieldError, match="group_ids"):
        buf.filter_groups()
    buf = RolloutBuffer()
    buf.add(
        prompt_ids=[np.array([1])],
        response_ids=[np.array([2])],
        scores=np.array([1.0]),
        group_ids=np.array([0]),
    )
    with pytest.raises(InvalidOptionError, match="min_std"):
        buf.filter_groups(-1.0)
