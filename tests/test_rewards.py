"""Tests of rlhf_core.rewards: reward functions, combination, reward-model scoring, exact match,
the LM judge and pair labelling."""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest
import torch
from torch import nn

from rlhf_core import models as M
from rlhf_core import rewards as R


@pytest.fixture(scope="module")
def tok():
    return M.load_tokenizer()


def length_reward(prompts, completions, **columns):
    return [float(len(c)) for c in completions]


def maybe_reward(prompts, completions, **columns):
    return [None if "?" in c else 1.0 for c in completions]


# ---------------------------------------------------------------------------- functions


def test_combine_rewards_weights_nan_and_components():
    prompts = ["p"] * 3
    comps = ["ab", "abc?", "a"]
    total, parts = R.combine_rewards(
        [length_reward, maybe_reward], [0.5, 2.0], prompts, comps, return_components=True
    )
    assert total.dtype == np.float64 and total.shape == (3,)
    np.testing.assert_allclose(total[[0, 2]], [0.5 * 2 + 2.0, 0.5 * 1 + 2.0])
    assert np.isnan(total[1])
    assert list(parts) == ["length_reward", "maybe_reward"]
    np.testing.assert_array_equal(parts["length_reward"], [2.0, 4.0, 1.0])
    assert np.isnan(parts["maybe_reward"][1])
    # single function, default weights, repeated names get suffixes
    only = R.combine_rewards(length_reward, None, prompts, comps)
    np.testing.assert_array_equal(only, [2.0, 4.0, 1.0])
    _, parts2 = R.combine_rewards(
        [length_reward, length_reward], None, prompts, comps, return_components=True
    )
    assert list(parts2) == ["length_reward", "length_reward_1"]


def test_weight_zero_sources_are_tracked_not_added():
    """A weight-0 source is called and logged, but its None cannot make a sample unscorable
    (0 * NaN used to poison the total of ``label`` and ``eval``)."""
    prompts = ["p"] * 3
    comps = ["ab", "abc?", "a"]
    total, parts = R.combine_rewards(
        [length_reward, maybe_reward], [1.0, 0.0], prompts, comps, return_components=True
    )
    np.testing.assert_array_equal(total, [2.0, 4.0, 1.0])
    assert np.isnan(parts["maybe_reward"][1])  # still tracked
    # a non-zero weight keeps the rule that any unscorable source makes the sample unscorable
    total2 = R.combine_rewards([length_reward, maybe_reward], [1.0, -0.5], prompts, comps)
    assert np.isnan(total2[1]) and total2[0] == 2.0 - 0.5


def test_combine_rewards_scores_sampled_ids_under_the_models_context(tok):
    """With ``sequences`` a reward model scores the exact token ids (not the re-encoded texts),
    inside ``model_context``; reward functions run outside it."""
    import contextlib

    torch.set_num_threads(1)
    rm = M.RewardModel.from_policy(M.build_builtin_policy(tok, seed=0), seed=0)
    scorer = R.RewardModelScorer(rm, tok)
    seqs = [np.array([1, 5, 6, 7]), np.array([1, 9])]
    inside: list[bool] = []
    depth = [0]

    @contextlib.contextmanager
    def context():
        depth[0] += 1
        try:
            yield
        finally:
            depth[0] -= 1

    def watched(prompts, completions, **_):
        inside.append(depth[0] > 0)
        return [0.0] * len(completions)

    original = scorer.score_ids

    def spy(sequences):
        inside.append(depth[0] > 0)
        return original(sequences)

    scorer.score_ids = spy  # type: ignore[method-assign]
    total = R.combine_rewards(
        [scorer, watched], None, ["p", "q"], ["x", "y"], sequences=seqs, model_context=context
    )
    np.testing.assert_array_equal(total, original(seqs))
    assert inside == [True, False]
    with pytest.raises(ValueError, match="sequences has 1 entries, completions has 2"):
        R.combine_rewards([scorer], None, ["p", "q"], ["x", "y"], sequences=seqs[:1])


