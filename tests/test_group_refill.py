"""Dynamic sampling's refill bookkeeping in the Rust core (``buffer.GroupRefill``): random
rounds (ties, NaN scores, -0, uneven groups, ids seen in two rounds) against the plain-Python
reference ``testing.buffer_reference.refill``; the refill loop's batch holds whole groups and
no all-equal kept group; a state saved between rounds (through JSON) continues exactly; bad
input names the argument."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf_core.buffer import GroupRefill
from rlhf_core.errors import DtypeError, InvalidOptionError, ShapeError, StateError
from rlhf_core.testing import buffer_reference as ref

SCORES = st.sampled_from([0.0, -0.0, 0.5, 1.0, float("nan")])
# thresholds no population std of up to 9 scores from {0, 0.5, 1} can equal (no ties at
# rounding level between the core and the reference)
MIN_STD = st.sampled_from([0.0, 0.21, 0.47])


def _add_all(refill: GroupRefill, rounds):
    flags = []
    for scores, ids in rounds:
        keep, counts = refill.add_round(np.array(scores), np.array(ids, dtype=np.int64))
        assert keep.dtype == np.bool_ and counts.kept_rows == int(keep.sum())
        flags += keep.tolist()
    return flags


def _check_against_reference(refill: GroupRefill, rounds, flags, min_std: float) -> None:
    want = ref.refill(rounds, batch_rows=refill.batch_rows, group_size=refill.group_size,
                      min_std=min_std)  # fmt: skip
    assert flags == want["keep"]
    assert refill.rounds == len(rounds)
    assert refill.generated == want["generated"]
    assert refill.groups_dropped == want["groups_dropped"]
    assert refill.kept_rows == want["kept_rows"]
    assert refill.full == (want["kept_rows"] >= refill.batch_rows)
    if want["rows"] is None:
        with pytest.raises(ShapeError, match=f"batch_rows = {refill.batch_rows}"):
            refill.selection()
        return
    sel = refill.selection()
    assert sel.rows.dtype == np.int64
    assert sel.rows.tolist() == want["rows"]
    assert (sel.kept_rows, sel.groups_filled) == (want["taken"], want["groups_filled"])


any_rounds = st.tuples(
    st.integers(1, 3),  # group_size
    st.integers(1, 4),  # batch_rows / group_size
    MIN_STD,
    st.lists(  # rounds of rows (score, id): any group sizes, ids may repeat across rounds
        st.lists(st.tuples(SCORES, st.integers(-2, 4)), max_size=9), min_size=0, max_size=5
    ),
)


@settings(max_examples=300, deadline=None)
@given(any_rounds)
def test_refill_matches_the_reference(case):
    g, k, min_std, raw = case
    rounds = [([s for s, _ in r], [i for _, i in r]) for r in raw]
    refill = GroupRefill(g * k, g, min_std=min_std)
    flags = _add_all(refill, rounds)
    _check_against_reference(refill, rounds, flags, min_std)


def _round(r: int, scores: list[list[float]]) -> tuple[list[float], list[int]]:
    """One round of whole groups (``scores[k]`` the G scores of group k), ids distinct
    across rounds as the collector gives them."""
    return [x for grp in scores for x in grp], [100 * r + k for k, grp in enumerate(scores)
                                                for _ in grp]  # fmt: skip


collector_rounds = st.integers(1, 3).flatmap(
    lambda g: st.tuples(
        st.just(g),
        st.integers(1, 4),  # batch_rows / group_size
        st.integers(0, 4),  # max_rounds (0 = no limit)
        MIN_STD,
        st.lists(  # rounds of P groups of G scores each
            st.lists(st.lists(SCORES, min_size=g, max_size=g), min_size=1, max_size=3),
            min_size=8,
            max_size=8,
        ),
        st.integers(0, 8),  # the round after which the state is saved and reloaded
    )
)


@settings(max_examples=300, deadline=None)
@given(collector_rounds)
def test_refill_loop_gives_whole_informative_groups_and_resumes_exactly(case):
    g, k, max_rounds, min_std, drawn, cut = case
    straight = GroupRefill(g * k, g, max_rounds=max_rounds, min_std=min_std)
    resumed = GroupRefill(g * k, g, max_rounds=max_rounds, min_std=min_std)
    rounds = []
    flags: list[bool] = []  # the keep flags straight returned, round after round
    for r, groups in enumerate(drawn):  # the loop of DynamicSampler on one rank
        if r == cut:  # a refill interrupted here: its state through a JSON checkpoint
            saved = json.loads(json.dumps(straight.state_dict()))
            resumed.load_state_dict(saved)
            assert resumed.state_dict() == straight.state_dict()
        rounds.append(_round(r, groups))
        for refill in (straight, resumed) if r >= cut else (straight,):
            keep, _ = refill.add_round(np.array(rounds[-1][0]), np.array(rounds[-1][1]))
            if refill is straight:
                flags += keep.tolist()
        if straight.full or straight.exhausted:
            break
    if cut >= len(rounds):  # saved after the last round
        resumed.load_state_dict(json.loads(json.dumps(straight.state_dict())))
    assert straight.rounds == len(rounds) == resumed.rounds
    assert max_rounds == 0 or straight.rounds <= max_rounds
    _check_against_reference(straight, rounds, flags, min_std)
    assert resumed.state_dict() == straight.state_dict()

    scores = np.concatenate([np.array(s, dtype=np.float64) for s, _ in rounds])
    ids = np.concatenate([np.array(i, dtype=np.int64) for _, i in rounds])
    if len(ids) < g * k:  # the rounds ran out before there were rows enough
        with pytest.raises(ShapeError):
            resumed.selection()
        return
    sel = straight.selection()
    np.testing.assert_array_equal(resumed.selection().rows, sel.rows)
    assert len(set(sel.rows.tolist())) == g * k
    # every row of the batch comes from a whole group
    for gid in np.unique(ids[sel.rows]):
        assert set(np.flatnonzero(ids == gid)) <= set(sel.rows.tolist())
    # the kept part holds no all-equal group (a group of one row is kept as it is)
    for gid in np.unique(ids[sel.rows[: sel.kept_rows]]):
        vals = scores[ids == gid]
        finite = vals[np.isfinite(vals)]
        assert len(vals) == 1 or (finite.size >= 2 and (finite != finite[0]).any())
    assert sel.groups_filled == (0 if straight.full else (g * k - sel.kept_rows) // g)


def test_torch_and_narrow_inputs_are_taken():
    refill = GroupRefill(4, 2)
    keep, counts = refill.add_round(torch.tensor([0.0, 1.0, 2.0, 2.0], dtype=torch.float32),
                                    np.array([3, 3, 4, 4], dtype=np.int32))  # fmt: skip
    assert keep.tolist() == [True, True, False, False]
    assert (counts.num_groups, counts.kept_groups, counts.dropped_groups) == (2, 1, 1)
    assert refill.selection().rows.tolist() == [0, 1, 2, 3]
    refill.reset()
    assert (refill.rounds, refill.generated, refill.kept_rows, refill.groups_dropped) == (
        0, 0, 0, 0)  # fmt: skip
    assert refill.state_dict() == {"rounds": 0, "groups_dropped": 0, "keep": [], "group_ids": []}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(batch_rows=0, group_size=2), "batch_rows"),
        (dict(batch_rows=4, group_size=0), "group_size"),
        (dict(batch_rows=5, group_size=2), "batch_rows = 5 is not a multiple of group_size = 2"),
        (dict(batch_rows=4, group_size=2, max_rounds=-1), "max_rounds"),
        (dict(batch_rows=4, group_size=2, min_std=float("nan")), "min_std"),
        (dict(batch_rows=4, group_size=2, min_std=-0.1), "min_std"),
        (dict(batch_rows=4.0, group_size=2), "batch_rows"),
    ],
)
def test_bad_settings_name_the_argument(kwargs, match):
    with pytest.raises(InvalidOptionError, match=match):
        GroupRefill(**kwargs)


def test_bad_rounds_name_the_argument_and_add_nothing():
    refill = GroupRefill(4, 2)
    with pytest.raises(ShapeError, match="group_ids"):
        refill.add_round(np.zeros(3), np.zeros(2, np.int64))
    with pytest.raises(ShapeError, match="scores"):
        refill.add_round(np.zeros((2, 2)), np.zeros(4, np.int64))
    with pytest.raises(DtypeError, match="scores"):
        refill.add_round(np.zeros(2, np.int64), np.zeros(2, np.int64))
    with pytest.raises(DtypeError, match="group_ids"):
        refill.add_round(np.zeros(2), np.zeros(2))
    assert (refill.rounds, refill.generated) == (0, 0)
    with pytest.raises(ShapeError, match="batch_rows = 4"):
        refill.selection()


def test_bad_states_are_refused():
    refill = GroupRefill(4, 2)
    refill.add_round(np.array([1.0, 1.0]), np.array([0, 0]))
    good = refill.state_dict()
    assert good == {"rounds": 1, "groups_dropped": 1, "keep": [False, False], "group_ids": [0, 0]}
    for bad, match in [
        ({k: v for k, v in good.items() if k != "keep"}, 'lacks the key "keep"'),
        ({**good, "rounds": "1"}, 'key "rounds" has the wrong type'),
        ({**good, "group_ids": [0]}, "2 keep flags and 1 group ids"),
        ({**good, "rounds": 0}, "0 rounds"),
        ({**good, "groups_dropped": 3}, "3 dropped groups"),
    ]:
        with pytest.raises(StateError, match=match):
            GroupRefill(4, 2).load_state_dict(bad)
    # a refused state leaves the refill as it was
    with pytest.raises(StateError):
        refill.load_state_dict({**good, "rounds": 0})
    assert refill.state_dict() == good
