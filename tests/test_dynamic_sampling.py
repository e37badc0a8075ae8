"""Dynamic sampling (DAPO): the group filter (``ops.informative_groups``) against a re-typed
verl filter and as a property (hypothesis), the refill loop on a scripted collector (rounds,
truncation, filling, metrics), a refill interrupted between rounds that continues exactly
(also from a state saved before the bookkeeping moved to the Rust core), and the GRPO trainer
with it (informative batches, resume, config errors). The bookkeeping itself against its
plain-Python reference: ``tests/test_group_refill.py``."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlhf_core import distributed as D
from rlhf_core import ops
from rlhf_core.buffer import GroupRefill
from rlhf_core.rollout import Rollout
from rlhf_core.rollout.dynamic import DynamicSampler, RefillState, _rollout_state
from rlhf_core.testing.trainers import FAST, params_equal, policy, strip_times, tokenizer
from rlhf_core.trainers import GRPOConfig, GRPOTrainer
from rlhf_core.trainers.optim import IndexSampler


def informative_groups(scores, group_ids, *, min_std=0.0):
    """The keep flags of the core's filter."""
    return ops.informative_groups(scores, group_ids, min_std=min_std)[0]


def verl_filter(scores, group_ids):
    """verl-recipe ``RayDAPOTrainer.fit``: group by uid, keep a group iff np.std (population)
    of its metric > 0 or it has one member."""
    keep = {}
    for g in dict.fromkeys(np.asarray(group_ids).tolist()):
        vals = np.asarray(scores)[np.asarray(group_ids) == g]
        keep[g] = np.std(vals) > 0 or len(vals) == 1
    return np.array([keep[g] for g in np.asarray(group_ids).tolist()])


def test_filter_is_verls_on_finite_scores(rng):
    for _ in range(50):
        n = int(rng.integers(1, 40))
        ids = rng.integers(0, 8, n)
        scores = rng.integers(0, 2, n).astype(float)  # binary rewards: many all-equal groups
        np.testing.assert_array_equal(informative_groups(scores, ids), verl_filter(scores, ids))


def test_filter_threshold_and_unscorable_members():
    ids = np.array([0, 0, 0, 1, 1, 2, 2, 3, 3, 3])
    s = np.array([0.0, 0.0, 1.0, 0.5, 0.5, np.nan, 1.0, np.nan, 2.0, 4.0])
    keep = informative_groups(s, ids)
    # group 1 all equal; group 2 has one scorable member (std 0); group 3 std over {2, 4}
    np.testing.assert_array_equal(keep, [1, 1, 1, 0, 0, 0, 0, 1, 1, 1])
    # std of group 0 is 0.471, of group 3 is 1.0: a threshold of 0.5 keeps only group 3
    np.testing.assert_array_equal(informative_groups(s, ids, min_std=0.5), [0] * 7 + [1] * 3)
    with pytest.raises(ValueError, match="min_std"):
        informative_groups(s, ids, min_std=-1.0)


scores_and_groups = st.integers(1, 30).flatmap(
    lambda n: st.tuples(
        st.lists(st.sampled_from([0.0, 1.0, 0.5, float("nan")]), min_size=n, max_size=n),
        st.lists(st.integers(0, 6), min_size=n, max_size=n),
        # no population std of up to 30 scores from {0, 0.5, 1} equals these (0.2 would:
        # ten scores, two of them 0.5), so rounding cannot split the core and numpy
        st.sampled_from([0.0, 0.21, 0.6]),
    )
)


@given(scores_and_groups)
def test_filter_property(case):
    scores, ids, min_std = np.array(case[0]), np.array(case[1]), case[2]
    keep = informative_groups(scores, ids, min_std=min_std)
    for g in np.unique(ids):
        rows = ids == g
        # a group is kept or dropped whole
        assert keep[rows].all() or not keep[rows].any()
        vals = scores[rows][np.isfinite(scores[rows])]
        informative = rows.sum() == 1 or (vals.size >= 2 and vals.std() > min_std)
        assert keep[rows].all() == informative


# ---------------------------------------------------------------------------------------------
# the refill loop on a scripted collector


class ScriptedCollector:
    """Samples G rows per prompt; the scores of prompt p in round r are all equal when
    ``(p + r) % 3 == 0`` and distinct otherwise. Records the (round, prompts) it saw."""

    def __init__(self, g: int, equal_when=lambda p, r: (p + r) % 3 == 0) -> None:
        self.g = g
        self.equal_when = equal_when
        self.calls: list[tuple[int, list[int]]] = []

    def sample(self, step: int, prompts: np.ndarray, *, gen_round: int = 0) -> Rollout:
        self.calls.append((gen_round, prompts.tolist()))
        n = len(prompts) * self.g
        first = gen_round * len(prompts)
        groups = np.repeat(np.arange(len(prompts)), self.g) + first
        pidx = np.repeat(prompts, self.g)
        scores = np.array([
            0.0 if self.equal_when(int(p), gen_round) else float(k % self.g)
            for p, k in zip(pidx, range(n), strict=True)
        ])  # fmt: skip
        return Rollout(
            prompt_ids=[np.array([1, int(p)]) for p in pidx],
            response_ids=[np.array([5, 6, k % 7 + 2]) for k in range(n)],
            group_ids=groups, truncated=np.zeros(n, bool), texts=[f"t{k}" for k in range(n)],
            prompt_index=pidx, scores=scores, score_parts={"r": scores.copy()}, padded={},
        )  # fmt: skip

    def score(self, roll: Rollout) -> None:
        pass