def test_reward_function_wrong_length_names_function():
    def short(prompts, completions, **kw):
        return [1.0]

    with pytest.raises(ValueError, match=r"'short' returned 1 scores for 3 completions"):
        R.combine_rewards([length_reward, short], None, ["p"] * 3, ["a", "b", "c"])


def test_reward_function_bad_types_are_named():
    with pytest.raises(TypeError, match=r"'bad' returned str at index 1"):
        bad = _named(lambda p, c: [1.0, "x"], "bad")
        R.call_reward_function(bad, ["p", "q"], ["a", "b"])
    with pytest.raises(TypeError, match="must return a list of 2 floats"):
        R.call_reward_function(_named(lambda p, c: 3.0, "scalar"), ["p", "q"], ["a", "b"])


def _named(fn, name):
    fn.__name__ = name
    return fn


def test_reward_function_array_and_tensor_returns():
    got = R.call_reward_function(lambda p, c: np.array([1, 2]), ["p", "q"], ["a", "b"])
    np.testing.assert_array_equal(got, [1.0, 2.0])
    got = R.call_reward_function(
        lambda p, c: torch.tensor([0.5, float("nan")]), ["p"] * 2, ["a"] * 2
    )
    assert got[0] == 0.5 and np.isnan(got[1])
    got = R.call_reward_function(lambda p, c: [True, 3], ["p"] * 2, ["a"] * 2)
    np.testing.assert_array_equal(got, [1.0, 3.0])


def test_columns_are_filtered_by_signature():
    seen = {}

    def wants_answer(prompts, completions, answer):
        seen["answer"] = answer
        return [0.0] * len(completions)

    def wants_all(prompts, completions, **columns):
        seen["all"] = sorted(columns)
        return [0.0] * len(completions)

    R.combine_rewards([wants_answer, wants_all], None, ["p"], ["c"], answer=["4"], level=[1])
    assert seen == {"answer": ["4"], "all": ["answer", "level"]}
    with pytest.raises(ValueError, match=r"needs column 'answer'; columns given: \['level'\]"):
        R.combine_rewards([wants_answer], None, ["p"], ["c"], level=[1])
    part = functools.partial(wants_all)
    assert R.reward_function_name(part) == "wants_all"


def test_column_and_weight_errors():
    with pytest.raises(ValueError, match="column 'answer' has 1 entries, completions has 2"):
        R.combine_rewards([length_reward], None, ["p", "q"], ["a", "b"], answer=["1"])
    with pytest.raises(ValueError, match="prompts has 1 entries, completions has 2"):
        R.combine_rewards([length_reward], None, ["p"], ["a", "b"])
    with pytest.raises(ValueError, match="weights has 1 entries, funcs has 2"):
        R.combine_rewards([length_reward, maybe_reward], [1.0], ["p"], ["a"])
    with pytest.raises(ValueError, match="funcs is empty"):
        R.combine_rewards([], None, ["p"], ["a"])


# ---------------------------------------------------------------------------- exact match


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12+7=19", "19"),
        ("so the answer is 42.", "42."),
        ("Answer: cat", "cat"),
        ("work... #### 1,000", "1,000"),
        (r"thus \boxed{7} and 9", "7"),
        ("no digits here\nsecond", "no digits here"),
        ("", ""),
        ("-3 and then -5", "-5"),
    ],
)
def test_extract_answer(text, expected):
    assert R.extract_answer(text) == expected


def test_exact_match_reward():
    comps = ["12+7=19", "12+7=19.0", "the answer is 20", "1,000", "Cat.", "nothing", "x"]
    answers = ["19", "19", "19", "1000", "cat", "5", None]
    got = R.exact_match_reward(["p"] * 7, comps, answer=answers)
    assert got == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0, None]
    total = R.combine_rewards([R.exact_match_reward], None, ["p"] * 7, comps, answer=answers)
    assert np.isnan(total[-1]) and total[0] == 1.0


