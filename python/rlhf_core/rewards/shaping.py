"""Length shaping of rewards: DAPO's soft overlong punishment as a reward source.

A completion of L tokens (EOS included, as the anchors count it), with L_max the most tokens a
completion may have and L_buf the length of the soft buffer before it, gets::

    penalty(L) = 0                              L ≤ L_max − L_buf
               = −(L − (L_max − L_buf)) / L_buf  L_max − L_buf < L ≤ L_max
               = −1                              L > L_max (``cap=True``; without the cap
                                                 the ramp goes on below −1)

times the penalty factor α (Yu et al. 2025, DAPO §3.4). The anchors agree inside the buffer
and differ only past L_max, which a sampler that stops at ``max_new_tokens`` = L_max never
reaches: verl ``DAPORewardManager.run_single`` (``overlong_buffer_cfg.{len, penalty_factor}``,
no cap), OpenRLHF ``apply_overlong_penalty`` (``--reward.overlong_buffer_len``, the excess
capped at L_buf), TRL ``get_soft_overlong_punishment(max_completion_len, soft_punish_cache)``
(a reward function of ``completion_ids``; −1 past L_max; α through ``reward_weights``).

:func:`soft_overlong_punishment` is TRL's reward-function form: it takes the ``completion_ids``
column the trainers pass to every reward function, composes with the other sources through
``reward_weights`` (:func:`rlhf_core.rewards.combine_rewards`), and is what the trainers add
for ``overlong_buffer_len`` with weight ``overlong_penalty_factor``. Masking truncated
completions out of the loss (``mask_truncated``, DAPO's overlong filtering) is separate and
stays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["overlong_penalty", "soft_overlong_punishment"]


def _check(max_len: int, buffer_len: int) -> None:
    if int(buffer_len) != buffer_len or buffer_len < 1:
        raise ValueError(f"overlong_buffer_len={buffer_len}: expected an integer >= 1")
    if int(max_len) != max_len or max_len < buffer_len:
        raise ValueError(
            f"max_completion_len={max_len}: expected an integer >= overlong_buffer_len="
            f"{buffer_len} (verl asserts max_resp_len >= overlong_buffer_cfg.len)"
        )


def overlong_penalty(
    lengths: Sequence[int] | np.ndarray,
    max_len: int,
    buffer_len: int,
    *,
    factor: float = 1.0,
    cap: bool = True,
) -> np.ndarray:
    """The soft overlong penalty of each completion length (see the module's formula).

    Args:
        lengths: int (N,) completion lengths in tokens (EOS included).
        max_len: L_max, the most tokens a completion may have (``max_new_tokens``).
        buffer_len: L_buf ≥ 1, at most ``max_len``.
        factor: α ≥ 0.
        cap: clamp the penalty at −α past L_max (TRL, OpenRLHF); False = verl's open ramp.

    Returns:
        float64 (N,) penalties in [−α, 0] (below −α past L_max without the cap).
    """
    _check(max_len, buffer_len)
    if not (np.isfinite(factor) and factor >= 0):
        raise ValueError(f"overlong_penalty_factor={factor}: expected a finite value >= 0")
    n = np.asarray(lengths, dtype=np.float64)
    excess = n - (max_len - buffer_len)
    if cap:
        excess = np.minimum(excess, buffer_len)
    return np.minimum(-excess / buffer_len, 0.0) * factor


def soft_overlong_punishment(
    max_completion_len: int, soft_punish_cache: int
) -> Callable[..., list[float | None]]:
    """TRL's soft overlong punishment as a reward function of the sampled token ids.

    Args:
        max_completion_len: L_max (the trainers use ``max_new_tokens``).
        soft_punish_cache: L_buf, the soft buffer before L_max (DAPO's ``overlong_buffer_len``).

    Returns:
        ``fn(prompts, completions, completion_ids) -> list[float]``: 0, the ramp
        to −1 inside the buffer, −1 past L_max; weight it by the penalty factor α.
    """
    _check(max_completion_len, soft_punish_cache)

    def soft_overlong_punishment(
        prompts: list[str], completions: list[str], completion_ids: Sequence[Any]
    ) -> list[float | None]:
        lengths = [len(ids) for ids in completion_ids]
        return [float(x) for x in overlong_penalty(lengths, max_completion_len, soft_punish_cache)]

    return soft_overlong_punishment