def _sampler(collector: Any, rows: int = 8, g: int = 2, max_rounds: int = 10) -> DynamicSampler:
    return DynamicSampler(collector, batch_rows=rows, group_size=g, max_rounds=max_rounds,
                          min_std=0.0, dist=D.get_context())  # fmt: skip


def test_refill_keeps_informative_whole_groups_in_order():
    draw = IndexSampler(30, seed=0)
    ds = _sampler(ScriptedCollector(2))
    batch, metrics = ds.collect(0, lambda: draw.next(4))
    assert len(batch) == 8
    ids = np.asarray(batch.group_ids)
    # no all-equal group, every group whole (G = 2 rows), ids distinct across rounds
    for g in np.unique(ids):
        rows = ids == g
        assert rows.sum() == 2 and np.std(batch.scores[rows]) > 0
    # order preserved: rows come in the order they were sampled (round-major)
    assert list(ids) == sorted(ids, key=lambda x: list(ids).index(x))
    assert np.all(np.diff(ids) >= 0)
    assert metrics["dynamic_sampling/groups_filled"] == 0.0
    assert metrics["dynamic_sampling/rounds"] == len(ds.collector.calls)
    generated = 8 * metrics["dynamic_sampling/rounds"]
    assert metrics["dynamic_sampling/samples_per_kept"] == pytest.approx(generated / 8)
    assert ds.state.rounds == 0 and ds.state.rows is None  # cleared for the next step


def test_refill_runs_out_of_rounds_and_fills_with_dropped_groups():
    coll = ScriptedCollector(2, equal_when=lambda p, r: p % 4 != 0)  # few informative prompts
    draw = IndexSampler(8, seed=1, shuffle=False)
    batch, metrics = _sampler(coll, rows=8, max_rounds=2).collect(0, lambda: draw.next(4))
    assert metrics["dynamic_sampling/rounds"] == 2.0
    assert len(batch) == 8
    informative = informative_groups(batch.scores, batch.group_ids)
    n_filled = int(metrics["dynamic_sampling/groups_filled"])
    assert n_filled == int((~informative).sum()) // 2 > 0
    # kept groups first, then the earliest dropped ones
    assert informative[: len(batch) - 2 * n_filled].all()


def test_refill_interrupted_between_rounds_continues_exactly():
    """The refill state and the prompt sampler saved after round 1 and loaded into new
    objects give the batch of the uninterrupted refill."""
    straight_draw = IndexSampler(40, seed=3)
    straight, m1 = _sampler(ScriptedCollector(2), rows=12).collect(5, lambda: straight_draw.next(4))

    draw = IndexSampler(40, seed=3)
    first = _sampler(ScriptedCollector(2), rows=12)
    assert not first.run_round(5, draw.next(4))
    saved = copy.deepcopy((first.state.state_dict(), draw.state_dict()))

    draw2 = IndexSampler(40, seed=3)
    draw2.load_state_dict(saved[1])
    second = _sampler(ScriptedCollector(2), rows=12)
    second.state.load_state_dict(saved[0])
    resumed, m2 = second.collect(5, lambda: draw2.next(4))
    assert second.collector.calls[0][0] == 1  # continued with round 1
    assert m1 == m2
    for key in ("group_ids", "truncated", "prompt_index", "scores"):
        np.testing.assert_array_equal(getattr(resumed, key), getattr(straight, key))
    assert resumed.texts == straight.texts
    for a, b in zip(resumed.response_ids, straight.response_ids, strict=True):
        np.testing.assert_array_equal(a, b)


def test_refill_state_round_trips():
    st_ = RefillState(GroupRefill(8, 2))
    roll = ScriptedCollector(2).sample(0, np.array([0, 1, 2]))
    np.testing.assert_array_equal(st_.add(roll), informative_groups(roll.scores, roll.group_ids))
    again = RefillState(GroupRefill(8, 2))
    again.load_state_dict(copy.deepcopy(st_.state_dict()))
    assert again.state_dict() == st_.state_dict()
    assert again.num_kept == st_.num_kept == 4 and again.refill.groups_dropped == 1