# ---------------------------------------------------------------------------- reward model


def test_reward_model_scorer_matches_forward(tok):
    torch.set_num_threads(1)
    policy = M.build_builtin_policy(tok, seed=0)
    rm = M.RewardModel.from_policy(policy, seed=0)
    rm.train()
    scorer = R.RewardModelScorer(rm, tok, batch_size=2)
    prompts = ["1+1=", "hello", "a", "what is it"]
    comps = ["2", "hi there friend", "bcd", ""]
    got = scorer(prompts, comps, answer=["x"] * 4)
    assert rm.training  # mode restored
    assert isinstance(got, list) and len(got) == 4
    rm.eval()
    with torch.no_grad():
        for p, c, g in zip(prompts, comps, got, strict=True):
            ids, _ = M.encode_prompt_completion(tok, p, c)
            assert abs(rm(torch.tensor([ids]))[0].item() - g) < 1e-5
    assert R.reward_function_name(scorer) == "reward_model"
    # as a reward function inside combine_rewards
    total = R.combine_rewards([scorer, length_reward], [1.0, 0.0], prompts, comps)
    np.testing.assert_allclose(total, got, atol=1e-12)
    # max_length keeps the last tokens
    short = R.RewardModelScorer(rm, tok, max_length=4)
    seq = M.encode_prompt_completion(tok, "a long prompt", "xyz")[0]
    with torch.no_grad():
        expected = rm(torch.tensor([seq[-4:]]))[0].item()
    assert abs(short.score_ids([seq])[0] - expected) < 1e-5
    with pytest.raises(ValueError, match=r"sequences\[0\] is empty"):
        scorer.score_ids([[]])


# ---------------------------------------------------------------------------- judge


class _RuleJudge(nn.Module):
    """A fake judge LM: prefers the answer with more 'x' characters, plus a bias for slot A.

    Its logits at the last position put ``count_x(A) + bias`` on token "A" and ``count_x(B)``
    on token "B"; everything else is 0.
    """

    def __init__(self, tokenizer, bias=2.0):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.tok = tokenizer
        self.bias = bias
        self.a = tokenizer("A", add_special_tokens=False)["input_ids"][0]
        self.b = tokenizer("B", add_special_tokens=False)["input_ids"][0]
        self.seen_keep = []

    def forward(self, input_ids, attention_mask, position_ids=None, use_cache=None, **kw):
        self.seen_keep.append(kw.get("logits_to_keep"))
        b, t = input_ids.shape
        logits = torch.zeros(b, t, len(self.tok))
        for i in range(b):
            row = input_ids[i][attention_mask[i].bool()].tolist()
            text = self.tok.decode(row, skip_special_tokens=True)
            a_ans = re.search(r"Answer A: (.*)\n", text).group(1)
            b_ans = re.search(r"Answer B: (.*)\n", text).group(1)
            logits[i, -1, self.a] = a_ans.count("x") + self.bias
            logits[i, -1, self.b] = b_ans.count("x")
        return type("Out", (), {"logits": logits})()


def test_judge_cancels_position_bias(tok):
    judge = R.JudgeLabeler(_RuleJudge(tok, bias=2.0), tok, batch_size=3)
    prompts = ["q1", "q2", "q3", "q4"]
    a = ["xxx", "x", "same", "xx"]
    b = ["x", "xxxx", "same", "xx"]
    p, det = judge.preference_probs(prompts, a, b, return_details=True)
    diff = np.array([2.0, -3.0, 0.0, 0.0])
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-diff)), atol=1e-12)
    np.testing.assert_allclose(det["position_bias"], 2.0)
    np.testing.assert_allclose(det["logit_ab"], diff + 2.0)
    swapped = judge(prompts, b, a)
    np.testing.assert_allclose(swapped, 1 - p, atol=1e-12)


