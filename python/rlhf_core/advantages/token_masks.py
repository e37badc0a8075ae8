"""Per-token selections over a whole minibatch (every rank): which tokens an entropy-aware
update trains on or treats apart.

- :func:`top_entropy_mask`: TRL's ``top_entropy_quantile`` ρ (Wang et al. 2025, "the 80/20
  rule"): keep the tokens whose entropy is at least the (1 − ρ) quantile of the valid tokens'
  entropies (TRL ``GRPOTrainer.get_high_entropy_mask``: ``torch.quantile``'s linear
  interpolation, ties at the threshold kept, no valid token → nothing kept).
- :func:`covariance_scores` / :func:`covariance_of_batch`: the covariance score
  cov_t = (A_t − Ā)·(log π_t − mean log π), with the means over the valid tokens given (verl's
  ``cov_all`` over its micro-batch) or over every rank's.
- :func:`clip_cov_mask`: verl's Clip-Cov choice: k = max(⌊``clip_cov_ratio``·N⌋, 1) tokens
  drawn uniformly without replacement among the valid ones with lb < cov < ub (N = valid
  tokens); verl draws with ``torch.randperm`` on the global RNG, here the draw is the Rust
  planner's seeded permutation (:func:`rlhf_core.buffer.permutation`), so it is the same on
  every machine and after a resume.
- :func:`kl_cov_mask`: verl's KL-Cov choice: the k = max(⌊``kl_cov_ratio``·N⌋, 1) valid tokens
  with the largest cov (ties: the earlier token in rank-major, row-major order).

Each works on one minibatch's padded tensors and gathers what spans the ranks
(:func:`rlhf_core.parallel.all_gather_ragged`), so the selection is the one a single
process would make over the same global minibatch, and does not depend on how the minibatch
is split into micro-batches. The selection itself (quantile, top-k, subset) is CPU
bookkeeping on the gathered values, done in the Rust core (:func:`rlhf_core.ops.quantile`,
:func:`rlhf_core.ops.top_k_mask`, the planner's seeded permutation); the per-token maths of the losses stays in
:mod:`rlhf_core.losses`.

Where this differs from the anchors: TRL and verl select within each micro-batch (TRL gathers
its micro-batch over processes) from the *current* policy's entropies and log-probabilities,
so their choice depends on the micro-batch size. The trainers here call these functions once
per optimizer step with the rollout's values (the rollout policy's entropies and
log-probabilities): the same numbers on the first update of each rollout, and a choice that
does not depend on the micro-batch split. Clip-Cov's exclusion of tokens PPO already clips
(verl's ``clip_by_origin``) is the ``exclude`` argument; at the rollout policy no token is
clipped.
"""

from __future__ import annotations

import numpy as np
import torch

from rlhf_core import ops
from rlhf_core import parallel as D
from rlhf_core.advantages.distributed import _context

__all__ = [
    "clip_cov_mask",
    "covariance_of_batch",
    "covariance_scores",
    "kl_cov_mask",
    "selection_count",
    "top_entropy_mask",
]


def _bool(mask: torch.Tensor) -> torch.Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


def _gathered(
    values: torch.Tensor, valid: torch.Tensor, ctx: D.DistContext
) -> tuple[np.ndarray, int]:
    """float64 values of this rank's valid tokens (row-major) gathered over the ranks in rank
    order, and the offset of this rank's block in the result."""
    local = values.detach()[valid].to(torch.float64).cpu().numpy()  # one copy per minibatch
    full, counts = D.all_gather_ragged(local, ctx)
    return np.asarray(full, dtype=np.float64), int(sum(counts[: ctx.rank]))


def _scatter(chosen: np.ndarray, valid: torch.Tensor, offset: int) -> torch.Tensor:
    """This rank's (B, T) bool mask of the chosen positions of the gathered list."""
    n_local = int(valid.sum())
    mine = chosen[offset : offset + n_local]
    out = torch.zeros(valid.shape, dtype=torch.bool, device=valid.device)
    out[valid] = torch.from_numpy(mine).to(valid.device)
    return out


def selection_count(ratio: float, num_valid: int) -> int:
    """verl's k = max(⌊ratio·N⌋, 1), and 0 when there is no valid token."""
    if num_valid == 0:
        return 0
    return max(int(ratio * num_valid), 1)


