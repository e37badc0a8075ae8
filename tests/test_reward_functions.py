"""The reward-function contract (TRL's): functions called by keyword with ``prompts``,
``completions``, ``completion_ids``, ``trainer_state``, ``log_metric`` and the dataset's
columns; None skipping one function for one sample; ``async def`` functions run together;
errors that name the function and the sample; and the ``--reward_funcs`` spellings."""

from __future__ import annotations

import asyncio
import pathlib
import re
import sys
import threading
import time
from typing import Any

import numpy as np
import pytest

from rlhf_core import rewards as R

# ---- functions written exactly to TRL's documented signatures ------------------------------


def accuracy_reward(completions, solution, **kwargs):
    """TRL's documented accuracy reward: conversational completions, a ``solution`` column."""
    contents = [completion[0]["content"] for completion in completions]
    return [1.0 if c.strip() == s else 0.0 for c, s in zip(contents, solution, strict=True)]


def format_reward(completions, **kwargs):
    """TRL's documented format reward."""
    pattern = r"^<think>.*?</think><answer>.*?</answer>$"
    contents = [completion[0]["content"] for completion in completions]
    return [1.0 if re.match(pattern, c) else 0.0 for c in contents]


def math_only(completions, task, **kwargs):
    """A multi-task mix: None on the rows it does not score."""
    return [float(len(c)) if t == "math" else None for c, t in zip(completions, task, strict=True)]


def code_only(completions, task, **kwargs):
    return [1.0 if t == "code" else None for t in task]


def test_trl_signatures_run_unchanged_on_conversational_completions() -> None:
    prompts = [[{"role": "user", "content": "1+1?"}], [{"role": "user", "content": "2+2?"}]]
    completions = [
        [{"role": "assistant", "content": "<think>easy</think><answer>2</answer>"}],
        [{"role": "assistant", "content": "4"}],
    ]
    total, parts = R.combine_rewards(
        [accuracy_reward, format_reward], [1.0, 0.5], prompts, completions,
        return_components=True, solution=["2", "4"],
    )  # fmt: skip
    np.testing.assert_array_equal(parts["accuracy_reward"], [0.0, 1.0])
    np.testing.assert_array_equal(parts["format_reward"], [1.0, 0.0])
    np.testing.assert_array_equal(total, [0.5, 1.0])


def test_every_keyword_reaches_a_kwargs_function() -> None:
    seen: dict[str, Any] = {}

    def spy(completions, **kwargs):
        seen.update(kwargs, completions=completions)
        return [0.0] * len(completions)

    state = R.TrainerState(global_step=3, max_steps=10, epoch=0.5)
    logged: list[tuple[str, float]] = []
    R.combine_rewards(
        [spy], None, ["p", "q"], ["a", "b"], completion_ids=[[1, 2], [3]],
        trainer_state=state, log_metric=lambda n, v: logged.append((n, v)),
        answer=["1", "2"],
    )  # fmt: skip
    assert seen["prompts"] == ["p", "q"] and seen["completions"] == ["a", "b"]
    assert seen["completion_ids"] == [[1, 2], [3]] and seen["answer"] == ["1", "2"]
    assert seen["trainer_state"].global_step == 3 and seen["trainer_state"].epoch == 0.5
    seen["log_metric"]("fmt/frac", 0.25)
    assert logged == [("fmt/frac", 0.25)]


def test_named_keywords_only_and_the_older_positional_form() -> None:
    def named(completions, completion_ids):  # no **kwargs: only what it names
        return [float(len(i)) for i in completion_ids]

    def older(prompts, completions, answer):  # called as fn(prompts, completions, answer=)
        return [float(p == a) for p, a in zip(prompts, answer, strict=True)]

    got = R.call_reward_function(named, ["p"], ["c"], completion_ids=[[1, 2, 3]], extra=[0])
    np.testing.assert_array_equal(got, [3.0])
    got = R.call_reward_function(older, ["x", "y"], ["c", "d"], answer=["x", "z"])
    np.testing.assert_array_equal(got, [1.0, 0.0])


def test_none_skips_that_function_for_that_sample() -> None:
    task = ["math", "code", "math", "poetry"]
    comps = ["ab", "x", "abcd", "z"]
    total = R.combine_rewards([math_only, code_only], [1.0, 2.0], ["p"] * 4, comps, task=task)
    np.testing.assert_array_equal(total[:3], [2.0, 2.0, 4.0])
    assert np.isnan(total[3])  # every function returned None: unscorable
    strict = R.combine_rewards(
        [math_only, code_only], [1.0, 2.0], ["p"] * 4, comps, task=task,
        none_policy="unscorable",
    )  # fmt: skip
    assert np.isnan(strict).all()  # today's older rule, kept as an option
    with pytest.raises(ValueError, match="none_policy='drop'"):
        R.combine_rewards([math_only], None, ["p"], ["a"], none_policy="drop", task=["math"])  # type: ignore[arg-type]


