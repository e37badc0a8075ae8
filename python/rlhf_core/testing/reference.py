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
    "group_advantages",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "kl",
    "shaped_rewards",
    "broadcast_to_tokens",
    "reduce_tokens",
    "RunningMoments",
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


def group_advantages(
    scores: np.ndarray,
    *,
    group_ids: np.ndarray | None = None,
    group_size: int | None = None,
    baseline: str = "mean",
    scale: str = "group",
    ddof: int = 1,
    eps: float = 1e-6,
    singleton: str = "zero",
) -> tuple[np.ndarray, dict[str, int]]:
    """float64 group advantages with a dict of groups; returns ``(advantages, counts)``."""
    s = np.asarray(scores, dtype=np.float64)
    b = s.shape[0]
    if group_ids is None:
        assert group_size is not None, "pass group_ids or group_size"
        ids = np.arange(b) // group_size
    else:
        ids = np.asarray(group_ids)
    members: dict[int, list[int]] = {}
    for i, g in enumerate(ids.tolist()):
        members.setdefault(g, []).append(i)
    scorable = s[~np.isnan(s)]
    batch_std = 0.0
    if scorable.size > ddof:
        centred = scorable - scorable.mean()
        batch_std = float(np.sqrt(np.sum(centred**2) / (scorable.size - ddof)))
    adv = np.zeros(b)
    counts = {"num_groups": len(members), "num_nan": int(np.isnan(s).sum()),
              "num_singleton": 0, "num_zero_std": 0}
    for idx in members.values():
        ok = [i for i in idx if not np.isnan(s[i])]
        vals = s[ok]
        n = len(ok)
        if n == 1:
            counts["num_singleton"] += 1
            adv[ok[0]] = 0.0 if singleton == "zero" else vals[0]
            continue
        if n == 0:
            continue
        if np.all(vals == vals[0]):
            counts["num_zero_std"] += 1
            continue  # advantages stay exactly 0
        mean = vals.mean()
        std = float(np.sqrt(np.sum((vals - mean) ** 2) / (n - ddof)))
        for i in ok:
            if baseline == "mean":
                c = s[i] - mean
            else:  # leave one out: r_i minus the mean of the others
                c = s[i] - (vals.sum() - s[i]) / (n - 1)
            if scale == "group":
                c = c / (std + eps)
            elif scale == "batch":
                c = c / (batch_std + eps)
            adv[i] = c
    return adv, counts


def _selections(
    x: np.ndarray, mask: np.ndarray | None, offsets: np.ndarray | None, axis: int | None
) -> list[np.ndarray]:
    """The float64 valid values of the whole batch (one list entry) or of each row."""
    v = np.asarray(x, dtype=np.float64)
    valid = _valid(mask, v.shape)
    if axis is None:
        return [v[valid]]
    return [v[idx][valid[idx]] for idx in rows(v.shape, offsets)]


def _var(vals: np.ndarray, ddof: int) -> float:
    if vals.size <= ddof:
        return 0.0
    return float(np.sum((vals - vals.mean()) ** 2) / (vals.size - ddof))


def masked_mean(
    x: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    offsets: np.ndarray | None = None,
    axis: int | None = None,
) -> np.ndarray:
    """float64 mean of the valid entries: a 0-d array (axis None) or one per row; empty → 0."""
    means = [float(v.mean()) if v.size else 0.0 for v in _selections(x, mask, offsets, axis)]
    return np.asarray(means[0]) if axis is None else np.asarray(means)


def masked_var(
    x: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    offsets: np.ndarray | None = None,
    axis: int | None = None,
    ddof: int = 1,
) -> np.ndarray:
    """float64 two-pass variance of the valid entries; ``n <= ddof`` → 0."""
    out = [_var(v, ddof) for v in _selections(x, mask, offsets, axis)]
    return np.asarray(out[0]) if axis is None else np.asarray(out)


def masked_whiten(
    x: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    offsets: np.ndarray | None = None,
    shift_mean: bool = True,
    ddof: int = 1,
    eps: float = 1e-8,
    axis: int | None = None,
) -> np.ndarray:
    """float64 ``(x − μ)/sqrt(σ² + eps)`` (+ μ when not ``shift_mean``) on valid slots, 0 else."""
    v = np.asarray(x, dtype=np.float64)
    valid = _valid(mask, v.shape)
    out = np.zeros_like(v)
    groups = [slice(None)] if axis is None else list(rows(v.shape, offsets))
    for idx in groups:
        sel = valid[idx]
        vals = v[idx][sel]
        mu = float(vals.mean()) if vals.size else 0.0
        w = (vals - mu) / np.sqrt(_var(vals, ddof) + eps)
        if not shift_mean:
            w = w + mu
        row = out[idx]
        row[sel] = w
    return out