def test_judge_with_real_lm_is_antisymmetric(tok):
    lm = M.build_builtin_policy(tok, seed=1)
    judge = R.JudgeLabeler(lm, tok)
    prompts, a, b = ["2+2=", "hi"], ["4", "hello"], ["5", "hello"]
    p = judge(prompts, a, b)
    q = judge(prompts, b, a)
    assert p.shape == (2,) and np.all((p > 0) & (p < 1))
    np.testing.assert_allclose(p + q, 1.0, atol=1e-9)
    assert abs(p[1] - 0.5) < 1e-9  # identical answers

    class NoKeep(nn.Module):  # a model without logits_to_keep: full-logits fallback
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, position_ids, use_cache):
            return self.inner(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
            )

    p2 = R.JudgeLabeler(NoKeep(lm), tok)(prompts, a, b)
    np.testing.assert_allclose(p2, p, atol=1e-6)


def test_judge_argument_errors(tok):
    lm = M.build_builtin_policy(tok)
    with pytest.raises(ValueError, match="choice 'AB' encodes to 2 tokens"):
        R.JudgeLabeler(lm, tok, choices=("AB", "B"))
    with pytest.raises(ValueError, match=r"field \{answer_b\}"):
        R.JudgeLabeler(lm, tok, template="{prompt} {answer_a}")
    with pytest.raises(ValueError, match="must match"):
        R.JudgeLabeler(lm, tok)(["q"], ["a", "b"], ["c"])


# ---------------------------------------------------------------------------- label_pairs


def test_label_pairs_with_reward_function_hard_labels():
    prompts = ["p0", "p1", "p2", "p3"]
    a = ["long answer", "s", "tie", "what?"]
    b = ["short", "longer", "eit", "fine"]
    rows = R.label_pairs(prompts, a, b, length_reward)
    assert [r["index"] for r in rows] == [0, 1, 3]  # the tie is dropped
    assert rows[0]["chosen"] == "long answer" and rows[0]["rejected"] == "short"
    assert rows[1]["chosen"] == "longer" and rows[1]["chosen_score"] == 6.0
    assert all(r["p_chosen"] > 0.5 for r in rows)
    assert set(rows[0]) == {
        "prompt",
        "chosen",
        "rejected",
        "p_chosen",
        "index",
        "chosen_score",
        "rejected_score",
    }
    nan_rows = R.label_pairs(prompts, a, b, maybe_reward)  # "what?" unscorable, others tie
    assert nan_rows == []


def test_label_pairs_bradley_terry_sampling_is_seeded_and_calibrated():
    n = 4000
    prompts = ["p"] * n
    a = ["aaa"] * n  # length 3
    b = ["a"] * n  # length 1
    rows = R.label_pairs(prompts, a, b, length_reward, sample=True, beta=0.5, seed=7)
    again = R.label_pairs(prompts, a, b, length_reward, sample=True, beta=0.5, seed=7)
    assert rows == again
    frac_a = np.mean([r["chosen"] == "aaa" for r in rows])
    expected = 1 / (1 + np.exp(-0.5 * 2))
    assert len(rows) == n and abs(frac_a - expected) < 0.03
    other = R.label_pairs(prompts, a, b, length_reward, sample=True, beta=0.5, seed=8)
    assert other != rows


def test_label_pairs_with_lm_judge(tok):
    judge = R.JudgeLabeler(_RuleJudge(tok, bias=5.0), tok)
    rows = R.label_pairs(["q", "q"], ["xx", "y"], ["x", "xxx"], judge)
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("xx", "x"), ("xxx", "y")]
    assert "chosen_score" not in rows[0]
    with pytest.raises(TypeError, match="judge must be a reward function"):
        R.label_pairs(["q"], ["a"], ["b"], judge=3)
    with pytest.raises(ValueError, match="beta must be"):
        R.label_pairs(["q"], ["a"], ["b"], length_reward, beta=0.0)


# ------------------------------------------------------- what a reward function may return


