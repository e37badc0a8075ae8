"""Readable float64 numpy references of every kernel in :mod:`rlhf_core.ops`.

Each function mirrors the kernel's signature (numpy inputs only), computes in float64 with
plain per-sequence Python loops, and returns float64 results in the input's layout. They are
slow on purpose: the point is that a reader can check them against the formulas in
``docs/kernels.md`` line by line. The test suite compares the Rust kernels with them.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = [
    "rows",
    "gae",
    "discounted_returns",
]


def _valid(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """Boolean validity of every slot: True, nonzero integer, or float > 0."""
    if mask is None:
        return np.ones(shape, dtype=bool)
    m = np.asarray(mask)
    if m.dtype.kind == "f":
        return m > 0
    return m != 0


def rows(shape: tuple[int, ...], offsets: np.ndarray | None) -> Iterator[slice | tuple]:
    """Index expressions of each sequence: ``x[idx]`` is that row's 1-D slots.

    Padded ``(B, T)``: row ``i`` is ``(i, slice(None))``; 1-D without offsets: one row; ragged:
    ``slice(offsets[i], offsets[i + 1])``.
    """
    if offsets is not None:
        off = np.asarray(offsets, dtype=np.int64)
        for i in range(len(off) - 1):
            yield slice(int(off[i]), int(off[i + 1]))
    elif len(shape) == 1:
        yield slice(None)
    else:
        for i in range(shape[0]):
            yield (i, slice(None))


def gae(
    rewards: np.ndarray,
    values: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    offsets: np.ndarray | None = None,
    gamma: float = 1.0,
    lam: float = 1.0,
    masked: str = "skip",
    bootstrap: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """float64 GAE: per row, reverse from the last valid token,
    ``δ = r + γ·V_next − V``, ``A = δ + γλ·A_next``; returns ``A + V``; masked slots 0."""
    r = np.asarray(rewards, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    valid = _valid(mask, r.shape)
    adv = np.zeros_like(r)
    ret = np.zeros_like(r)
    for i, idx in enumerate(rows(r.shape, offsets)):
        rr, vv, mm = r[idx], v[idx], valid[idx]
        a_row, ret_row = adv[idx], ret[idx]
        on = np.flatnonzero(mm)
        if on.size == 0:
            continue
        v_next = 0.0 if bootstrap is None else float(np.float64(bootstrap[i]))
        a_next = 0.0
        for t in range(on[-1], -1, -1):
            if mm[t]:
                delta = rr[t] + gamma * v_next - vv[t]
                a_next = delta + gamma * lam * a_next
                v_next = vv[t]
                a_row[t] = a_next
                ret_row[t] = a_next + vv[t]
            elif masked == "zero":
                a_next = gamma * v_next + gamma * lam * a_next
                v_next = 0.0
    return adv, ret


def discounted_returns(
    rewards: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    offsets: np.ndarray | None = None,
    gamma: float = 1.0,
    masked: str = "skip",
) -> np.ndarray:
    """float64 reward-to-go per row: ``G_t = r_t + γ·G_{t+1}`` from the last valid token;
    masked tokens inside a row are skipped (``"skip"``) or zero-reward steps (``"zero"``)."""
    r = np.asarray(rewards, dtype=np.float64)
    valid = _valid(mask, r.shape)
    out = np.zeros_like(r)
    for idx in rows(r.shape, offsets):
        rr, mm, o = r[idx], valid[idx], out[idx]
        on = np.flatnonzero(mm)
        if on.size == 0:
            continue
        g = 0.0
        for t in range(on[-1], -1, -1):
            if mm[t]:
                g = rr[t] + gamma * g
                o[t] = g
            elif masked == "zero":
                g = gamma * g
    return out
