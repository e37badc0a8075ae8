#!/usr/bin/env python
"""Time dynamic sampling's group filter: the Rust kernel (``ops.informative_groups``) against
the numpy loop it replaced (one boolean mask per group), and the buffer's in-place filter
(``RolloutBuffer.filter_groups``) against rebuilding a buffer from the kept rows.

Rollouts of N = groups × G sequences (G = 8, responses of 1 to T tokens, binary rewards so
about a quarter of the groups are all equal). Prints best-of-repeats times and ratios.

Usage: ``python benches/bench_select.py [--quick]`` (a release build: ``make build``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from rlhf_core import _core, ops
from rlhf_core.buffer import RolloutBuffer

G = 8


def best_time(fn: Callable[[], Any], reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def numpy_filter(scores: np.ndarray, ids: np.ndarray, min_std: float = 0.0) -> np.ndarray:
    """The loop rollout.dynamic used before the Rust kernel."""
    _, inverse, sizes = np.unique(ids, return_inverse=True, return_counts=True)
    finite = np.isfinite(scores)
    keep_group = np.empty(sizes.shape[0], dtype=bool)
    for k in range(sizes.shape[0]):
        if sizes[k] == 1:
            keep_group[k] = True
            continue
        vals = scores[(inverse == k) & finite]
        keep_group[k] = vals.size >= 2 and float(vals.std()) > min_std
    return keep_group[inverse]


def rollout(groups: int, t: int, rng: np.random.Generator) -> dict[str, Any]:
    n = groups * G
    lengths = rng.integers(1, t + 1, n)
    p = rng.integers(0, 1000, 64 * n).astype(np.int64)
    r = rng.integers(0, 1000, int(lengths.sum())).astype(np.int64)
    lp = -rng.random(int(lengths.sum())).astype(np.float32)
    # a per-group success rate of 0, 1 or in between: about a quarter all-equal groups
    rate = rng.choice([0.0, 0.3, 0.7, 1.0], groups).repeat(G)
    scores = (rng.random(n) < rate).astype(np.float64)
    return {
        "prompt": (p, np.full(n, 64, dtype=np.int64)),
        "response": (r, lengths.astype(np.int64)),
        "logprobs": lp,
        "scores": scores,
        "group_ids": np.arange(groups, dtype=np.int64).repeat(G),
    }


def offsets(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def fill(buf: RolloutBuffer, ro: dict[str, Any]) -> None:
    from rlhf_core.buffer import Ragged

    buf.add(
        prompt_ids=Ragged(ro["prompt"][0], offsets(ro["prompt"][1])),
        response_ids=Ragged(ro["response"][0], offsets(ro["response"][1])),
        logprobs=Ragged(ro["logprobs"], offsets(ro["response"][1])),
        scores=ro["scores"],
        group_ids=ro["group_ids"],
    )


def rebuild(ro: dict[str, Any], keep: np.ndarray) -> RolloutBuffer:
    """The copy the in-place filter avoids: gather the kept rows, add them to a new buffer."""
    from rlhf_core.buffer import Ragged

    def gather(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        ends = np.cumsum(lengths)
        starts = ends - lengths
        return np.concatenate(
            [values[s:e] for s, e, k in zip(starts, ends, keep, strict=True) if k]
        )

    buf = RolloutBuffer()
    pl, rl = ro["prompt"][1][keep], ro["response"][1][keep]
    buf.add(
        prompt_ids=Ragged(gather(ro["prompt"][0], ro["prompt"][1]), offsets(pl)),
        response_ids=Ragged(gather(ro["response"][0], ro["response"][1]), offsets(rl)),
        logprobs=Ragged(gather(ro["logprobs"], ro["response"][1]), offsets(rl)),
        scores=ro["scores"][keep],
        group_ids=ro["group_ids"][keep],
    )
    return buf


def row(groups: int, t: int, reps: int, rng: np.random.Generator) -> str:
    """One size: the filter against the numpy loop, in place against a rebuild."""
    ro = rollout(groups, t, rng)
    keep, _ = ops.informative_groups(ro["scores"], ro["group_ids"])
    assert np.array_equal(keep, numpy_filter(ro["scores"], ro["group_ids"]))
    ours = best_time(lambda: ops.informative_groups(ro["scores"], ro["group_ids"]), reps)
    base = best_time(lambda: numpy_filter(ro["scores"], ro["group_ids"]), reps)
    in_place = float("inf")
    for _ in range(reps):
        buf = RolloutBuffer()
        fill(buf, ro)
        t0 = time.perf_counter()
        buf.filter_groups()
        in_place = min(in_place, time.perf_counter() - t0)
    copy = best_time(lambda: rebuild(ro, keep), reps)
    return (
        f"{groups:>6}×{G:<3} {t:>5} | {ours * 1e3:9.3f} {base * 1e3:9.3f} {base / ours:6.1f} | "
        f"{in_place * 1e3:11.3f} {copy * 1e3:10.3f} {copy / in_place:6.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if _core.BUILD_PROFILE != "release":
        sys.exit("bench_select: a debug build of rlhf_core._core; run `make build` first")
    sizes = [(64, 256), (512, 1024)] if args.quick else [(64, 256), (512, 1024), (4096, 1024)]
    reps = 3 if args.quick else 7
    rng = np.random.default_rng(0)
    print(
        f"{'groups×G':>10} {'T':>5} | {'filter ms':>9} {'numpy ms':>9} {'×':>6} | "
        f"{'in place ms':>11} {'rebuild ms':>10} {'×':>6}"
    )
    for groups, t in sizes:
        print(row(groups, t, reps, rng))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
