"""Plain-Python references of the rollout buffer's planning, partition, packing,
materialisation and advantage estimators, and of dynamic sampling's refill
(:mod:`rlhf_core.buffer`).

Slow and obvious on purpose: per-sequence loops over Python lists and small numpy arrays, in the
order the documentation describes. The test suite compares the Rust core with them, and
``benches/bench_buffer.py`` times the plain-Python LPT partition against the core's.

Sequences are given as a list of dicts (one per sequence) with keys ``prompt_ids``,
``response_ids`` (1-D int arrays), optional per-token fields (1-D, one value per response
token) and optional per-sequence fields (scalars).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from rlhf_core.testing import reference as kref

__all__ = [
    "SplitMix64",
    "permutation",
    "minibatch_plan",
    "token_budget_batches",
    "micro_batch_plan",
    "lpt_partition",
    "ffd_pack",
    "padded_batch",
    "packed_batch",
    "advantages",
    "informative_flags",
    "refill",
]

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def mix64(z: int) -> int:
    """SplitMix64's output function."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


class SplitMix64:
    """SplitMix64 with Lemire's unbiased bounded integers, in Python integers."""

    def __init__(self, seed: int) -> None:
        self.state = seed & _M64

    def next_u64(self) -> int:
        self.state = (self.state + _GOLDEN) & _M64
        return mix64(self.state)

    def below(self, n: int) -> int:
        m = self.next_u64() * n
        low = m & _M64
        if low < n:
            threshold = ((1 << 64) - n) % n
            while low < threshold:
                m = self.next_u64() * n
                low = m & _M64
        return m >> 64


def stream(seed: int, epoch: int, stream_id: int) -> SplitMix64:
    return SplitMix64(mix64((mix64((mix64(seed) + epoch) & _M64) + stream_id) & _M64))


def shuffle(items: list[Any], rng: SplitMix64) -> None:
    for i in range(len(items) - 1, 0, -1):
        j = rng.below(i + 1)
        items[i], items[j] = items[j], items[i]


def permutation(n: int, seed: int, epoch: int) -> list[int]:
    """Fisher–Yates over ``range(n)`` with the stream ``(seed, epoch, 0)``."""
    v = list(range(n))
    shuffle(v, stream(seed, epoch, 0))
    return v


def minibatch_plan(
    n: int, batch_size: int, seed: int, epoch: int, *, drop_last: bool, shuffle_: bool = True
) -> list[list[int]]:
    order = permutation(n, seed, epoch) if shuffle_ else list(range(n))
    out = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if drop_last and out and len(out[-1]) < batch_size:
        out.pop()
    return out