def covariance_scores(
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    means: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Per-token covariance score cov_t = (A_t − Ā)·(log π(y_t) − mean log π), detached.

    Args:
        logprobs: float (B, T) log π of the sampled tokens.
        advantages: float (B, T), or (B,) per sequence (broadcast).
        mask: (B, T) valid tokens.
        means: (Ā, mean log π) over a larger batch (:func:`covariance_of_batch`); None = the
            means of the valid tokens given here (verl's, over its micro-batch).

    Returns:
        float64 (B, T), 0 at masked positions.
    """
    valid = _bool(mask)
    lp = logprobs.detach().to(torch.float64)
    adv = advantages.detach().to(torch.float64)
    if adv.dim() == 1:
        adv = adv[:, None].expand_as(lp)
    if lp.shape != valid.shape or adv.shape != valid.shape:
        raise ValueError(
            f"logprobs {tuple(lp.shape)} and advantages {tuple(adv.shape)} must have the "
            f"mask's shape {tuple(valid.shape)} (advantages may be one per row)"
        )
    zero = torch.zeros((), dtype=torch.float64, device=lp.device)
    lp, adv = torch.where(valid, lp, zero), torch.where(valid, adv, zero)
    if means is None:
        n = valid.sum().clamp(min=1).to(torch.float64)
        mean_a, mean_lp = adv.sum() / n, lp.sum() / n
    else:
        mean_a = torch.tensor(float(means[0]), dtype=torch.float64, device=lp.device)
        mean_lp = torch.tensor(float(means[1]), dtype=torch.float64, device=lp.device)
    return torch.where(valid, (adv - mean_a) * (lp - mean_lp), zero)


def top_entropy_mask(
    entropy: torch.Tensor,
    mask: torch.Tensor,
    quantile: float,
    dist: D.DistContext | None = None,
) -> torch.Tensor:
    """The tokens with the highest entropies: H_t ≥ τ with τ = the (1 − ``quantile``) quantile
    (linear interpolation) of the valid tokens' entropies of every rank.

    Args:
        entropy: float (B, T) per-token entropies.
        mask: (B, T) valid tokens.
        quantile: ρ in [0, 1], the fraction of tokens to keep (TRL ``top_entropy_quantile``;
            1 keeps every valid token, 0 only the largest entropy and its ties).

    Returns:
        bool (B, T): kept tokens (a subset of ``mask``).
    """
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"top_entropy_quantile={quantile}: expected in [0, 1] (1 = off)")
    valid = _bool(mask)
    if entropy.shape != valid.shape:
        raise ValueError(
            f"entropy has shape {tuple(entropy.shape)}, expected {tuple(valid.shape)} (the mask's)"
        )
    if quantile >= 1.0:
        return valid.clone()
    ctx = _context(dist)
    values, _ = _gathered(entropy, valid, ctx)
    if values.size == 0:
        return torch.zeros_like(valid)
    tau = ops.quantile(values, 1.0 - quantile)  # np.quantile's "linear", in the Rust core
    return (entropy.detach().to(torch.float64) >= tau) & valid


def covariance_of_batch(
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    dist: D.DistContext | None = None,
) -> torch.Tensor:
    """float64 (B, T) covariance scores with Ā and mean log π over every rank's valid tokens
    (0 where masked)."""
    ctx = _context(dist)
    valid = _bool(mask)
    lp = logprobs.detach().to(torch.float64)
    adv = advantages.detach().to(torch.float64)
    if adv.dim() == 1:
        adv = adv[:, None].expand_as(lp)
    zero = torch.zeros((), dtype=torch.float64, device=lp.device)
    sums = torch.stack(
        [
            valid.sum().to(torch.float64),
            torch.where(valid, adv, zero).sum(),
            torch.where(valid, lp, zero).sum(),
        ]
    )
    n, sum_a, sum_lp = (float(v) for v in D.all_reduce_sum(sums.cpu(), ctx))
    n = max(n, 1.0)
    return covariance_scores(lp, adv, valid, means=(sum_a / n, sum_lp / n))


def clip_cov_mask(
    cov: torch.Tensor,
    mask: torch.Tensor,
    *,
    ratio: float,
    lb: float,
    ub: float,
    seed: int,
    exclude: torch.Tensor | None = None,
    dist: D.DistContext | None = None,
) -> torch.Tensor:
    """Clip-Cov's tokens: k = max(⌊ratio·N⌋, 1) drawn without replacement among the valid
    tokens with ``lb < cov < ub`` (and not ``exclude``), N the valid tokens of every rank.

    Returns:
        bool (B, T); fewer than k tokens when there are fewer candidates (verl's rule).
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"clip_cov_ratio={ratio}: expected in (0, 1] (verl: 2e-4)")
    if not lb < ub:
        raise ValueError(f"clip_cov_lb={lb}, clip_cov_ub={ub}: expected lb < ub (verl: 1, 5)")
    from rlhf_core.buffer import permutation

    ctx = _context(dist)
    valid = _bool(mask)
    cand = valid & (cov > lb) & (cov < ub)
    if exclude is not None:
        cand = cand & ~_bool(exclude)
    values, offset = _gathered(cand.to(torch.float64), valid, ctx)
    is_cand = values > 0
    k = selection_count(ratio, values.size)
    where = np.flatnonzero(is_cand)
    chosen = np.zeros(values.size, dtype=bool)
    if where.size:
        chosen[where[permutation(int(where.size), seed)[: min(k, where.size)]]] = True
    return _scatter(chosen, valid, offset)


def kl_cov_mask(
    cov: torch.Tensor,
    mask: torch.Tensor,
    *,
    ratio: float,
    dist: D.DistContext | None = None,
) -> torch.Tensor:
    """KL-Cov's tokens: the k = max(⌊ratio·N⌋, 1) valid tokens of every rank with the largest
    covariance score (ties: the earlier token).

    Returns:
        bool (B, T).
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"kl_cov_ratio={ratio}: expected in (0, 1] (verl: 2e-4)")
    ctx = _context(dist)
    valid = _bool(mask)
    values, offset = _gathered(cov, valid, ctx)
    k = selection_count(ratio, values.size)
    chosen = ops.top_k_mask(values, k)  # ties: the earlier token (a stable argsort of −cov)
    return _scatter(chosen, valid, offset)
