"""Reward sources: user reward functions, reward-model scoring, verifiable answers, AI judges.

**The reward-function contract** (TRL's): a reward function is called by keyword,

.. code-block:: python

    def my_reward(completions, **kwargs) -> list[float | None]: ...
    def accuracy(completions, solution, **kwargs) -> list[float | None]: ...

with ``prompts``, ``completions`` (messages ``[{"role": "assistant", "content": ...}]`` when
the prompts are conversational), ``completion_ids``, ``trainer_state``, ``log_metric`` and
every extra dataset column; it returns one score per completion, ``None`` where it cannot
score that sample. ``async def`` functions run concurrently. Details and errors:
:mod:`rlhf_core.rewards.functions`.

One module per concern:

* :mod:`.functions`: :func:`call_reward_function`, :func:`call_reward_functions`,
  :func:`check_reward_scores` (the one check of what a function returned),
  :func:`check_reward_signature` (whether it can be called, before any call),
  :class:`TrainerState`, :class:`RewardFunctionError`.
* :mod:`.combine`: :func:`combine_rewards` weights several together: float64 (B,), each
  ``None`` skipping its function for that sample (TRL's weighted NaN-sum; a sample is
  unscorable only when every source of non-zero weight returned None), or with
  ``none_policy="unscorable"`` any None making the sample unscorable; plus the per-function
  arrays for logging. A weight-0 source is tracked (logged), never added to the total.
  :func:`check_scorable_step` is the rule for a training step whose samples are all
  unscorable (:class:`UnscorableStepError` unless allowed).
* :mod:`.model_scorer`: :class:`RewardModelScorer` makes a
  :class:`rlhf_core.models.RewardModel` a reward function, with its own tokenizer and chat
  template when they differ from the policy's.
* :mod:`.verifiable`: :func:`exact_match_reward` (with :func:`extract_answer`).
* :mod:`.judge`: :class:`JudgeLabeler` asks a causal LM which of two answers is better (RLAIF),
  reading the next-token logits of "A" and "B" in both orders to cancel position bias.
* :mod:`.labels`: :func:`label_pairs` turns pairs of completions into ``{prompt, chosen,
  rejected}`` preference rows with any judge, deterministically or with Bradley-Terry noise.
* :mod:`.ensemble`: :class:`RewardEnsembleScorer` scores with a reward-model ensemble reduced
  by :func:`reduce_ensemble` (mean, min, mean − λ·std, mean − λ·var), logging each member and
  :func:`ensemble_std`.
* :mod:`.shaping`: :func:`overlong_penalty` and :func:`soft_overlong_punishment` (DAPO's soft
  overlong punishment, TRL's reward-function form) penalise completions that run into the
  length limit.
"""

from __future__ import annotations

from rlhf_core.rewards.combine import (
    NONE_POLICIES,
    NonePolicy,
    UnscorableStepError,
    check_scorable_step,
    combine_rewards,
)
from rlhf_core.rewards.ensemble import (
    ENSEMBLE_REDUCTIONS,
    RewardEnsembleScorer,
    ensemble_std,
    reduce_ensemble,
)
from rlhf_core.rewards.functions import (
    RESERVED_KEYWORDS,
    RewardCall,
    RewardFunction,
    RewardFunctionError,
    RewardFunctionTypeError,
    TrainerState,
    call_reward_function,
    call_reward_functions,
    check_reward_scores,
    check_reward_signature,
    reward_function_name,
)
from rlhf_core.rewards.judge import DEFAULT_JUDGE_TEMPLATE, JudgeLabeler
from rlhf_core.rewards.labels import label_pairs
from rlhf_core.rewards.model_scorer import RewardModelScorer
from rlhf_core.rewards.shaping import overlong_penalty, soft_overlong_punishment
from rlhf_core.rewards.verifiable import completion_text, exact_match_reward, extract_answer

__all__ = [
    "DEFAULT_JUDGE_TEMPLATE",
    "ENSEMBLE_REDUCTIONS",
    "RewardEnsembleScorer",
    "ensemble_std",
    "reduce_ensemble",
    "JudgeLabeler",
    "NONE_POLICIES",
    "NonePolicy",
    "RESERVED_KEYWORDS",
    "RewardCall",
    "RewardFunction",
    "RewardFunctionError",
    "RewardFunctionTypeError",
    "RewardModelScorer",
    "TrainerState",
    "UnscorableStepError",
    "call_reward_function",
    "call_reward_functions",
    "check_reward_scores",
    "check_reward_signature",
    "check_scorable_step",
    "combine_rewards",
    "completion_text",
    "exact_match_reward",
    "extract_answer",
    "label_pairs",
    "overlong_penalty",
    "reward_function_name",
    "soft_overlong_punishment",
]