def test_async_functions_run_concurrently() -> None:
    inside = 0
    most = 0
    lock = threading.Lock()

    async def slow(completions, **kwargs):
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        await asyncio.sleep(0.2)
        with lock:
            inside -= 1
        return [1.0] * len(completions)

    async def slow_too(completions, **kwargs):
        return await slow(completions)

    def sync(completions, **kwargs):
        return [0.5] * len(completions)

    start = time.perf_counter()
    total = R.combine_rewards([slow, sync, slow_too], None, ["p"] * 3, ["a", "b", "c"])
    assert time.perf_counter() - start < 0.39  # together, not 0.2 s after 0.2 s
    assert most == 2
    np.testing.assert_array_equal(total, [2.5, 2.5, 2.5])

    async def from_a_running_loop() -> np.ndarray:  # e.g. a notebook's
        return R.call_reward_function(slow, ["p"], ["a"])

    np.testing.assert_array_equal(asyncio.run(from_a_running_loop()), [1.0])


def test_a_raising_function_names_itself_and_the_sample() -> None:
    def picky(completions, **kwargs):
        return [1.0 / len(c) for c in completions]

    with pytest.raises(R.RewardFunctionError) as info:
        R.combine_rewards([picky], None, ["p0", "p1", "p2"], ["ab", "", "c"])
    msg = str(info.value)
    assert "reward function 'picky' raised ZeroDivisionError" in msg
    assert "on sample 1 (prompt 'p1', completion '')" in msg

    async def broken(completions, **kwargs):
        raise RuntimeError("judge offline")

    with pytest.raises(R.RewardFunctionError, match=r"'broken' raised RuntimeError: judge offline"):
        R.combine_rewards([broken], None, ["p"], ["a"])


def test_wrong_arity_and_returns_name_the_function() -> None:
    def one_arg(text):
        return [0.0]

    with pytest.raises(R.RewardFunctionError, match=r"'one_arg'\(text\) cannot take a batch"):
        R.call_reward_function(one_arg, ["p"], ["a"])

    def needs_solution(completions, solution, **kwargs):
        return [0.0] * len(completions)

    with pytest.raises(R.RewardFunctionError, match=r"'needs_solution' needs column 'solution'"):
        R.call_reward_function(needs_solution, ["p"], ["a"], answer=["1"])

    def as_dict(completions, **kwargs):
        return {"score": 1.0}

    with pytest.raises(
        R.RewardFunctionTypeError, match=r"'as_dict' returned a dict; it must return a list of 1 "
    ):
        R.call_reward_function(as_dict, ["p"], ["a"])

    def words(completions, **kwargs):
        return [1.0, "good"]

    with pytest.raises(TypeError, match=r"'words' returned str at index 1; expected a float"):
        R.call_reward_function(words, ["p", "q"], ["a", "b"])

    def too_many(completions, **kwargs):
        return [1.0] * (len(completions) + 1)

    with pytest.raises(R.RewardFunctionError, match=r"'too_many' returned 3 scores for 2 "):
        R.call_reward_function(too_many, ["p", "q"], ["a", "b"])


def test_reserved_column_names_are_refused() -> None:
    with pytest.raises(ValueError, match="column 'completion_ids' has the name of a keyword"):
        R.RewardCall(["p"], ["a"], {"completion_ids": [[1]]})


# ---- --reward_funcs spellings -----------------------------------------------------------


@pytest.fixture
def user_module(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    pkg = tmp_path / "myproj" / "rewards"
    pkg.mkdir(parents=True)
    (tmp_path / "myproj" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "fmt.py").write_text(
        "def think_format(completions, **kwargs):\n    return [0.0 for _ in completions]\n"
        "class Scores:\n    @staticmethod\n    def length(completions, **kwargs):\n"
        "        return [float(len(c)) for c in completions]\n"
        "NOT_CALLABLE = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m == "myproj" or m.startswith("myproj.")]:
        del sys.modules[name]


def test_reward_funcs_spellings(user_module: pathlib.Path) -> None:
    from rlhf_core.cli.loading import resolve_reward_function

    dotted = resolve_reward_function("myproj.rewards.fmt.think_format")
    colon = resolve_reward_function("myproj.rewards.fmt:think_format")
    path = resolve_reward_function(f"{user_module / 'myproj/rewards/fmt.py'}:think_format")
    assert dotted is colon and dotted.__name__ == path.__name__ == "think_format"
    assert resolve_reward_function("myproj.rewards.fmt:Scores.length")(["ab"]) == [2.0]
    assert resolve_reward_function("myproj.rewards.fmt.Scores.length")(["abc"]) == [3.0]


def test_reward_funcs_spelling_errors(user_module: pathlib.Path) -> None:
    from rlhf_core.cli.loading import resolve_reward_function
    from rlhf_core.cli.parser import CLIError

    with pytest.raises(CLIError, match=r"'myproj.rewards.fmt' has no attribute 'nope'"):
        resolve_reward_function("myproj.rewards.fmt.nope")
    with pytest.raises(CLIError, match=r"no module 'nosuchpkg' to import"):
        resolve_reward_function("nosuchpkg.fn")
    with pytest.raises(CLIError, match=r"is a int, not a function"):
        resolve_reward_function("myproj.rewards.fmt.NOT_CALLABLE")
    with pytest.raises(CLIError, match=r"'plain' is not 'module:function', 'package.module"):
        resolve_reward_function("plain")