def kl(
    logp: np.ndarray, ref_logp: np.ndarray, *, estimator: str = "k3", clamp: float | None = 10.0
) -> np.ndarray:
    """float64 KL estimators of ``Δ = logp − ref_logp``, clamped to ``[−clamp, clamp]``."""
    with np.errstate(invalid="ignore"):
        d = np.asarray(logp, dtype=np.float64) - np.asarray(ref_logp, dtype=np.float64)
    name = {"kl": "k1", "mse": "k2", "low_var_kl": "k3"}.get(estimator, estimator)
    with np.errstate(over="ignore", invalid="ignore"):
        if name == "k1":
            out = d
        elif name == "k2":
            out = 0.5 * d * d
        elif name == "k3":
            dd = d if clamp is None else np.clip(d, -(clamp + 1), clamp + 1)
            # expm1(−Δ) + Δ cancels for tiny Δ: use the Taylor series there (error < Δ⁶/720)
            series = dd**2 / 2 - dd**3 / 6 + dd**4 / 24 - dd**5 / 120
            out = np.where(np.abs(dd) < 1e-3, series, np.expm1(-dd) + dd)
        elif name == "abs":
            out = np.abs(d)
        else:
            raise ValueError(estimator)
        if clamp is not None:
            out = np.where(np.isnan(out), out, np.clip(out, -clamp, clamp))
    return out


def shaped_rewards(
    scores: np.ndarray,
    logp: np.ndarray,
    ref_logp: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    offsets: np.ndarray | None = None,
    beta: float,
    estimator: str = "k1",
    clamp: float | None = 10.0,
) -> np.ndarray:
    """float64 ``−beta·KL`` on valid tokens plus the score on each row's last valid token."""
    k = kl(logp, ref_logp, estimator=estimator, clamp=clamp)
    valid = _valid(mask, k.shape)
    with np.errstate(invalid="ignore"):
        out = np.where(valid, -beta * k, 0.0)
    for i, idx in enumerate(rows(k.shape, offsets)):
        on = np.flatnonzero(valid[idx])
        if on.size:
            row = out[idx]
            row[on[-1]] += float(np.float64(scores[i]))
    return out


def broadcast_to_tokens(
    seq_values: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    offsets: np.ndarray | None = None,
) -> np.ndarray:
    """float64: each row's value on its valid slots, 0 elsewhere."""
    v = np.asarray(seq_values, dtype=np.float64)
    if mask is not None:
        shape = np.asarray(mask).shape
    else:
        assert offsets is not None
        shape = (int(offsets[-1]),)
    valid = _valid(mask, shape)
    out = np.zeros(shape)
    for i, idx in enumerate(rows(shape, offsets)):
        row = out[idx]
        row[valid[idx]] = v[i]
    return out


def reduce_tokens(
    x: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    offsets: np.ndarray | None = None,
    how: str = "sum",
) -> np.ndarray:
    """float64 per-row sum or mean of the valid entries (empty mean → 0)."""
    sel = _selections(x, mask, offsets, -1)
    if how == "sum":
        return np.asarray([float(v.sum()) for v in sel])
    return np.asarray([float(v.mean()) if v.size else 0.0 for v in sel])


class RunningMoments:
    """float64 running ``(count, mean, m2)`` (``m2`` = sum of squared deviations).

    ``update`` takes the valid entries of ``x`` (``mask`` optional, same shape), computes the
    batch's count, mean and ``m2`` in two passes, and folds them in with :meth:`merge`'s rule.
    ``merge`` is Chan, Golub and LeVeque's pairwise update (1979): with ``δ = μ_b − μ_a`` and
    ``n = n_a + n_b``, ``μ = μ_a + δ·n_b/n`` and ``m2 = m2_a + m2_b + δ²·n_a·n_b/n``.
    ``var`` is ``m2 / (count − ddof)``, 0 while ``count <= ddof``.
    """

    def __init__(self, ddof: int = 1) -> None:
        self.ddof = ddof
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0

    def update(self, x: np.ndarray, mask: np.ndarray | None = None) -> RunningMoments:
        v = np.asarray(x, dtype=np.float64)
        vals = v[_valid(mask, v.shape)]
        batch = RunningMoments(self.ddof)
        if vals.size:
            batch.count = int(vals.size)
            batch.mean = float(vals.sum() / vals.size)
            batch.m2 = float(((vals - batch.mean) ** 2).sum())
        return self.merge(batch)

    def merge(self, other: RunningMoments) -> RunningMoments:
        na, nb = self.count, other.count
        if nb == 0:
            return self
        if na == 0:
            self.count, self.mean, self.m2 = nb, other.mean, other.m2
            return self
        n = na + nb
        delta = other.mean - self.mean
        self.mean = self.mean + delta * nb / n
        self.m2 = self.m2 + other.m2 + delta * delta * na * nb / n
        self.count = n
        return self

    @property
    def var(self) -> float:
        return self.m2 / (self.count - self.ddof) if self.count > self.ddof else 0.0
