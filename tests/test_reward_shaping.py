"""DAPO's soft overlong punishment: the penalty against re-typed versions of verl's, OpenRLHF's
and TRL's formulas (as the research note describes them), the reward-function form, and the
trainers' ``overlong_buffer_len`` / ``overlong_penalty_factor`` adding it as a weighted source."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from rlhf_core import rewards
from rlhf_core.testing.trainers import FAST, policy, tokenizer
from rlhf_core.trainers import GRPOConfig, GRPOTrainer


def verl_dapo(length, max_resp_len, buffer_len, factor):
    """verl ``DAPORewardManager.run_single``: min(−(L − (L_max − L_buf))/L_buf·α, 0)."""
    exceed = length - (max_resp_len - buffer_len)
    return min(-exceed / buffer_len * factor, 0.0)


def openrlhf(length, max_len, buffer_len, factor):
    """OpenRLHF ``apply_overlong_penalty``: the excess capped at L_buf, applied when > 0."""
    exceed = min(length - (max_len - buffer_len), buffer_len)
    return -exceed / buffer_len * factor if exceed > 0 else 0.0


def trl_soft(length, max_completion_len, cache):
    """TRL ``get_soft_overlong_punishment``: 0, the ramp in the buffer, −1 past L_max."""
    if length <= max_completion_len - cache:
        return 0.0
    if length <= max_completion_len:
        return (max_completion_len - cache - length) / cache
    return -1.0


@pytest.mark.parametrize("max_len, buf", [(20, 4), (16, 16), (7, 1), (512, 128)])
def test_penalty_matches_the_anchors(max_len, buf):
    lengths = np.arange(0, max_len + 6)
    inside = lengths <= max_len
    ours = rewards.overlong_penalty(lengths, max_len, buf, factor=0.5)
    np.testing.assert_allclose(ours, [openrlhf(n, max_len, buf, 0.5) for n in lengths], rtol=1e-15)
    np.testing.assert_allclose(ours, [0.5 * trl_soft(n, max_len, buf) for n in lengths], rtol=1e-15)
    # verl has no cap: equal up to L_max, an open ramp past it
    open_ramp = rewards.overlong_penalty(lengths, max_len, buf, factor=0.5, cap=False)
    np.testing.assert_allclose(open_ramp, [verl_dapo(n, max_len, buf, 0.5) for n in lengths])
    np.testing.assert_array_equal(open_ramp[inside], ours[inside])
    assert ours.min() == -0.5 and ours[lengths <= max_len - buf].max() == 0.0


def test_reward_function_form_reads_completion_ids():
    fn = rewards.soft_overlong_punishment(10, 4)
    assert rewards.reward_function_name(fn) == "soft_overlong_punishment"
    ids = [[1] * 5, [1] * 6, [1] * 8, [1] * 10]
    assert fn(["p"] * 4, ["c"] * 4, completion_ids=ids) == [0.0, 0.0, -0.5, -1.0]
    # composes with other sources: the weight is the penalty factor α
    total = rewards.combine_rewards(
        [lambda p, c, **_: [1.0] * len(c), fn], [1.0, 0.3], ["p"] * 4, ["c"] * 4,
        completion_ids=ids,
    )  # fmt: skip
    np.testing.assert_allclose(total, [1.0, 1.0, 0.85, 0.7])
    with pytest.raises(ValueError, match="completion_ids"):
        rewards.combine_rewards(fn, None, ["p"], ["c"])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: rewards.overlong_penalty([1], 4, 0), "overlong_buffer_len=0"),
        (lambda: rewards.overlong_penalty([1], 3, 4), "max_completion_len=3"),
        (lambda: rewards.overlong_penalty([1], 8, 4, factor=-1), "overlong_penalty_factor"),
        (lambda: GRPOConfig(max_new_tokens=8, overlong_buffer_len=9, **FAST), "overlong_buffer_len=9"),
        (lambda: GRPOConfig(overlong_buffer_len=4, overlong_penalty_factor=-1.0, **FAST),
         "overlong_penalty_factor=-1.0"),
    ],
)  # fmt: skip
def test_errors_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_trainer_adds_the_weighted_source(tmp_path):
    seen: list[Any] = []

    def constant(prompts: list[str], completions: list[str], **cols: Any) -> list[float]:
        seen.append(cols["completion_ids"])
        return [1.0] * len(completions)

    cfg = GRPOConfig(run_dir=str(tmp_path), total_steps=1, rollout_batch_size=8, num_samples=4,
                     max_new_tokens=6, overlong_buffer_len=3, overlong_penalty_factor=0.5,
                     reward_weights=[2.0], **FAST)  # fmt: skip
    t = GRPOTrainer(cfg, policy(), tokenizer(), ["Q:", "A:"], constant)
    roll = t.collect(0, forward=False)
    lengths = roll.response_lengths
    # the sampled ids reached the reward function as the completion_ids column
    assert [len(x) for x in seen[0]] == list(lengths)
    expected = 2.0 + rewards.overlong_penalty(lengths, 6, 3, factor=0.5)
    np.testing.assert_allclose(roll.scores, expected)
    assert "soft_overlong_punishment" in roll.score_parts
    res = t.train()
    assert "reward/soft_overlong_punishment" in res.metrics


def test_a_completion_ids_prompt_column_is_refused(tmp_path):
    cfg = GRPOConfig(run_dir=str(tmp_path), total_steps=1, rollout_batch_size=4, num_samples=2,
                     **FAST)  # fmt: skip
    prompts = [{"prompt": "Q:", "completion_ids": 1}, {"prompt": "A:", "completion_ids": 2}]
    with pytest.raises(ValueError, match="completion_ids"):
        GRPOTrainer(cfg, policy(), tokenizer(), prompts, lambda p, c, **_: [0.0] * len(c))
