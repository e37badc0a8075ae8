"""Dynamic sampling (DAPO, Yu et al. 2025): train only on groups whose rewards differ.

A group whose completions all got the same reward has zero advantage under every group
estimator: it costs a forward and a backward and teaches nothing, while it still counts in
the token normalisers. Dynamic sampling drops such groups and keeps sampling until the batch
holds ``rollout_batch_size`` completions of informative groups::

    round r = 0, 1, ...   draw P prompts (the trainer's seeded sampler), sample G completions
                          of each, score them
                          keep the groups of one row, or whose scores are not all equal
                          and have std > min_std (verl)
                          stop once the kept completions fill the batch, or after
                          max_num_gen_batches rounds
    batch                 the first rollout_batch_size kept completions (whole groups);
                          if the rounds ran out first, completed with the earliest dropped
                          groups (which train like plain GRPO's zero-std groups)

This follows verl-recipe's ``RayDAPOTrainer.fit`` (``algorithm.filter_groups``: population std
> 0 or group of one, regenerate, truncate to the first ``train_batch_size·n``), with two
choices of our own, both documented in docs/trainers.md: the filter reads the combined score
(verl's ``score`` / ``seq_reward`` metric: NaN scores are left out of the std, so a group with
fewer than two scorable members has std 0), and running out of rounds completes the batch
with dropped groups instead of raising (verl raises "Generated too many"), so that a long run
never dies on a hard stretch of data; ``dynamic_sampling/groups_filled`` counts them.

Rounds continue the step's prompt list (:meth:`RolloutCollector.sample` ``gen_round``): round
0 samples exactly what a step without dynamic sampling samples, later rounds have their own
seeds and group ids. With several processes each rank fills its own share of the batch and
all ranks sample the same number of rounds.

The refill bookkeeping lives in the Rust core (:class:`rlhf_core.buffer.GroupRefill`: the
group filter :func:`rlhf_core.ops.informative_groups` of each round, the counters, whether the
batch is full, and which rows make it). This module keeps the rows themselves (the
``Rollout`` payload: token ids, texts) and the all-reduces across ranks. :class:`RefillState`
(the rows and the bookkeeping) has a ``state_dict`` of plain data, so a refill interrupted
between rounds continues exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from rlhf_core import parallel as D
from rlhf_core.buffer import GroupRefill
from rlhf_core.rollout.batch import Rollout
from rlhf_core.rollout.collect import RolloutCollector

__all__ = ["DynamicSampler", "RefillState"]


def _rollout_state(roll: Rollout | None) -> dict[str, Any] | None:
    if roll is None:
        return None
    return {
        "prompt_ids": [np.asarray(x).tolist() for x in roll.prompt_ids],
        "response_ids": [np.asarray(x).tolist() for x in roll.response_ids],
        "group_ids": np.asarray(roll.group_ids).tolist(),
        "truncated": np.asarray(roll.truncated).tolist(),
        "texts": list(roll.texts),
        "prompt_index": np.asarray(roll.prompt_index).tolist(),
        "scores": np.asarray(roll.scores, dtype=np.float64).tolist(),
        "score_parts": {
            k: np.asarray(v, dtype=np.float64).tolist() for k, v in roll.score_parts.items()
        },  # fmt: skip
        # an engine's own logprobs (vLLM; float32, exact through float64 lists)
        "rollout_logprobs": [np.asarray(x, dtype=np.float32).tolist()
                             for x in roll.rollout_logprobs],  # fmt: skip
        "backend": roll.backend,
    }


def _rollout_from_state(state: dict[str, Any] | None) -> Rollout | None:
    if state is None:
        return None
    return Rollout(
        prompt_ids=[np.asarray(x, dtype=np.int64) for x in state["prompt_ids"]],
        response_ids=[np.asarray(x, dtype=np.int64) for x in state["response_ids"]],
        group_ids=np.asarray(state["group_ids"], dtype=np.int64),
        truncated=np.asarray(state["truncated"], dtype=bool),
        texts=list(state["texts"]),
        prompt_index=np.asarray(state["prompt_index"], dtype=np.int64),
        scores=np.asarray(state["scores"], dtype=np.float64),
        score_parts={k: np.asarray(v, dtype=np.float64) for k, v in state["score_parts"].items()},
        padded={},
        rollout_logprobs=[
            np.asarray(x, dtype=np.float32) for x in state.get("rollout_logprobs", [])
        ],
        backend=state.get("backend"),
    )


class RefillState:
    """What the rounds of one step have gathered so far (this rank's rows): every round's rows
    (:attr:`rows`, one ``Rollout``, round after round) and their bookkeeping (:attr:`refill`,
    in the Rust core)."""

    def __init__(self, refill: GroupRefill) -> None:
        self.refill = refill
        self.rows: Rollout | None = None

    @property
    def rounds(self) -> int:
        return self.refill.rounds

    @property
    def num_kept(self) -> int:
        return self.refill.kept_rows

    def reset(self) -> None:
        """Empty, for the next step."""
        self.refill.reset()
        self.rows = None

    def add(self, roll: Rollout) -> np.ndarray:
        """Filter one scored round and append its rows; returns their keep flags."""
        keep, _ = self.refill.add_round(roll.scores, roll.group_ids)
        self.rows = Rollout.concat([roll] if self.rows is None else [self.rows, roll])
        return keep

    def batch(self) -> tuple[Rollout, int, int]:
        """The batch's rows (:meth:`GroupRefill.selection`), the kept rows among them and the
        dropped groups that complete it."""
        sel = self.refill.selection()  # raises when the rows cannot make the batch
        assert self.rows is not None  # a selection of batch_rows >= 1 rows needs rows
        return self.rows.select(sel.rows), sel.kept_rows, sel.groups_filled

    def state_dict(self) -> dict[str, Any]:
        return {"refill": self.refill.state_dict(), "rows": _rollout_state(self.rows)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "kept" in state:  # the layout before the Rust bookkeeping
            state = _from_kept_and_dropped(state)
        self.refill.load_state_dict(state["refill"])
        self.rows = _rollout_from_state(state["rows"])


def _from_kept_and_dropped(state: dict[str, Any]) -> dict[str, Any]:
    """A state saved as kept rows and dropped rows (each in sampling order) as the rows of
    both, kept first: the batch takes kept rows and dropped groups in the same order."""
    kept = _rollout_from_state(state["kept"])
    dropped = _rollout_from_state(state["dropped"])
    parts = [r for r in (kept, dropped) if r is not None]
    rows = Rollout.concat(parts) if parts else None
    n_kept = 0 if kept is None else len(kept)
    n = 0 if rows is None else len(rows)
    refill = {
        "rounds": int(state["rounds"]),
        "groups_dropped": int(state["groups_dropped"]),
        "keep": [True] * n_kept + [False] * (n - n_kept),
        "group_ids": [] if rows is None else np.asarray(rows.group_ids).tolist(),
    }
    return {"refill": refill, "rows": _rollout_state(rows)}


class DynamicSampler:
    """The refill loop over a :class:`RolloutCollector`.

    Args:
        collector: samples and scores each round.
        batch_rows: completions this rank's batch holds (``rollout_batch_size / world_size``,
            a multiple of ``group_size``).
        group_size: G, completions per prompt.
        max_rounds: ``max_num_gen_batches``; 0 = no limit (verl's 0).
        min_std: groups with a score std at most this are dropped.
        dist: the process group.
    """

    def __init__(
        self,
        collector: RolloutCollector,
        *,
        batch_rows: int,
        group_size: int,
        max_rounds: int,
        min_std: float,
        dist: D.DistContext,
    ) -> None:
        self.collector = collector
        self.dist = dist
        self.state = RefillState(
            GroupRefill(batch_rows, group_size, max_rounds=max_rounds, min_std=min_std)
        )

    def run_round(
        self, step: int, prompts: np.ndarray, check: Callable[[Rollout], None] | None = None
    ) -> bool:
        """Sample, score and filter one round of the step's global prompts ``prompts``;
        returns True once no further round is needed (every rank has its rows, or the rounds
        are used up). Every rank calls it the same number of times."""
        st = self.state
        roll = self.collector.sample(step, prompts, gen_round=st.rounds)
        self.collector.score(roll)
        if check is not None:
            check(roll)
        st.add(roll)
        short = D.flagged_ranks(not st.refill.full, self.dist)
        return not short or st.refill.exhausted

    def finish(self) -> tuple[Rollout, dict[str, float]]:
        """This rank's batch (the first ``batch_rows`` kept rows, completed with the earliest
        dropped groups when short) and the step's global metrics; the state is cleared."""
        st = self.state
        batch, kept_rows, filled_groups = st.batch()
        totals = D.all_reduce_sum(
            np.array(
                [st.refill.generated, st.refill.groups_dropped, filled_groups, kept_rows],
                dtype=np.float64,
            ),
            self.dist,
        )
        generated, dropped, filled, kept = (float(x) for x in totals)
        metrics = {
            "dynamic_sampling/rounds": float(st.rounds),
            "dynamic_sampling/groups_dropped": dropped,
            "dynamic_sampling/groups_filled": filled,
            "dynamic_sampling/samples_per_kept": generated / max(kept, 1.0),
        }
        st.reset()
        return batch, metrics

    def collect(
        self,
        step: int,
        draw: Callable[[], np.ndarray],
        check: Callable[[Rollout], None] | None = None,
    ) -> tuple[Rollout, dict[str, float]]:
        """Rounds until done (continuing a loaded :attr:`state`), then :meth:`finish`.

        ``draw()`` returns the next round's global prompt indices (the trainer's seeded,
        checkpointed sampler), ``check`` is called on each scored round."""
        while not self.run_round(step, draw(), check):
            pass
        return self.finish()