@pytest.mark.parametrize(
    ("returned", "error", "message"),
    [
        # finding 8: a dict was scored by its keys (the run trained on the sample index)
        ({0: 0.5, 1: 0.25}, TypeError, r"'f' returned a dict; it must return a list of 2"),
        ("ab", TypeError, r"'f' must return a list of 2 floats \(or None\).*got str"),
        ({0.5, 0.25}, TypeError, r"'f' must return a list of 2 floats.*got set"),
        (iter([0.5, 0.25]), TypeError, r"'f' must return a list of 2 floats.*got list_iterator"),
        (np.ones((2, 1)), ValueError, r"'f' returned an array of shape \(2, 1\); expected \(2,\)"),
        (torch.ones(3), ValueError, r"'f' returned an array of shape \(3,\)"),
        (np.array(["a", "b"]), TypeError, r"'f' returned an array of dtype <U1"),
        ([0.5, [1.0]], TypeError, r"'f' returned list at index 1"),
    ],
)
def test_reward_function_results_are_checked(returned, error, message):
    f = _named(lambda p, c: returned, "f")
    with pytest.raises(error, match=message):
        R.call_reward_function(f, ["p", "q"], ["a", "b"])


def test_check_reward_scores_accepts_sequences_of_numbers_and_none():
    got = R.check_reward_scores((1, None, np.float32(0.5), np.array(2.0)), 4, "f")
    assert got.dtype == np.float64 and got[0] == 1.0 and np.isnan(got[1])
    assert got[2] == 0.5 and got[3] == 2.0


def test_all_unscorable_step_rule(caplog):
    R.check_scorable_step(4, 3, {"f": 3}, allow=False, step=2)  # some scorable: fine
    with pytest.raises(R.UnscorableStepError, match=r"step 2: all 4 samples are unscorable "
                       r"\('f' gave None/NaN for 4\)") as info:  # fmt: skip
        R.check_scorable_step(4, 4, {"f": 4, "g": 0}, allow=False, step=2)
    assert "allow_unscorable_steps" in str(info.value)
    with caplog.at_level("WARNING", logger="rlhf_core.rewards"):
        R.check_scorable_step(4, 4, {"f": 4}, allow=True, step=2)
    assert "all 4 samples are unscorable" in caplog.text


def _grpo(tmp_path, reward, **kw):
    from rlhf_core.testing.trainers import FAST, policy, tokenizer
    from rlhf_core.trainers import GRPOConfig, GRPOTrainer

    cfg = GRPOConfig(run_dir=str(tmp_path), total_steps=2, rollout_batch_size=4, num_samples=2,
                     max_new_tokens=4, learning_rate=1e-3, **FAST, **kw)  # fmt: skip
    return GRPOTrainer(cfg, policy(), tokenizer(), ["Q:", "A:"], reward)


def none_reward(prompts, completions, **columns):
    return [None] * len(completions)


def test_a_step_with_every_sample_unscorable_stops_the_trainer(tmp_path, caplog):
    """Finding 8: all-None rewards trained a whole run on zero advantages in silence."""
    with pytest.raises(R.UnscorableStepError, match="step 1: all 4 samples are unscorable"):
        _grpo(tmp_path / "a", none_reward).train()
    with caplog.at_level("WARNING", logger="rlhf_core.rewards"):
        res = _grpo(tmp_path / "b", none_reward, allow_unscorable_steps=True).train()
    assert res.step == 2 and res.metrics["reward/frac_unscorable"] == 1.0
    assert caplog.text.count("samples are unscorable ('none_reward' gave None/NaN for 4)") == 2
    # a weight-0 source is tracked, not optimised: its None cannot make a step unscorable
    res = _grpo(tmp_path / "c", [length_reward, none_reward], reward_weights=[1.0, 0.0]).train()
    assert res.step == 2


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_reward_weights_are_refused(bad):
    from rlhf_core.trainers import GRPOConfig

    with pytest.raises(ValueError, match="reward_weights=.*finite"):
        GRPOConfig(reward_weights=[1.0, bad])