def test_refill_continues_from_a_kept_and_dropped_state():
    """A state saved as kept rows and dropped rows (the layout before the Rust bookkeeping)
    continues to the batch of the uninterrupted refill."""
    coll = ScriptedCollector(2, equal_when=lambda p, r: p % 4 != 0)
    straight_draw = IndexSampler(8, seed=1, shuffle=False)
    straight, m1 = _sampler(coll, rows=8, max_rounds=3).collect(0, lambda: straight_draw.next(4))

    draw = IndexSampler(8, seed=1, shuffle=False)
    first = _sampler(ScriptedCollector(2, equal_when=coll.equal_when), rows=8, max_rounds=3)
    assert not first.run_round(0, draw.next(4))
    rows, refill = first.state.rows, first.state.refill.state_dict()
    keep = np.array(refill["keep"])
    assert keep.any() and not keep.all()
    old = {"rounds": 1, "generated": len(rows), "groups_dropped": refill["groups_dropped"],
           "kept": _rollout_state(rows.select(keep)),
           "dropped": _rollout_state(rows.select(~keep))}  # fmt: skip
    second = _sampler(ScriptedCollector(2, equal_when=coll.equal_when), rows=8, max_rounds=3)
    second.state.load_state_dict(copy.deepcopy(old))
    resumed, m2 = second.collect(0, lambda: draw.next(4))
    assert m1 == m2 and m1["dynamic_sampling/groups_filled"] > 0
    for key in ("group_ids", "prompt_index", "scores"):
        np.testing.assert_array_equal(getattr(resumed, key), getattr(straight, key))
    assert resumed.texts == straight.texts


# ---------------------------------------------------------------------------------------------
# the trainer


def any_digit(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
    """1 when the completion holds a digit: binary, so many groups are all equal."""
    return [float(any(c.isdigit() for c in t)) for t in completions]


def _trainer(run: Any, **kw: Any) -> GRPOTrainer:
    base = dict(total_steps=2, rollout_batch_size=8, num_samples=4, learning_rate=1e-3,
                max_new_tokens=3, dynamic_sampling=True, max_num_gen_batches=6, **FAST)  # fmt: skip
    cfg = GRPOConfig(run_dir=str(run), **{**base, **kw})
    return GRPOTrainer(cfg, policy(), tokenizer(), ["Q:", "A:", "x=", "y=", "1+", "ab"], any_digit)


def test_trainer_batches_hold_only_informative_groups(tmp_path):
    t = _trainer(tmp_path)
    roll = t.collect(0, forward=False)
    m = t.sampling_metrics
    assert len(roll) == 8 and m["dynamic_sampling/rounds"] >= 1
    if m["dynamic_sampling/groups_filled"] == 0:
        assert informative_groups(roll.scores, roll.group_ids).all()
    res = t.train()
    for key in ("dynamic_sampling/rounds", "dynamic_sampling/groups_dropped",
                "dynamic_sampling/samples_per_kept", "dynamic_sampling/groups_filled"):  # fmt: skip
        assert key in res.metrics
    assert res.metrics["frac_zero_std_groups"] == 0.0


def test_round_zero_is_the_plain_step(tmp_path):
    """When every group of round 0 is informative, dynamic sampling trains on exactly the
    samples of a step without it."""
    dense = lambda p, c, **_: [len(t) + 0.1 * sum(map(ord, t)) for t in c]  # noqa: E731
    runs = []
    for on in (False, True):
        cfg = GRPOConfig(run_dir=str(tmp_path / str(on)), total_steps=2, rollout_batch_size=8,
                         num_samples=4, max_new_tokens=4, dynamic_sampling=on, **FAST)  # fmt: skip
        runs.append(GRPOTrainer(cfg, policy(), tokenizer(), ["Q:", "A:"], dense).train())
    assert runs[1].metrics["dynamic_sampling/rounds"] == 1.0
    for key in ("reward/mean", "policy_loss", "grad_norm"):
        assert runs[0].metrics[key] == runs[1].metrics[key], key


def test_resume_with_dynamic_sampling_is_exact(tmp_path):
    from rlhf_core.monitor import read_metrics

    a = _trainer(tmp_path / "a", total_steps=4)
    a.train()
    b = _trainer(tmp_path / "b", total_steps=4)
    b.train(stop_at_step=2)
    c = _trainer(tmp_path / "b", total_steps=4)
    c.train()
    ra, rb = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert strip_times(ra) == strip_times(rb)
    assert max(r["dynamic_sampling/rounds"] for r in ra) > 1  # refills happened
    params_equal(a.policy, c.policy)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(max_num_gen_batches=-1), "max_num_gen_batches=-1"),
        (dict(dynamic_sampling_min_std=-0.1), "dynamic_sampling_min_std=-0.1"),
        (
            dict(
                estimator="reinforce++", num_samples=1, rollout_batch_size=4, dynamic_sampling=True
            ),
            "num_samples=1",
        ),  # fmt: skip
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GRPOConfig(**kwargs, **FAST)
