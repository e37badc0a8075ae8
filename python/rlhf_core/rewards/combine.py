"""The weighted sum of several reward sources: the one place scores are combined (trainers,
``rlhf-core label`` and ``eval``)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal

import numpy as np

from rlhf_core.rewards.functions import (
    RewardCall,
    call_reward_functions,
    check_reward_scores,
    reward_function_name,
)
from rlhf_core.rewards.model_scorer import RewardModelScorer

__all__ = [
    "NONE_POLICIES",
    "NonePolicy",
    "UnscorableStepError",
    "check_scorable_step",
    "combine_rewards",
]

logger = logging.getLogger("rlhf_core.rewards")

NonePolicy = Literal["skip_function", "unscorable"]
#: what a ``None`` (or NaN) score does to a sample (see :func:`combine_rewards`)
NONE_POLICIES: tuple[str, ...] = ("skip_function", "unscorable")


def combine_rewards(
    funcs: Callable[..., Any] | Sequence[Callable[..., Any]],
    weights: Sequence[float] | None,
    prompts: Sequence[Any],
    completions: Sequence[Any],
    *,
    return_components: bool = False,
    sequences: Sequence[Sequence[int] | np.ndarray] | None = None,
    model_context: Callable[[], AbstractContextManager[Any]] | None = None,
    none_policy: NonePolicy = "skip_function",
    completion_ids: Sequence[Any] | None = None,
    trainer_state: Any = None,
    log_metric: Callable[[str, float], None] | None = None,
    **columns: Any,
) -> np.ndarray | tuple[np.ndarray, dict[str, np.ndarray]]:
    """Weighted sum of several reward sources.

    Args:
        funcs: one reward function or a sequence of them (see
            :mod:`rlhf_core.rewards.functions` for how they are called; a
            :class:`RewardModelScorer` among them).
        weights: one finite weight per function; None means all 1.0.
        prompts, completions: B each, as reward functions receive them (strings, or lists of
            messages for conversational data).
        return_components: also return ``{name: float64 (B,)}`` with each function's raw
            (unweighted) scores, for logging. Repeated names get a suffix ``_1``, ``_2``, ...
            A scorer scored on token ids adds what its ``score_ids_parts`` returns besides the
            score as ``name/<part>`` (a reward ensemble: ``name/member_<k>``, ``name/std``);
            those are logged only, never added to the total.
        sequences: the B sampled token-id sequences (prompt + completion, int (L_i,) each); a
            :class:`RewardModelScorer` that reads the policy's ids
            (:attr:`RewardModelScorer.reads_policy_ids`) scores these exact tokens; one with
            another tokenizer is called on the texts and re-encodes them.
        model_context: a context entered around each reward-model forward (a trainer passes
            its bf16 autocast); reward functions run outside it.
        none_policy: what ``None`` / NaN from a source does. ``"skip_function"`` (TRL's rule,
            the default): that source is left out of that sample's sum (a weighted NaN-sum),
            and the sample is unscorable (NaN) only when every source of non-zero weight gave
            None. ``"unscorable"``: any None from a source of non-zero weight makes the sample
            unscorable (a sample one judge cannot score is not scored by the others).
        completion_ids, trainer_state, log_metric: keywords passed to the reward functions
            when given (see :mod:`rlhf_core.rewards.functions`).
        columns: extra per-completion dataset columns passed to the functions.

    The weight-0 rule: a source of weight 0 is **tracked, not optimised**. It is called and its
    raw scores are in the components (e.g. a gold reward watched while a proxy is optimised),
    but it never enters the total, so its None / NaN never makes a sample unscorable.

    Returns:
        float64 (B,) ``sum over k with weights[k] != 0 of weights[k] * scores_k`` (the terms
        that are None left out under ``"skip_function"``), NaN where the sample is unscorable.
        Trainers give NaN-scored samples zero advantage and count them.
    """
    fn_list = [funcs] if callable(funcs) else list(funcs)
    if not fn_list:
        raise ValueError("funcs is empty; pass at least one reward function")
    if weights is None:
        w = [1.0] * len(fn_list)
    else:
        w = [float(x) for x in weights]
        if len(w) != len(fn_list):
            raise ValueError(f"weights has {len(w)} entries, funcs has {len(fn_list)}")
        bad = [x for x in w if not math.isfinite(x)]
        if bad:
            raise ValueError(f"weights must be finite, got {w}")
    if none_policy not in NONE_POLICIES:
        raise ValueError(f"none_policy={none_policy!r}: expected one of {NONE_POLICIES}")
    if sequences is not None and len(sequences) != len(completions):
        raise ValueError(
            f"sequences has {len(sequences)} entries, completions has {len(completions)}"
        )
    call = RewardCall(prompts, completions, columns, completion_ids, trainer_state, log_metric)
    n = len(call)
    scores: list[np.ndarray | None] = [None] * len(fn_list)
    extras: list[dict[str, np.ndarray]] = [{} for _ in fn_list]
    for k, fn in enumerate(fn_list):  # reward models first, inside the model context
        if isinstance(fn, RewardModelScorer):
            with model_context() if model_context is not None else nullcontext():
                if sequences is not None and fn.reads_policy_ids:
                    # the exact sampled tokens; an ensemble also hands its members' scores
                    out: Any
                    out, extras[k] = fn.score_ids_parts(sequences)
                else:
                    out = call_reward_functions([fn], call)[0]
            scores[k] = check_reward_scores(out, n, reward_function_name(fn))
    rest = [k for k, s in enumerate(scores) if s is None]
    for k, s in zip(rest, call_reward_functions([fn_list[k] for k in rest], call), strict=True):
        scores[k] = s
    total = np.zeros(n, dtype=np.float64)
    scored = np.zeros(n, dtype=bool)
    optimised = False
    parts: dict[str, np.ndarray] = {}
    for fn, wk, maybe, extra in zip(fn_list, w, scores, extras, strict=True):
        assert maybe is not None
        s = maybe
        if wk != 0:  # weight 0: tracked (in the components), never in the total
            optimised = True
            if none_policy == "unscorable":
                total += wk * s  # NaN propagates
            else:
                ok = ~np.isnan(s)
                total[ok] += wk * s[ok]
                scored |= ok
        base = reward_function_name(fn)
        key, i = base, 0
        while key in parts:
            i += 1
            key = f"{base}_{i}"
        parts[key] = s
        for sub, v in extra.items():  # e.g. an ensemble's members and disagreement: logged only
            parts[f"{key}/{sub}"] = v
    if none_policy == "skip_function" and optimised:
        total[~scored] = np.nan  # every source of non-zero weight gave None
    return (total, parts) if return_components else total


class UnscorableStepError(ValueError):
    """Every sample of a training step is unscorable (each got ``None`` / NaN from every
    reward source of non-zero weight, or from one of them under ``none_policy="unscorable"``):
    the step would train on zero advantages."""


def check_scorable_step(
    num_samples: int,
    num_unscorable: int,
    by_source: Mapping[str, int],
    *,
    allow: bool,
    step: int | None = None,
) -> None:
    """The all-unscorable rule of a training step: when all ``num_samples`` samples (over every
    process) are unscorable, :class:`UnscorableStepError` naming the sources and how many
    ``None`` / NaN each gave (``by_source``), or with ``allow`` a warning with those counts
    (the step then trains on zero advantages). Fewer unscorable samples are fine (they are
    counted in ``reward/frac_unscorable``)."""
    if num_samples == 0 or num_unscorable < num_samples:
        return
    where = f"step {step}: " if step is not None else ""
    detail = ", ".join(f"{k!r} gave None/NaN for {c}" for k, c in by_source.items() if c)
    msg = (
        f"{where}all {num_samples} samples are unscorable ({detail or 'no source scored any'}); "
        "the step would train on zero advantages"
    )
    if not allow:
        raise UnscorableStepError(
            f"{msg}. Check the reward function(s) (e.g. a missing dataset column), or set "
            "allow_unscorable_steps = true (--allow_unscorable_steps) to train on with a warning"
        )
    logger.warning("%s (allow_unscorable_steps is on)", msg)
