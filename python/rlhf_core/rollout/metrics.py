"""What a rollout is logged as: reward, length and KL statistics of the global rollout."""

from __future__ import annotations

from typing import Any

import numpy as np

from rlhf_core import ops
from rlhf_core import parallel as D
from rlhf_core.rollout.batch import Rollout

__all__ = ["gather", "rollout_metrics"]


def gather(x: Any, dist: D.DistContext | None = None) -> np.ndarray:
    """The 1-D per-sequence (or per-token) array ``x`` of every rank, in rank order, which is
    the single-process order of the global batch (``x`` itself for one process)."""
    out, _ = D.all_gather_ragged(np.asarray(x), dist)
    return np.asarray(out)


def rollout_metrics(roll: Rollout, dist: D.DistContext | None = None) -> dict[str, float]:
    """Reward, length and KL statistics of the global rollout (per-sequence values of every
    rank are gathered first, so the numbers are those of a single process).

    ``reward/{mean,std,min,max}`` over scorable completions, ``reward/frac_unscorable``,
    ``reward/<source>`` (each source's mean raw score), what reward functions logged with
    ``log_metric(name, value)`` (the mean of the values over every rank, under ``name``),
    ``response_length/{mean,min,max,frac_truncated}``; once the rollout's and the
    reference's logprobs are known, ``kl`` (the mean over completions
    of Σ_t (log π − log π_ref), nats per sequence) and ``kl/k3_token_mean`` (the token mean of
    the k3 estimate), both from :func:`rlhf_core.ops.kl` and :func:`rlhf_core.ops.reduce_tokens`;
    with a distillation teacher, ``teacher_kl`` and ``teacher_kl/token_mean``, the same
    reverse-KL estimate (k1) against the teacher.
    """
    s = gather(roll.scores, dist)
    finite = s[np.isfinite(s)]
    all_lengths = gather(roll.response_lengths, dist)
    nan = float("nan")
    metrics: dict[str, float] = {
        "reward/mean": float(finite.mean()) if finite.size else nan,
        "reward/std": float(finite.std()) if finite.size else nan,
        "reward/min": float(finite.min()) if finite.size else nan,
        "reward/max": float(finite.max()) if finite.size else nan,
        "reward/frac_unscorable": float(np.mean(~np.isfinite(s))),
        "response_length/mean": float(all_lengths.mean()),
        "response_length/min": float(all_lengths.min()),
        "response_length/max": float(all_lengths.max()),
        "response_length/frac_truncated": float(
            np.mean(gather(np.asarray(roll.truncated, dtype=bool), dist))
        ),
    }
    for name, part in roll.score_parts.items():
        part = gather(part, dist)
        ok = part[np.isfinite(part)]
        metrics[f"reward/{name}"] = float(ok.mean()) if ok.size else nan
    metrics.update(_logged_by_reward_functions(roll, metrics, dist))
    if not (roll.logprobs and roll.ref_logprobs):
        return metrics
    logp = np.concatenate(roll.logprobs).astype(np.float64)
    ref = np.concatenate(roll.ref_logprobs).astype(np.float64)
    delta = ops.kl(logp, ref, estimator="k1", clamp=None)  # log π − log π_ref per token
    seq_kl = ops.reduce_tokens(delta, offsets=roll.response_offsets, how="sum")
    k3 = ops.kl(logp, ref, estimator="k3", clamp=None)
    metrics["kl"] = float(gather(seq_kl, dist).mean())
    metrics["kl/k3_token_mean"] = float(gather(k3, dist).mean())
    if roll.teacher_logprobs:
        tea = np.concatenate(roll.teacher_logprobs).astype(np.float64)
        d = ops.kl(logp, tea, estimator="k1", clamp=None)  # log π − log π_teacher per token
        metrics["teacher_kl"] = float(
            gather(ops.reduce_tokens(d, offsets=roll.response_offsets, how="sum"), dist).mean()
        )
        metrics["teacher_kl/token_mean"] = float(gather(d, dist).mean())
    return metrics


def _logged_by_reward_functions(
    roll: Rollout, metrics: dict[str, float], dist: D.DistContext | None
) -> dict[str, float]:
    """The mean of each name reward functions logged (every rank's values; a name logged on
    some ranks only is fine). A name of the rollout's own metrics is an error."""
    merged: dict[str, list[float]] = {}
    for logged in D.all_gather_object(roll.reward_metrics, dist):
        for name, values in logged.items():
            merged.setdefault(name, []).extend(values)
    taken = sorted(set(merged) & set(metrics))
    if taken:
        raise ValueError(
            f"a reward function logged {taken[0]!r} with log_metric, which is a metric of the "
            "trainer's own; log it under another name"
        )
    return {k: float(np.mean(v)) for k, v in merged.items() if v}