def _width(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple


def token_budget_batches(
    order: Sequence[int],
    lengths: Sequence[int],
    budget: int,
    *,
    packed: bool,
    bucket: bool,
    pad_to_multiple_of: int = 1,
) -> list[list[int]]:
    """Micro-batches under a token budget, as documented in ``rlhf_core.buffer``."""
    m = 1 if packed else pad_to_multiple_of
    if not bucket:
        batches: list[list[int]] = []
        cur: list[int] = []
        cost = 0
        for i in order:
            w = lengths[i] if packed else _width(lengths[i], m)
            new = cost + w if packed else (len(cur) + 1) * max(cost, w)
            if cur and new > budget:
                batches.append(cur)
                cur, cost = [], 0
            cur.append(i)
            cost = cost + w if packed else max(cost, w)
        if cur:
            batches.append(cur)
        return batches
    ranked = sorted(order, key=lambda i: -lengths[i])  # stable: ties keep `order`
    if packed:
        rows: list[list[int]] = []
        loads: list[int] = []
        for i in ranked:
            for r, load in enumerate(loads):
                if load + lengths[i] <= budget:
                    rows[r].append(i)
                    loads[r] += lengths[i]
                    break
            else:
                rows.append([i])
                loads.append(lengths[i])
        return rows
    batches = []
    s = 0
    while s < len(ranked):
        w = max(_width(lengths[ranked[s]], m), 1)
        count = max(budget // w, 1)
        batches.append(ranked[s : s + count])
        s += count
    return batches


def micro_batch_plan(
    lengths: Sequence[int],
    budget: int,
    seed: int,
    epoch: int,
    *,
    packed: bool,
    bucket: bool,
    pad_to_multiple_of: int = 1,
    shuffle_: bool = True,
) -> list[list[int]]:
    """One epoch of ``RolloutBuffer.micro_batches``: shuffle, cut, then (bucketed) shuffle the
    micro-batch order with stream 1."""
    n = len(lengths)
    order = permutation(n, seed, epoch) if shuffle_ else list(range(n))
    batches = token_budget_batches(
        order, lengths, budget, packed=packed, bucket=bucket, pad_to_multiple_of=pad_to_multiple_of
    )
    if bucket and shuffle_:
        shuffle(batches, stream(seed, epoch, 1))
    return batches


def lpt_partition(lengths: Sequence[int], k: int) -> tuple[list[list[int]], list[int]]:
    """Plain-Python greedy LPT: lengths in decreasing order (ties by index), each to the lightest
    part (ties to the lowest part index), with a heap. Returns ``(parts, loads)``."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    heap = [(0, p) for p in range(k)]
    parts: list[list[int]] = [[] for _ in range(k)]
    loads = [0] * k
    for i in order:
        load, p = heapq.heappop(heap)
        parts[p].append(i)
        loads[p] = load + lengths[i]
        heapq.heappush(heap, (loads[p], p))
    return [sorted(p) for p in parts], loads


def ffd_pack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Plain first-fit-decreasing; rows list original indices in increasing order."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    loads: list[int] = []
    for i in order:
        for r, load in enumerate(loads):
            if load + lengths[i] <= capacity:
                rows[r].append(i)
                loads[r] += lengths[i]
                break
        else:
            rows.append([i])
            loads.append(lengths[i])
    return [sorted(r) for r in rows]


_NOT_REPEATED = {"prompt_ids", "response_ids", "loss_mask", "advantages", "returns"}


def _next_token_fields(seq: dict[str, Any]) -> list[str]:
    r = len(seq["response_ids"])
    return [
        k
        for k, v in seq.items()
        if k not in _NOT_REPEATED and isinstance(v, np.ndarray) and v.ndim == 1 and len(v) == r
        and not k.startswith("_")
    ]


def padded_batch(
    seqs: Sequence[dict[str, Any]],
    idx: Sequence[int],
    *,
    pad_token_id: int = 0,
    pad_to_multiple_of: int = 1,
    token_fields: Sequence[str] = (),
    seq_fields: Sequence[str] = (),
    seq_advantages: np.ndarray | None = None,
    token_advantages: Sequence[np.ndarray] | None = None,
    token_returns: Sequence[np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """The documented right-padded batch, built row by row."""
    rows = [seqs[i] for i in idx]
    lens = [len(s["prompt_ids"]) + len(s["response_ids"]) for s in rows]
    t = _width(max(lens), pad_to_multiple_of)
    b = len(rows)
    out: dict[str, np.ndarray] = {
        "input_ids": np.full((b, t), pad_token_id, dtype=np.int64),
        "attention_mask": np.zeros((b, t), dtype=np.int64),
        "position_ids": np.zeros((b, t), dtype=np.int64),
        "response_mask": np.zeros((b, t - 1), dtype=bool),
    }
    for name in token_fields:
        dt = np.asarray(rows[0][name]).dtype
        out["old_logprobs" if name == "logprobs" else name] = np.zeros((b, t - 1), dtype=dt)
    if token_advantages is not None or seq_advantages is not None:
        out["advantages"] = np.zeros((b, t - 1), dtype=np.float64)
    if token_returns is not None:
        out["returns"] = np.zeros((b, t - 1), dtype=np.float64)
    for r, (i, s) in enumerate(zip(idx, rows, strict=True)):
        p = len(s["prompt_ids"])
        resp = len(s["response_ids"])
        ids = list(s["prompt_ids"]) + list(s["response_ids"])
        for j, tok in enumerate(ids):
            out["input_ids"][r, j] = tok
            out["attention_mask"][r, j] = 1
            out["position_ids"][r, j] = j
        lm = s.get("loss_mask")
        for k in range(resp):
            col = p + k - 1  # logits at col predict input_ids[col + 1] = response token k
            on = True if lm is None else bool(lm[k])
            out["response_mask"][r, col] = on
            for name in token_fields:
                out["old_logprobs" if name == "logprobs" else name][r, col] = s[name][k]
            if token_advantages is not None:
                out["advantages"][r, col] = token_advantages[i][k]
            elif seq_advantages is not None and on:
                out["advantages"][r, col] = seq_advantages[i]
            if token_returns is not None:
                out["returns"][r, col] = token_returns[i][k]
    out["seq_index"] = np.asarray(idx, dtype=np.int64)
    out["prompt_lengths"] = np.asarray([len(s["prompt_ids"]) for s in rows], dtype=np.int64)
    out["response_lengths"] = np.asarray([len(s["response_ids"]) for s in rows], dtype=np.int64)
    if seq_advantages is not None:
        out["seq_advantages"] = np.asarray([seq_advantages[i] for i in idx], dtype=np.float64)
    for name in seq_fields:
        out[name] = np.asarray([s[name] for s in rows])
    return out


def packed_batch(
    seqs: Sequence[dict[str, Any]],
    idx: Sequence[int],
    *,
    token_fields: Sequence[str] = (),
) -> dict[str, np.ndarray]:
    """The documented packed row, built sequence by sequence."""
    ids: list[int] = []
    pos: list[int] = []
    seq_ids: list[int] = []
    cu = [0]
    for r, i in enumerate(idx):
        s = seqs[i]
        toks = list(s["prompt_ids"]) + list(s["response_ids"])
        ids += toks
        pos += list(range(len(toks)))
        seq_ids += [r] * len(toks)
        cu.append(cu[-1] + len(toks))
    total = len(ids)
    out: dict[str, np.ndarray] = {
        "input_ids": np.asarray([ids], dtype=np.int64),
        "position_ids": np.asarray([pos], dtype=np.int64),
        "seq_ids": np.asarray([seq_ids], dtype=np.int64),
        "cu_seqlens": np.asarray(cu, dtype=np.int32),
        "response_mask": np.zeros((1, total - 1), dtype=bool),
    }
    for name in token_fields:
        dt = np.asarray(seqs[idx[0]][name]).dtype
        out["old_logprobs" if name == "logprobs" else name] = np.zeros((1, total - 1), dtype=dt)
    for r, i in enumerate(idx):
        s = seqs[i]
        p = len(s["prompt_ids"])
        lm = s.get("loss_mask")
        for k in range(len(s["response_ids"])):
            col = cu[r] + p + k - 1
            out["response_mask"][0, col] = True if lm is None else bool(lm[k])
            for name in token_fields:
                out["old_logprobs" if name == "logprobs" else name][0, col] = s[name][k]
    return out


def _weighted_whiten(x: np.ndarray, w: np.ndarray, eps: float, ddof: float = 0.0) -> np.ndarray:
    """``(x − μ)/sqrt(σ² + eps)``, weighted mean, σ² = Σw(x−μ)²/(Σw − ddof) (0 if Σw ≤ ddof).

    ``ddof=0``: weighted population variance; ``ddof=1`` with integer frequency weights: the
    unbiased variance of the values repeated ``w`` times. Weight 0 → 0.
    """
    on = w > 0
    if not on.any():
        return np.zeros_like(x)
    sw = float(np.sum(w[on]))
    mu = float(np.sum(w[on] * x[on]) / sw)
    ss = float(np.sum(w[on] * (x[on] - mu) ** 2))
    var = ss / (sw - ddof) if sw > ddof else 0.0
    return np.where(on, (x - mu) / np.sqrt(var + eps), 0.0)


def advantages(
    seqs: Sequence[dict[str, Any]],
    estimator: str,
    *,
    gamma: float = 1.0,
    lam: float = 1.0,
    masked: str = "skip",
    kl_coef: float = 0.0,
    kl_estimator: str = "k1",
    kl_clamp: float | None = None,
    ddof: int = 1,
    eps: float = 1e-6,
    singleton: str = "zero",
    scale: str | None = None,
    whiten: str | None = None,
    whiten_eps: float = 1e-8,
    group_size: int | None = None,
) -> tuple[str, np.ndarray, np.ndarray | None]:
    """float64 reference of ``RolloutBuffer.compute_advantages``.

    Returns ``(level, advantages, returns)``: level ``"sequence"`` with ``(N,)`` advantages, or
    ``"token"`` with flat per-token advantages and returns in buffer order.
    """
    n = len(seqs)
    lens = [len(s["response_ids"]) for s in seqs]
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    scores = np.asarray([s.get("scores", np.nan) for s in seqs], dtype=np.float64)
    has_scores = all("scores" in s for s in seqs)
    nan_seq = np.isnan(scores) if has_scores else np.zeros(n, dtype=bool)
    valid = np.concatenate(
        [
            np.asarray(s["loss_mask"], dtype=bool)
            if "loss_mask" in s
            else np.ones(len(s["response_ids"]), dtype=bool)
            for s in seqs
        ]
        or [np.zeros(0, dtype=bool)]
    )
    for i in range(n):
        if nan_seq[i]:
            valid[offsets[i] : offsets[i + 1]] = False
    counts = np.asarray(
        [valid[offsets[i] : offsets[i + 1]].sum() for i in range(n)], dtype=np.float64
    )

    group = estimator in ("grpo", "dr_grpo", "rloo", "reinforce++_baseline")
    seq_adv = None
    if group:
        baseline = "leave_one_out" if estimator == "rloo" else "mean"
        default_scale = "group" if estimator == "grpo" else "none"
        ids = None if group_size is not None else np.asarray([s["group_ids"] for s in seqs])
        seq_adv, _ = kref.group_advantages(
            scores,
            group_ids=ids,
            group_size=group_size,
            baseline=baseline,
            scale=scale or default_scale,
            ddof=ddof,
            eps=eps,
            singleton=singleton,
        )
    default_whiten = "token" if estimator in ("gae", "reinforce++", "reinforce++_baseline") else "none"
    wmode = whiten or default_whiten
    has_rewards = bool(seqs) and all("rewards" in s for s in seqs)
    per_sequence = estimator in ("grpo", "dr_grpo", "rloo") or (
        estimator == "reinforce++_baseline" and kl_coef == 0.0 and gamma == 1.0 and not has_rewards
    )
    if per_sequence:
        assert seq_adv is not None
        a = seq_adv.astype(np.float64)
        if wmode == "token":
            a = _weighted_whiten(a, counts, whiten_eps, ddof=1.0)
        elif wmode == "sequence":
            a = _weighted_whiten(a, ((counts > 0) & ~nan_seq).astype(np.float64), whiten_eps)
        return "sequence", a, None

    if seq_adv is not None:
        outcome: np.ndarray | None = seq_adv
    elif has_rewards or not has_scores:
        outcome = None  # a held `rewards` field is the whole per-token reward
    else:
        outcome = scores
    t = int(offsets[-1])
    if kl_coef != 0.0:
        lp = np.concatenate([np.asarray(s["logprobs"], np.float64) for s in seqs])
        rf = np.concatenate([np.asarray(s["ref_logprobs"], np.float64) for s in seqs])
        rewards = kref.shaped_rewards(
            np.zeros(n) if outcome is None else outcome, lp, rf, valid, offsets=offsets,
            beta=kl_coef, estimator=kl_estimator, clamp=kl_clamp,
        )
    else:
        rewards = np.zeros(t)
        for i in range(n):
            on = np.flatnonzero(valid[offsets[i] : offsets[i + 1]])
            if on.size and outcome is not None:
                rewards[offsets[i] + on[-1]] = outcome[i]
    if has_rewards:
        tok = np.concatenate([np.asarray(s["rewards"], np.float64) for s in seqs])
        rewards = rewards + np.where(valid, tok, 0.0)
    if estimator == "gae":
        values = np.concatenate([np.asarray(s["values"], np.float64) for s in seqs])
        adv, ret = kref.gae(
            rewards, values, valid, offsets=offsets, gamma=gamma, lam=lam, masked=masked
        )
    else:
        ret = kref.discounted_returns(rewards, valid, offsets=offsets, gamma=gamma, masked=masked)
        adv = ret.copy()
    if wmode == "token":
        adv = kref.masked_whiten(adv, valid, ddof=1, eps=whiten_eps)
    elif wmode == "sequence":
        w = np.zeros(t)
        for i in range(n):
            sl = slice(offsets[i], offsets[i + 1])
            c = valid[sl].sum()
            if c:
                w[sl] = np.where(valid[sl], 1.0 / c, 0.0)
        adv = _weighted_whiten(adv, w, whiten_eps)
    return "token", adv, ret


# ---------------------------------------------------------------------------------------------
# dynamic sampling's refill (buffer.GroupRefill)


def informative_flags(scores: Sequence[float], group_ids: Sequence[int], min_std: float) -> list[bool]:
    """Per row: its group (equal id) has one row, or at least two finite scores, not all
    equal, whose population std (Python floats) is above ``min_std``."""
    members: dict[int, list[float]] = {}
    for s, g in zip(scores, group_ids, strict=True):
        members.setdefault(int(g), []).append(float(s))
    keep = {}
    for g, vals in members.items():
        finite = [v for v in vals if math.isfinite(v)]
        if len(vals) == 1:
            keep[g] = True
        elif len(finite) < 2 or all(v == finite[0] for v in finite):
            keep[g] = False
        else:
            mean = math.fsum(finite) / len(finite)
            std = math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / len(finite))
            keep[g] = std > min_std
    return [keep[int(g)] for g in group_ids]


def refill(
    rounds: Sequence[tuple[Sequence[float], Sequence[int]]],
    *,
    batch_rows: int,
    group_size: int,
    min_std: float,
) -> dict[str, Any]:
    """The bookkeeping of the scored ``rounds`` (``(scores, group_ids)`` each, in order):
    ``keep`` (per row), ``generated``, ``groups_dropped``, ``kept_rows`` (of all rounds),
    and the batch: ``rows`` (the first ``batch_rows`` kept rows, then the rows of the first
    ``(batch_rows - taken) // group_size`` dropped group ids; None when that is not exactly
    ``batch_rows`` rows), ``taken`` (kept rows in it) and ``groups_filled``."""
    keep: list[bool] = []
    ids: list[int] = []
    groups_dropped = 0
    for scores, gids in rounds:
        flags = informative_flags(scores, gids, min_std)
        groups_dropped += len({int(g) for g, f in zip(gids, flags, strict=True) if not f})
        keep += flags
        ids += [int(g) for g in gids]
    kept = [i for i, f in enumerate(keep) if f]
    dropped = [i for i, f in enumerate(keep) if not f]
    rows = kept[:batch_rows]
    taken = len(rows)
    missing = batch_rows - taken
    filled = 0
    if missing > 0 and dropped:
        filled = missing // group_size
        wanted = list(dict.fromkeys(ids[i] for i in dropped))[:filled]
        rows += [i for i in dropped if ids[i] in wanted]
    return {
        "keep": keep,
        "generated": len(keep),
        "groups_dropped": groups_dropped,
        "kept_rows": len(kept),
        "rows": rows if len(rows) == batch_rows else None,
        "taken": taken,
        "groups_filled": filled,
    }
