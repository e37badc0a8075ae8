"""Dynamic sampling (DAPO, Yu et al. 2025): train only on groups whose rewards differ.

A group whose completions all got the same reward has zero advantage under every group
estimator: it costs a forward and a backward and teaches nothing, while it still counts in
the token normalisers. Dynamic sampling drops such groups and keeps sampling until the batch
holds ``rollout_batch_size`` completions of informative groups::

    round r = 0, 1, ...   draw P prompts (the trainer's seeded sampler), sample G completions
                          of each, score them
                          keep the groups with std(scores) > min_std, or of size one (verl)
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

The refill bookkeeping (:class:`RefillState`: the kept and dropped rows of the rounds so far)
has a ``state_dict``, so a refill interrupted between rounds continues exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlhf_core import parallel as D
from rlhf_core.rollout.batch import Rollout
from rlhf_core.rollout.collect import RolloutCollector

__all__ = ["DynamicSampler", "RefillState", "informative_groups"]


def informative_groups(
    scores: np.ndarray, group_ids: np.ndarray, *, min_std: float = 0.0
) -> np.ndarray:
    """Which rows belong to a group worth training on.

    A group (rows with equal ``group_ids``, in any order) is kept when it has one row, or when
    the population standard deviation of its finite scores is above ``min_std`` (NaN scores,
    unscorable, are left out; fewer than two finite scores give std 0).

    Args:
        scores: float (N,) one score per row (NaN = unscorable).
        group_ids: int (N,) group of each row.
        min_std: threshold ≥ 0 (0: drop groups whose scores are all equal).

    Returns:
        bool (N,): True for the rows of kept groups.
    """
    s = np.asarray(scores, dtype=np.float64)
    g = np.asarray(group_ids)
    if s.shape != g.shape or s.ndim != 1:
        raise ValueError(f"scores {s.shape} and group_ids {g.shape} must be (N,) each")
    if not (np.isfinite(min_std) and min_std >= 0):
        raise ValueError(f"dynamic_sampling_min_std={min_std}: expected a finite value >= 0")
    _, inverse, sizes = np.unique(g, return_inverse=True, return_counts=True)
    finite = np.isfinite(s)
    keep_group = np.empty(sizes.shape[0], dtype=bool)
    for k in range(sizes.shape[0]):
        if sizes[k] == 1:
            keep_group[k] = True
            continue
        vals = s[(inverse == k) & finite]
        keep_group[k] = vals.size >= 2 and float(vals.std()) > min_std
    return keep_group[inverse]


def _rows_of_groups(group_ids: np.ndarray, n_groups: int) -> np.ndarray:
    """The rows of the first ``n_groups`` groups, in order of first appearance."""
    seen: dict[int, None] = {}
    for gid in np.asarray(group_ids).tolist():
        seen.setdefault(int(gid), None)
    wanted = set(list(seen)[:n_groups])
    return np.array([int(g) in wanted for g in np.asarray(group_ids).tolist()], dtype=bool)


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


@dataclass
class RefillState:
    """What the rounds of one step have gathered so far (this rank's rows)."""

    rounds: int = 0
    kept: Rollout | None = None
    dropped: Rollout | None = None
    generated: int = 0
    groups_dropped: int = 0

    @property
    def num_kept(self) -> int:
        return 0 if self.kept is None else len(self.kept)

    def reset(self) -> None:
        """Empty, for the next step."""
        self.load_state_dict(RefillState().state_dict())

    def add(self, roll: Rollout, keep: np.ndarray) -> None:
        """Append one scored round: its kept rows and its dropped ones."""
        self.rounds += 1
        self.generated += len(roll)
        self.groups_dropped += int(np.unique(np.asarray(roll.group_ids)[~keep]).size)
        for name, rows in (("kept", keep), ("dropped", ~keep)):
            if not rows.any():
                continue
            part = roll.select(rows)
            have = getattr(self, name)
            setattr(self, name, part if have is None else Rollout.concat([have, part]))

    def state_dict(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "generated": self.generated,
            "groups_dropped": self.groups_dropped,
            "kept": _rollout_state(self.kept),
            "dropped": _rollout_state(self.dropped),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rounds = int(state["rounds"])
        self.generated = int(state["generated"])
        self.groups_dropped = int(state["groups_dropped"])
        self.kept = _rollout_from_state(state["kept"])
        self.dropped = _rollout_from_state(state["dropped"])


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
        if batch_rows % group_size:
            raise ValueError(
                f"batch_rows={batch_rows} is not a multiple of group_size={group_size}"
            )
        self.collector = collector
        self.batch_rows = batch_rows
        self.group_size = group_size
        self.max_rounds = max_rounds
        self.min_std = min_std
        self.dist = dist
        self.state = RefillState()

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
        st.add(roll, informative_groups(roll.scores, roll.group_ids, min_std=self.min_std))
        short = D.flagged_ranks(st.num_kept < self.batch_rows, self.dist)
        return not short or (self.max_rounds > 0 and st.rounds >= self.max_rounds)

    def finish(self) -> tuple[Rollout, dict[str, float]]:
        """This rank's batch (the first ``batch_rows`` kept rows, completed with the earliest
        dropped groups when short) and the step's global metrics; the state is cleared."""
        st = self.state
        parts: list[Rollout] = []
        filled_groups = 0
        take = min(st.num_kept, self.batch_rows)
        if st.kept is not None:
            parts.append(st.kept.select(np.arange(take)))
        missing = self.batch_rows - take
        if missing > 0 and st.dropped is not None:
            filled_groups = missing // self.group_size
            rows = _rows_of_groups(st.dropped.group_ids, filled_groups)
            parts.append(st.dropped.select(rows))
        if not parts or sum(len(p) for p in parts) != self.batch_rows:
            raise RuntimeError(
                f"dynamic sampling gathered {sum(len(p) for p in parts)} of {self.batch_rows} "
                "rows (every round's groups are either kept or dropped, so this is a bug)"
            )
        batch = Rollout.concat(parts)
        totals = D.all_reduce_sum(
            np.array([st.generated, st.groups_dropped, filled_groups, take], dtype=np.float64),
            self.dist,
        )
        generated, dropped, filled, kept_rows = (float(x) for x in totals)
        metrics = {
            "dynamic_sampling/rounds": float(st.rounds),
            "dynamic_sampling/groups_dropped": dropped,
            "dynamic_sampling/groups_filled": filled,
            "dynamic_sampling/samples_per_kept": generated / max(kept_rows, 1.0),
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
